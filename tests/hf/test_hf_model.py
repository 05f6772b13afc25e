"""WaveFieldForCausalLM against the native model: forward, loss, cache, generate, beam search."""

import dataclasses
import io
from contextlib import redirect_stdout

import pytest
import torch
from conftest import VOCAB, as_hf, tiny_model
from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_model import model_for
from test_padding import HYBRID, pad, padded_configs, random_prompts

from wavefield.hf import WaveFieldCache, WaveFieldHFConfig


def left_padded(*rows, pad=0):
    """Prompts (lists of ids) -> left-padded input_ids and attention_mask (B, longest)."""
    n = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (n - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (n - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def test_config_converts_both_ways():
    native = tiny_model("hybrid").config
    hf = WaveFieldHFConfig.from_wavefield(native)
    assert hf.model_type == "wavefield" and hf.layer_types == ["linear_attention", "full_attention"]
    assert hf.to_wavefield() == native
    assert WaveFieldHFConfig.from_dict(hf.to_dict()).to_wavefield() == native
    with pytest.raises(ValueError, match="d_model"):
        WaveFieldHFConfig(d_model=15, n_heads=2)


def test_both_kinds_of_wave_layer_are_linear_attention_to_transformers_and_come_back_apart():
    native = tiny_model("wave").config
    hf = WaveFieldHFConfig.from_dict(WaveFieldHFConfig.from_wavefield(native).to_dict())
    assert hf.layer_types == ["linear_attention"] * 2 and hf.wavefield_layer_types == ["wave-outer", "wave"]
    assert hf.to_wavefield() == native
    older = {k: v for k, v in hf.to_dict().items() if k != "wavefield_layer_types"}  # written before the field existed
    assert WaveFieldHFConfig.from_dict(older).to_wavefield().layer_types == ["wave", "wave"]
    for bad, needle in [(5, "must be a list of strings"), (["wave", 3], "must be a list of strings"), (["attention", "wave"], "describe different layers")]:
        with pytest.raises(ValueError, match=needle):  # a hostile or inconsistent config.json: one clear message
            WaveFieldHFConfig.from_dict({**hf.to_dict(), "wavefield_layer_types": bad})


def test_forward_equals_native(kind):
    native = tiny_model(kind)
    hf = as_hf(native)
    assert hf.model is native  # one set of modules
    ids = torch.randint(0, VOCAB, (3, 11))
    out = hf(ids)
    torch.testing.assert_close(out.logits, native(ids), rtol=0, atol=0)
    assert isinstance(out.past_key_values, WaveFieldCache) and out.past_key_values.get_seq_length() == 11
    torch.testing.assert_close(hf(ids, logits_to_keep=2).logits, native(ids)[:, -2:], rtol=0, atol=0)
    torch.testing.assert_close(hf(ids, logits_to_keep=torch.tensor([0, 5])).logits, native(ids)[:, [0, 5]], rtol=0, atol=0)
    # labels are unshifted and -100 is ignored, as in transformers
    labels = ids.clone()
    labels[0, :4] = -100
    loss = hf(ids, labels=labels).loss
    reference = torch.nn.functional.cross_entropy(native(ids)[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1))
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)
    assert hf(ids, return_dict=False)[0].shape == (3, 11, VOCAB)


def test_loss_of_a_left_padded_batch_is_that_of_its_rows_alone(kind):
    native = tiny_model(kind)
    hf = as_hf(native)
    rows = [torch.randint(0, VOCAB, (n,)).tolist() for n in (8, 3, 5)]
    ids, mask = left_padded(*rows)
    loss = hf(ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
    total = sum(torch.nn.functional.cross_entropy(native(torch.tensor([r]))[0, :-1], torch.tensor(r[1:]), reduction="sum") for r in rows)
    torch.testing.assert_close(loss, total / sum(len(r) - 1 for r in rows), rtol=1e-5, atol=1e-6)


def test_cache_continues_exactly(kind):
    native = tiny_model(kind)
    hf = as_hf(native)
    ids = torch.randint(0, VOCAB, (2, 12))
    cache = hf(ids[:, :7], use_cache=True).past_key_values
    step = hf(ids[:, 7:], past_key_values=cache, attention_mask=torch.ones(2, 12, dtype=torch.long))
    assert step.past_key_values is cache and cache.get_seq_length() == 12
    torch.testing.assert_close(step.logits, native(ids)[:, 7:], rtol=1e-5, atol=1e-5)


def test_bad_input_is_a_value_error():
    hf = as_hf(tiny_model("hybrid"))
    ids = torch.randint(0, VOCAB, (2, 5))
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        hf(ids, attention_mask=torch.ones(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="only 0 and 1"):
        hf(ids, attention_mask=torch.full((2, 5), 2))
    with pytest.raises(ValueError, match="past_key_values must be a WaveFieldCache"):
        hf(ids, past_key_values=(1, 2))
    with pytest.raises(ValueError, match="inputs_embeds"):
        hf(inputs_embeds=torch.zeros(2, 5, 16))
    with pytest.raises(ValueError, match="logits_to_keep"):
        hf(ids, logits_to_keep=-1)


def count_tokens(model):
    """Record the length of the input of every forward call of the native model."""
    seen = []
    model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(args[0].shape[1] if args else kwargs["input_ids"].shape[1]), with_kwargs=True)
    return seen


def test_greedy_generate_equals_native_and_decodes_from_the_state(kind):
    native = tiny_model(kind)
    hf = as_hf(native)
    prompt = torch.randint(0, VOCAB, (2, 9))
    expected = native.generate(prompt, 12, temperature=0)
    seen = count_tokens(native)
    out = hf.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert seen == [9] + [1] * 11  # the prompt once, then one token per step: never the prefix again


def test_left_padded_batch_gives_each_prompt_its_own_tokens(kind):
    native = tiny_model(kind)
    hf = as_hf(native)
    rows = [torch.randint(0, VOCAB, (n,)).tolist() for n in (9, 4, 6)]
    ids, mask = left_padded(*rows)
    out = hf.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    for row, generated in zip(rows, out[:, ids.shape[1] :]):
        alone = native.generate(torch.tensor([row]), 8, temperature=0)[0, len(row) :]
        torch.testing.assert_close(generated, alone, rtol=0, atol=0)


def test_eos_and_max_new_tokens_stop():
    native = tiny_model("wave")
    hf = as_hf(native)
    prompt = torch.randint(0, VOCAB, (1, 5))
    greedy = native.generate(prompt, 10, temperature=0)[0, 5:].tolist()
    eos = greedy[3]
    out = hf.generate(prompt, max_new_tokens=10, do_sample=False, eos_token_id=eos, pad_token_id=0)
    assert out[0, 5:].tolist() == greedy[: greedy.index(eos) + 1]
    assert hf.generate(prompt, max_new_tokens=4, do_sample=False, pad_token_id=0).shape == (1, 9)


def test_sampling_options():
    hf = as_hf(tiny_model("hybrid"))
    prompt = torch.randint(0, VOCAB, (2, 6))
    greedy = hf.generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=0)
    # top_k=1 leaves one candidate: sampling is greedy then, whatever the temperature
    torch.testing.assert_close(hf.generate(prompt, max_new_tokens=8, do_sample=True, top_k=1, temperature=2.0, pad_token_id=0), greedy)
    runs = []
    for _ in range(2):
        torch.manual_seed(1)
        runs.append(hf.generate(prompt, max_new_tokens=8, do_sample=True, temperature=0.7, top_k=20, top_p=0.9, repetition_penalty=1.3, pad_token_id=0))
    torch.testing.assert_close(runs[0], runs[1])  # reproducible from the seed
    assert runs[0].shape == (2, 14) and not torch.equal(runs[0], greedy)


def test_beam_search_scores_match_a_full_forward(kind):
    native = tiny_model(kind)
    hf = as_hf(native)
    ids, mask = left_padded(torch.randint(0, VOCAB, (7,)).tolist(), torch.randint(0, VOCAB, (4,)).tolist())
    n_new = 6
    out = hf.generate(
        ids,
        attention_mask=mask,
        max_new_tokens=n_new,
        num_beams=4,
        num_return_sequences=3,
        do_sample=False,
        length_penalty=0.0,
        pad_token_id=0,
        output_scores=True,
        return_dict_in_generate=True,
    )
    assert out.sequences.shape == (6, ids.shape[1] + n_new)
    assert len({tuple(s.tolist()) for s in out.sequences[:3]}) == 3
    for i, (seq, score) in enumerate(zip(out.sequences, out.sequences_scores)):
        n_prompt = int(mask[i // 3].sum())
        real = seq[ids.shape[1] - n_prompt :]  # the prompt without its padding, then the new tokens
        logp = torch.log_softmax(native(real[None, :-1]).double(), -1)[0]
        expected = logp[n_prompt - 1 :].gather(-1, real[n_prompt:, None]).sum()
        assert abs(score.item() - expected.item()) < 1e-4, (i, score.item(), expected.item())
    assert out.sequences_scores[0] >= out.sequences_scores[1] >= out.sequences_scores[2]


def test_cache_reorders_along_the_batch(kind):
    native = tiny_model(kind)
    hf = as_hf(native)
    ids = torch.randint(0, VOCAB, (3, 8))
    cache = hf(ids[:, :6], use_cache=True).past_key_values
    cache.reorder_cache(torch.tensor([2, 2, 0]))
    logits = hf(ids[[2, 2, 0], 6:], past_key_values=cache).logits
    torch.testing.assert_close(logits, native(ids[[2, 2, 0]])[:, 6:], rtol=1e-5, atol=1e-5)
    cache = hf(ids[:, :6], use_cache=True).past_key_values
    cache.batch_repeat_interleave(2)  # rows 0, 0, 1, 1, 2, 2 (num_return_sequences with a cache given)
    cache.batch_select_indices(torch.tensor([5, 0, 3]))  # rows 2, 0, 1
    logits = hf(ids[[2, 0, 1], 6:], past_key_values=cache).logits
    torch.testing.assert_close(logits, native(ids[[2, 0, 1]])[:, 6:], rtol=1e-5, atol=1e-5)


def test_text_streamer_prints_what_generate_returns(exported):
    from transformers import AutoModelForCausalLM, AutoTokenizer, TextStreamer

    model, tok = AutoModelForCausalLM.from_pretrained(exported), AutoTokenizer.from_pretrained(exported)
    inputs = tok("To be, or not", return_tensors="pt")
    printed = io.StringIO()
    with redirect_stdout(printed):
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False, streamer=TextStreamer(tok, skip_prompt=True))
    assert printed.getvalue().strip() == tok.decode(out[0, inputs.input_ids.shape[1] :]).strip()


@settings(max_examples=12, deadline=None)
@given(cfg=padded_configs(), lengths=st.lists(st.integers(1, 20), min_size=2, max_size=3), seed=st.integers(0, 1000))
@example(cfg=HYBRID, lengths=[1, 13, 6], seed=0)
@example(cfg=dataclasses.replace(HYBRID, layer_types=["attention"] * 3), lengths=[3, 15], seed=1)
@example(cfg=dataclasses.replace(HYBRID, layer_types=["wave"] * 3, wave_deposit="outer", wave_norm=True, feature_map="elu1"), lengths=[2, 14], seed=2)
def test_hf_greedy_generate_on_a_left_padded_batch_gives_each_prompt_its_own_tokens(cfg, lengths, seed):
    """The property of tests/test_padding.py, through transformers' generate: wave (each deposit,
    feature map, conv, gate, norm), attention and hybrid configs."""
    native = model_for(cfg, seed)
    prompts = random_prompts(cfg, lengths, seed)
    ids, mask = pad(prompts)
    out = as_hf(native).generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
    for prompt, generated in zip(prompts, out[:, ids.shape[1] :]):
        alone = native.generate(prompt[None], 5, temperature=0)[0, len(prompt) :]
        assert torch.equal(generated, alone), (generated.tolist(), alone.tolist())
