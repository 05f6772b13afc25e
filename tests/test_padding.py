"""Padded batches: attention_mask through the model, generate with eos, logits_at as an int.

The reference for a padded batch is each sample run alone: at every real position the logits
must be the same, in prefill, continuing from the state and in greedy decoding.
"""

import dataclasses

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_model import configs, model_for

from wavefield import WaveFieldConfig


@st.composite
def padded_configs(draw):
    """test_model's configs (wave with each deposit, feature map, short conv, gate and norm;
    attention; hybrids), with the wave path and tile size drawn too: masks cut into tiles."""
    cfg = draw(configs())
    return dataclasses.replace(cfg, wave_path=draw(st.sampled_from(["auto", "fft", "chunked", "recurrent"])), tile_size=draw(st.sampled_from([5, 2048])))


def pad(prompts, side="left", value=0):
    """Token lists -> ids (B, N) and attention_mask (B, N) int64, padded on `side` with `value`."""
    N = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), N), value, dtype=torch.long)
    mask = torch.zeros(len(prompts), N, dtype=torch.long)
    for b, p in enumerate(prompts):
        real = slice(N - len(p), N) if side == "left" else slice(0, len(p))
        ids[b, real], mask[b, real] = p, 1
    return ids, mask


def real_rows(logits, prompts, side="left"):
    """The logits (B, N, V) at each sample's real positions: a list of (n_b, V)."""
    N = logits.shape[1]
    return [logits[b, N - len(p) :] if side == "left" else logits[b, : len(p)] for b, p in enumerate(prompts)]


def assert_close_to(ours, ref):
    scale = ref.abs().max()
    assert (ours - ref).abs().max() <= 1e-5 * scale, f"{(ours - ref).abs().max().item():.3g} at scale {scale.item():.3g}"


def random_prompts(cfg, lengths, seed):
    gen = torch.Generator(torch.get_default_device()).manual_seed(seed)
    return [torch.randint(0, cfg.vocab_size, (n,), generator=gen) for n in lengths]


HYBRID = WaveFieldConfig(vocab_size=64, d_model=16, n_layers=3, n_heads=2, layer_types=["wave", "attention", "wave"], reach_max=16.0, chunk_size=3, tile_size=5)


@settings(max_examples=25, deadline=None)
@given(cfg=padded_configs(), lengths=st.lists(st.integers(1, 40), min_size=2, max_size=4), more=st.integers(1, 9), seed=st.integers(0, 1000))
@example(cfg=HYBRID, lengths=[1, 17, 9], more=5, seed=0)
@example(cfg=dataclasses.replace(HYBRID, layer_types=["attention"] * 3), lengths=[3, 30], more=2, seed=1)
@example(cfg=dataclasses.replace(HYBRID, layer_types=["wave"] * 3, wave_deposit="outer", wave_norm=True, feature_map="elu1"), lengths=[2, 25], more=4, seed=2)
@example(cfg=dataclasses.replace(HYBRID, layer_types=["wave"] * 3, short_conv=3, feature_map="silu", wave_gate=False), lengths=[40, 6], more=3, seed=3)
@example(cfg=dataclasses.replace(HYBRID, layer_types=["conv-attention", "wave", "conv-attention"]), lengths=[2, 19, 8], more=4, seed=4)
@example(cfg=dataclasses.replace(HYBRID, layer_types=["mamba2", "attention", "mamba2"], ssm_state=8), lengths=[23, 3, 11], more=6, seed=5)
def test_a_left_padded_batch_gives_each_prompt_its_own_logits_state_and_tokens(cfg, lengths, more, seed):
    """Prefill, continuation from the state (the mask given whole, as Hugging Face does) and
    greedy decoding on a left-padded batch equal each prompt run alone."""
    model = model_for(cfg, seed)
    prompts = random_prompts(cfg, lengths, seed)
    ids, mask = pad(prompts, "left", value=cfg.vocab_size - 1)
    after = torch.randint(0, cfg.vocab_size, (len(prompts), more), generator=torch.Generator(torch.get_default_device()).manual_seed(seed + 1))
    with torch.no_grad():
        logits, state = model(ids, attention_mask=mask, return_state=True)
        whole_mask = torch.cat([mask, torch.ones_like(after)], dim=1)  # (B, past + more)
        continued, _ = model(after, state=state, return_state=True, attention_mask=whole_mask)
        tokens = model.generate(ids, 6, temperature=0, attention_mask=mask)[:, ids.shape[1] :]
        for b, (p, ours) in enumerate(zip(prompts, real_rows(logits, prompts))):
            alone, alone_state = model(p[None], return_state=True)
            assert_close_to(ours, alone[0])
            assert_close_to(continued[b], model(after[b : b + 1], state=alone_state)[0])
            assert torch.equal(tokens[b], model.generate(p[None], 6, temperature=0)[0, len(p) :])


@settings(max_examples=15, deadline=None)
@given(cfg=padded_configs(), lengths=st.lists(st.integers(1, 30), min_size=2, max_size=3), seed=st.integers(0, 1000))
@example(cfg=HYBRID, lengths=[4, 23], seed=0)
def test_a_right_padded_batch_gives_each_prompt_its_own_logits_at_its_real_positions(cfg, lengths, seed):
    model = model_for(cfg, seed)
    prompts = random_prompts(cfg, lengths, seed)
    ids, mask = pad(prompts, "right", value=1)
    with torch.no_grad():
        logits = model(ids, attention_mask=mask.bool())
        for p, ours in zip(prompts, real_rows(logits, prompts, "right")):
            assert_close_to(ours, model(p[None])[0])


KINDS = [
    (["wave"] * 2, "channel"),
    (["wave"], "outer"),
    (["wave-outer", "wave"], "channel"),
    (["attention"] * 2, "channel"),
    (["attention", "wave"], "channel"),
    (["conv-attention"] * 2, "channel"),
]


@pytest.mark.parametrize("layer_types, deposit", KINDS)
@pytest.mark.parametrize("side", ["left", "right"])
def test_the_tokens_under_the_mask_change_nothing_and_without_the_mask_they_would(layer_types, deposit, side):
    cfg = WaveFieldConfig(vocab_size=50, d_model=16, n_layers=len(layer_types), n_heads=2, layer_types=layer_types, wave_deposit=deposit, chunk_size=4)
    model = model_for(cfg, 4)
    prompts = random_prompts(cfg, [3, 11, 7], 4)
    ids, mask = pad(prompts, side)
    other = torch.where(mask.bool(), ids, torch.randint(1, 50, ids.shape))  # other tokens at every masked position
    real = mask.bool()
    with torch.no_grad():
        base, changed = model(ids, attention_mask=mask), model(other, attention_mask=mask)
        unmasked = model(other)
    assert (changed - base)[real].abs().max() <= 1e-6 * base.abs().max()
    if side == "left":  # unmasked, the tokens before a prompt reach it
        assert (unmasked - base)[real].abs().max() > 1e-3 * base.abs().max()


@pytest.mark.parametrize("layer_types", [["wave", "wave"], ["attention", "wave"]])
def test_an_all_ones_mask_is_the_unmasked_model_bit_for_bit(layer_types):
    model = model_for(WaveFieldConfig(vocab_size=50, d_model=16, n_layers=2, n_heads=2, layer_types=layer_types), 5)
    ids = torch.randint(0, 50, (2, 13))
    with torch.no_grad():
        plain, state = model(ids, return_state=True)
        masked, masked_state = model(ids, attention_mask=torch.ones_like(ids), return_state=True)
        assert torch.equal(plain, masked)
        assert [set(s) for s in masked_state] == [set(s) for s in state]  # no padding: no mask in the state
        step = torch.randint(0, 50, (2, 1))
        assert torch.equal(model(step, state=state), model(step, state=masked_state, attention_mask=torch.ones(2, 14, dtype=torch.int32)))


def test_continuing_a_padded_state_in_pieces_and_with_padding_of_its_own():
    """A hybrid's left-padded prefill, then a piece whose mask is given for it alone, then a
    right-padded piece: each sample's real positions match it run alone."""
    model = model_for(HYBRID, 6)
    prompts = random_prompts(HYBRID, [2, 9], 6)
    ids, mask = pad(prompts)
    piece, last = torch.randint(0, 64, (2, 3)), torch.randint(0, 64, (2, 4))
    last_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    with torch.no_grad():
        _, state = model(ids, attention_mask=mask, return_state=True)
        out1, state = model(piece, state=state, return_state=True, attention_mask=torch.ones(2, 3, dtype=torch.bool))
        out2 = model(last, state=state, attention_mask=torch.cat([mask, torch.ones(2, 3, dtype=torch.long), last_mask], 1))
        for b, p in enumerate(prompts):
            n = int(last_mask[b].sum())
            alone = model(torch.cat([p, piece[b], last[b, :n]])[None])[0]
            assert_close_to(out1[b], alone[len(p) : len(p) + 3])
            assert_close_to(out2[b, :n], alone[len(p) + 3 :])


def test_attention_counts_positions_over_real_tokens_so_masks_between_them_change_nothing():
    """Rotary scores depend on distances only, so left padding alone cannot show where positions
    come from: masked tokens between real ones can. An attention model gives a sample with such
    gaps its real tokens' logits alone, in prefill and after it (wave layers would not: their
    field keeps decaying over the gap)."""
    model = model_for(WaveFieldConfig(vocab_size=50, d_model=16, n_layers=2, n_heads=2, layer_types=["attention"] * 2), 11)
    ids = torch.randint(0, 50, (2, 12))
    mask = torch.tensor([[0, 1, 1, 0, 0, 0, 1, 1, 1, 1, 0, 1], [1] * 12])
    with torch.no_grad():
        first, state = model(ids[:, :8], attention_mask=mask[:, :8], return_state=True)
        rest = model(ids[:, 8:], state=state, attention_mask=mask)
        logits = torch.cat([first, rest], 1)
        for b in range(2):
            real = mask[b].bool()
            assert_close_to(logits[b, real], model(ids[b, real][None])[0])


def test_generate_stops_each_row_at_eos_pads_it_and_ends_when_all_have_stopped():
    model = model_for(WaveFieldConfig(vocab_size=64, d_model=16, n_layers=2, n_heads=2, layer_types=["wave", "attention"]), 7)
    ids, mask = pad(random_prompts(model.config, [5, 8], 7))
    N, budget = ids.shape[1], 12
    free = model.generate(ids, budget, temperature=0, attention_mask=mask)[:, N:]  # (B, budget), no eos
    eos = [free[0, 2].item(), free[1, 4].item()]
    stops = [next(t for t in range(budget) if row[t].item() in eos) for row in free]  # each row's first eos
    pad_id = next(t for t in range(64) if t not in eos)
    out = model.generate(ids, budget, temperature=0, attention_mask=mask, eos_token_id=eos, pad_token_id=pad_id)[:, N:]
    assert out.shape[1] == max(stops) + 1 < budget  # ended early, at the last row's eos
    for row, ref, stop in zip(out, free, stops):
        assert torch.equal(row[: stop + 1], ref[: stop + 1]) and (row[stop + 1 :] == pad_id).all()
    one = model.generate(ids, budget, temperature=0, attention_mask=mask, eos_token_id=eos[0])[:, N:]  # an int; pad = eos
    stop = next(t for t in range(budget) if free[0, t] == eos[0])
    assert (one[0, stop:] == eos[0]).all() and len(list(model.stream(ids, budget, temperature=0, attention_mask=mask, eos_token_id=eos))) == max(stops) + 1


def test_prefill_runs_the_output_head_at_the_last_position_only():
    """The final norm feeds the output head: during generate it never sees more than one position."""
    model = model_for(WaveFieldConfig(vocab_size=64, d_model=16, n_layers=2, n_heads=2, layer_types=["wave", "attention"]), 8)
    seen = []
    model.norm.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape)))
    ids, mask = pad(random_prompts(model.config, [20, 13], 8))
    model.generate(ids, 3, temperature=0, attention_mask=mask)
    assert seen == [(2, 1, 16)] * 3
    model(ids)
    assert seen[-1] == (2, 20, 16)  # the hook sees the whole sequence when it is asked for


def test_logits_at_an_int_is_the_last_k_positions():
    model = model_for(WaveFieldConfig(vocab_size=64, d_model=16, n_layers=2, n_heads=2, layer_types=["attention", "wave"]), 9)
    ids = torch.randint(0, 64, (2, 10))
    with torch.no_grad():
        full = model(ids)
        torch.testing.assert_close(model(ids, logits_at=3), full[:, -3:])
        assert torch.equal(model(ids, logits_at=0), full) and torch.equal(model(ids, logits_at=25), full)
    for bad in (-1, 2.0, True):
        with pytest.raises(ValueError, match="logits_at"):
            model(ids, logits_at=bad)


@pytest.mark.parametrize("layer_types", [["wave"], ["wave", "attention"]])
def test_bad_masks_are_refused_naming_what_was_expected(layer_types):
    model = model_for(WaveFieldConfig(vocab_size=32, d_model=16, n_layers=len(layer_types), n_heads=2, layer_types=layer_types), 10)
    ids = torch.randint(0, 32, (2, 5))
    ones = torch.ones(2, 5, dtype=torch.long)
    for bad, needle in [
        (torch.ones(2, 6, dtype=torch.long), r"\(batch, seq_len\) = \(2, 5\)"),
        (torch.ones(3, 5, dtype=torch.long), "shape"),
        (torch.ones(5, dtype=torch.long), "shape"),
        (torch.full((2, 5), 0.5), "bool or integer"),
        (torch.ones(2, 5), "bool or integer"),
        (2 * ones, "only 0 and 1"),
        (-ones, "only 0 and 1"),
        ([[1] * 5] * 2, "bool or integer"),
    ]:
        with pytest.raises(ValueError, match=needle):
            model(ids, attention_mask=bad)
    with pytest.raises(ValueError, match="left-padded"):
        model.generate(ids, 2, attention_mask=torch.tensor([[1, 1, 1, 1, 0], [1] * 5]))
    for kwargs in (dict(eos_token_id=32), dict(eos_token_id=[1, -1]), dict(eos_token_id="2"), dict(eos_token_id=[]), dict(eos_token_id=1, pad_token_id=40)):
        with pytest.raises(ValueError, match="token id in"):
            model.generate(ids, 2, **kwargs)
    _, state = model(ids, return_state=True)
    step = torch.randint(0, 32, (2, 1))
    model(step, state=state, attention_mask=torch.ones(2, 6, dtype=torch.long))  # the whole mask so far: past + seq_len
    if "attention" in layer_types:  # the KV cache knows past = 5
        with pytest.raises(ValueError, match=r"past \+ seq_len\) = \(2, 6\)"):
            model(step, state=state, attention_mask=torch.ones(2, 4, dtype=torch.long))
