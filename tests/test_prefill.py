"""Model-level prefill: a prompt read in pieces, continuing from a state, with room reserved in
every KV cache. The reference is one forward pass over the whole sequence."""

import dataclasses

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_model import configs, model_for
from test_padding import HYBRID, assert_close_to, pad, random_prompts

from wavefield import WaveFieldConfig
from wavefield.errors import UserError
from wavefield.layers import CausalSelfAttention

LAYERS = st.sampled_from(["wave", "wave-outer", "attention", "conv-attention", "mamba2"])


@st.composite
def every_layer_type(draw):
    """test_model's configs over every layer type (conv-attention needs its conv: short_conv >= 1)."""
    cfg = draw(configs())
    types = draw(st.lists(LAYERS, min_size=cfg.n_layers, max_size=cfg.n_layers))
    return dataclasses.replace(cfg, layer_types=types, short_conv=max(cfg.short_conv, 1), ssm_state=draw(st.sampled_from([1, 4, 16])))


@settings(max_examples=30, deadline=None)
@given(cfg=every_layer_type(), N=st.integers(1, 60), chunk=st.sampled_from([1, 3, 7, 16, None]), more=st.integers(0, 6), seed=st.integers(0, 1000))
@example(cfg=HYBRID, N=41, chunk=8, more=5, seed=0)
@example(cfg=dataclasses.replace(HYBRID, layer_types=["attention"] * 3), N=30, chunk=7, more=3, seed=1)
def test_chunked_prefill_gives_the_logits_and_state_of_one_pass(cfg, N, chunk, more, seed):
    model = model_for(cfg, seed)
    ids = torch.randint(0, cfg.vocab_size, (2, N + more), generator=torch.Generator(torch.get_default_device()).manual_seed(seed))
    with torch.no_grad():
        ref = model(ids)  # (2, N + more, V)
        logits, state = model.prefill(ids[:, :N], chunk_size=chunk, reserve=more)
        assert_close_to(logits, ref[:, N - 1])
        for t in range(N, N + more):  # the state continues exactly, token by token
            step, state = model(ids[:, t : t + 1], state=state, return_state=True)
            assert_close_to(step[:, 0], ref[:, t])


@settings(max_examples=15, deadline=None)
@given(lengths=st.lists(st.integers(1, 30), min_size=2, max_size=3), chunk=st.sampled_from([1, 4, 9]), seed=st.integers(0, 100))
def test_chunked_prefill_of_left_padded_prompts_matches_each_prompt_alone(lengths, chunk, seed):
    model = model_for(HYBRID, seed)
    prompts = random_prompts(HYBRID, lengths, seed)
    ids, mask = pad(prompts)
    with torch.no_grad():
        logits, _ = model.prefill(ids, chunk_size=chunk, attention_mask=mask)
        for b, p in enumerate(prompts):
            assert_close_to(logits[b], model(p[None])[0, -1])


@pytest.mark.parametrize("layer_types", [["wave", "attention", "wave"], ["wave"] * 3, ["attention"] * 3, ["conv-attention", "mamba2", "wave"]])
def test_generate_in_pieces_and_from_a_state_gives_the_tokens_of_one_pass(layer_types):
    cfg = dataclasses.replace(HYBRID, layer_types=layer_types)
    model = model_for(cfg, 3)
    ids = torch.randint(0, cfg.vocab_size, (1, 50), generator=torch.Generator(torch.get_default_device()).manual_seed(3))
    whole = model.generate(ids, 12, temperature=0, prefill_chunk=None)
    assert torch.equal(model.generate(ids, 12, temperature=0, prefill_chunk=6), whole)
    _, document = model.prefill(ids[:, :40], chunk_size=16)  # a document's state, then its last 10 tokens as the prompt
    answer = model.generate(ids[:, 40:], 12, temperature=0, state=document)
    assert torch.equal(answer[:, 10:], whole[:, 50:])
    again = model.generate(ids[:, 40:], 12, temperature=0, state=document)  # the state is not used up
    assert torch.equal(again, answer)


def test_reserve_makes_room_so_decoding_writes_in_place():
    model = model_for(dataclasses.replace(HYBRID, layer_types=["attention"] * 3), 0)
    ids = torch.randint(0, HYBRID.vocab_size, (2, 20))
    with torch.no_grad():
        _, state = model.prefill(ids, chunk_size=6, reserve=5)
        buffers = [s["buffer"] for s in state]
        assert [b.capacity for b in buffers] == [25] * 3
        for _ in range(5):
            _, state = model(ids[:, :1], state=state, return_state=True)
            assert [s["buffer"] for s in state] == buffers  # the same buffers, written in place
        _, state = model(ids[:, :1], state=state, return_state=True)
        assert all(s["buffer"] is not b for s, b in zip(state, buffers))  # the 26th token needs room: a new buffer
        # a state continued with room of its own is reused, not copied
        _, fresh = model.prefill(ids, chunk_size=None, reserve=8)
        kept = model.blocks[0].mixer.reserve(fresh[0], 2, 8)
        assert kept["buffer"] is fresh[0]["buffer"]
        assert model.blocks[0].mixer.reserve(fresh[0], 2, 9)["buffer"] is not fresh[0]["buffer"]


def test_prefill_reserves_room_on_a_padded_state_too():
    model = model_for(HYBRID, 1)
    ids, mask = pad(random_prompts(HYBRID, [4, 11], 1))
    with torch.no_grad():
        _, state = model.prefill(ids, chunk_size=3, reserve=4, attention_mask=mask)
    attention = [s for block, s in zip(model.blocks, state) if isinstance(block.mixer, CausalSelfAttention)]
    assert [s["buffer"].capacity for s in attention] == [15]
    assert attention[0]["mask"].sum(1).tolist() == [4, 11] and attention[0]["next"].tolist() == [4, 11]


@pytest.mark.parametrize(
    "kwargs, phrase",
    [
        (dict(chunk_size=0), "chunk_size"),
        (dict(chunk_size=2.5), "chunk_size"),
        (dict(reserve=-1), "reserve"),
        (dict(reserve=True), "reserve"),
    ],
)
def test_prefill_refuses_bad_settings(kwargs, phrase):
    model = model_for(WaveFieldConfig(vocab_size=17, d_model=8, n_layers=1, n_heads=2), 0)
    with pytest.raises(UserError, match=phrase):
        model.prefill(torch.zeros(1, 3, dtype=torch.long), **kwargs)
    with pytest.raises(UserError, match="at least one token"):
        model.prefill(torch.zeros(1, 0, dtype=torch.long))


def test_padded_prompts_after_a_state_are_exact_for_attention_and_refused_otherwise():
    transformer = model_for(dataclasses.replace(HYBRID, layer_types=["attention"] * 3), 2)
    document = torch.randint(0, HYBRID.vocab_size, (1, 12))
    prompts = random_prompts(HYBRID, [3, 7], 2)
    ids, mask = pad(prompts)
    with torch.no_grad():
        _, state = transformer.prefill(document.expand(2, -1).contiguous())
        logits, _ = transformer.prefill(ids, state=state, attention_mask=mask, chunk_size=2)
        for b, p in enumerate(prompts):
            assert_close_to(logits[b], transformer(torch.cat([document[0], p])[None])[0, -1])
        hybrid = model_for(HYBRID, 2)
        _, state = hybrid.prefill(document.expand(2, -1).contiguous())
        with pytest.raises(UserError, match="padding between"):
            hybrid.prefill(ids, state=state, attention_mask=mask)
        hybrid.prefill(ids, state=state, attention_mask=torch.ones_like(mask))  # no padding: nothing to refuse
        conv = model_for(dataclasses.replace(HYBRID, layer_types=["conv-attention"] * 3), 2)  # its conv would read the padding
        _, state = conv.prefill(document.expand(2, -1).contiguous())
        with pytest.raises(UserError, match="padding between"):
            conv.prefill(ids, state=state, attention_mask=mask)
