"""The attention layer on its own: its KV cache (grown in place, never corrupting an earlier
state, with padding too) and its decomposition into attention weights and values."""

import pytest
import torch
import torch.nn.functional as F

from wavefield.layers import CausalSelfAttention
from wavefield.layers.attention import _causal_after_past


def layer(seed=0):
    torch.manual_seed(seed)
    return CausalSelfAttention(16, 2).eval()


@torch.no_grad()
def test_decoding_token_by_token_and_in_pieces_matches_one_pass():
    attn, x = layer(), torch.randn(2, 23, 16)
    full = attn(x)
    outs, state = [], None
    for a, b in [(0, 5), (5, 6), (6, 7), (7, 12), (12, 13), (13, 23)]:  # prompt, tokens, pieces after a past
        out, state = attn(x[:, a:b], state=state, return_state=True)
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-6, rtol=1e-5)
    assert state["k"].shape == (2, 2, 23, 8)


@torch.no_grad()
def test_the_cache_grows_in_place_and_doubles_when_full():
    """Each decoded token is written into the buffer: it moves only when the capacity doubles."""
    attn, x = layer(), torch.randn(1, 30, 16)
    _, state = attn(x[:, :5], return_state=True)
    moved = []
    for t in range(5, 30):
        before = state["k"].data_ptr()
        _, state = attn(x[:, t : t + 1], state=state, return_state=True)
        if state["k"].data_ptr() != before:
            moved.append(t)
    assert moved == [5, 10, 20]  # capacity 5 (the prompt) -> 10 -> 20 -> 40


@torch.no_grad()
def test_branches_from_one_state_do_not_corrupt_each_other():
    """Continuing twice from the same prompt state (copy on write), then each branch further:
    every branch equals one pass over its own tokens, and the prompt state is unchanged."""
    attn = layer(1)
    prompt, a, b, c = torch.randn(1, 6, 16), torch.randn(1, 1, 16), torch.randn(1, 1, 16), torch.randn(1, 3, 16)
    _, p = attn(prompt, return_state=True)
    kept = p["k"].clone()
    out_a, sa = attn(a, state=p, return_state=True)
    out_b, sb = attn(b, state=p, return_state=True)  # same position as a: must not overwrite it
    out_ac, _ = attn(c, state=sa, return_state=True)
    out_bc, _ = attn(c, state=sb, return_state=True)
    torch.testing.assert_close(torch.cat([out_a, out_ac], 1), attn(torch.cat([prompt, a, c], 1))[:, 6:], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(torch.cat([out_b, out_bc], 1), attn(torch.cat([prompt, b, c], 1))[:, 6:], atol=1e-6, rtol=1e-5)
    assert torch.equal(p["k"], kept)


@torch.no_grad()
def test_a_state_cut_to_some_samples_continues_them():
    attn, x = layer(3), torch.randn(2, 8, 16)
    _, state = attn(x[:, :6], return_state=True)
    _, state = attn(x[:, 6:7], state=state, return_state=True)  # the buffer now has room
    for part in (slice(0, 1), slice(1, 2)):
        cut = {**state, "k": state["k"][part], "v": state["v"][part]}
        out, new = attn(x[part, 7:], state=cut, return_state=True)
        assert new["k"].shape == (1, 2, 8, 8)
        torch.testing.assert_close(out, attn(x[part])[:, 7:], atol=1e-6, rtol=1e-5)


@torch.no_grad()
def test_one_query_after_a_past_runs_without_a_mask(monkeypatch):
    """A single new token sees every key: SDPA is called without a mask (its fast kernel on CUDA)."""
    attn, x = layer(), torch.randn(1, 9, 16)
    _, state = attn(x[:, :8], return_state=True)
    calls, sdpa = [], F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **kw: calls.append(kw) or sdpa(*a, **kw))
    out, _ = attn(x[:, 8:], state=state, return_state=True)
    assert calls[0].get("attn_mask") is None and not calls[0].get("is_causal")
    torch.testing.assert_close(out, attn(x)[:, 8:], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("N, past", [(2, 1), (5, 7), (64, 300)])
def test_a_piece_after_a_past_attends_without_a_mask_as_the_mask_would(N, past, monkeypatch):
    """Queries at past .. past + N - 1 over a cache: at inference on CPU no (N, past + N) mask is
    built and SDPA is not called with one; the outputs are those of SDPA with the mask, and so
    are the gradients where autograd records (the masked call then)."""
    torch.manual_seed(N)
    buffer = torch.randn(2, 2, 3, past + N + 9, 8)  # keys and values (B, H, capacity, d): the cache's views are strided
    k, v = (t[:, :, : past + N].requires_grad_() for t in buffer.clone().unbind(0))
    q = torch.randn(2, N, 8, 3).permute(0, 3, 1, 2).requires_grad_()  # (B, H, N, d) with channels apart, as a permuted projection can be
    mask = torch.ones(N, past + N, dtype=torch.bool).tril(diagonal=past)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    grads = torch.autograd.grad(expected.square().sum(), (q, k, v))
    calls, sdpa = [], F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **kw: calls.append(kw) or sdpa(*a, **kw))
    with torch.no_grad():
        y = _causal_after_past(q, k, v, past, 0.0)
    assert not calls
    torch.testing.assert_close(y, expected, atol=1e-6, rtol=1e-5)
    y = _causal_after_past(q, k, v, past, 0.0)
    for got, want in zip(torch.autograd.grad(y.square().sum(), (q, k, v)), grads):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_a_padded_cache_grows_in_place_and_branches_without_corrupting_each_other():
    """After a left-padded prompt the state carries the key mask and each sample's next
    position; decoding writes both in place, two branches from one state keep apart, and a
    state cut to some samples continues them."""
    attn, x = layer(4), torch.randn(2, 30, 16)
    mask = torch.ones(2, 30, dtype=torch.bool)
    mask[0, :3] = False  # sample 0: three pads, then 27 real tokens
    _, p = attn(x[:, :5], mask=mask[:, :5], return_state=True)
    assert p["next"].tolist() == [2, 5] and torch.equal(p["mask"], mask[:, :5])
    kept = p["k"].clone(), p["mask"].clone(), p["next"].clone()
    state, moved, outs = p, [], []
    for t in range(5, 30):
        before = state["mask"].data_ptr()
        out, state = attn(x[:, t : t + 1], state=state, return_state=True)  # new tokens are real: no mask needed
        outs.append(out)
        moved += [t] if state["mask"].data_ptr() != before else []
    assert moved == [5, 10, 20] and state["next"].tolist() == [27, 30]
    torch.testing.assert_close(torch.cat(outs, 1), attn(x, mask=mask)[:, 5:], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(torch.cat(outs, 1)[0], attn(x[:1, 3:])[0, 2:], atol=1e-6, rtol=1e-5)  # sample 0 alone
    out_b, _ = attn(x[:, 7:8], state=p, return_state=True)  # a second branch from the prompt: copy on write
    torch.testing.assert_close(out_b, attn(torch.cat([x[:, :5], x[:, 7:8]], 1), mask=mask[:, :6])[:, 5:], atol=1e-6, rtol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip((p["k"], p["mask"], p["next"]), kept))
    cut = {**p, **{key: p[key][:1] for key in ("k", "v", "mask", "next")}}  # sample 0 alone (a beam search reorders so)
    out_cut, _ = attn(x[:1, 5:6], state=cut, return_state=True)
    torch.testing.assert_close(out_cut, attn(x[:1, 3:6])[:, 2:], atol=1e-6, rtol=1e-5)


def test_a_bad_padding_state_or_mask_is_refused():
    attn = layer()
    _, state = attn(torch.randn(2, 4, 16), mask=torch.tensor([[False, True, True, True]] * 2), return_state=True)
    x = torch.randn(2, 1, 16)
    for bad, needle in [
        ({**state, "mask": state["mask"][:, :3]}, r"'mask' must be a bool tensor of shape \(2, 4\)"),
        ({**state, "mask": state["mask"].long()}, "'mask' must be a bool tensor"),
        ({**state, "next": state["next"][:1]}, r"'next' must be an int64 tensor of shape \(2,\)"),
        ({**state, "next": state["next"].float()}, "'next' must be an int64 tensor"),
        ({**state, "v": state["v"][:, :, :2]}, r"'v' must be a float tensor of shape \(2, 2, 4, 8\)"),
        ({**state, "v": None}, "'v' must be a float tensor .* got NoneType"),
        ({k: v for k, v in state.items() if k != "next"}, "both 'mask' and 'next'"),
    ]:
        with pytest.raises(ValueError, match=needle):
            attn(x, state=bad)
    with pytest.raises(ValueError, match=r"mask must be a bool tensor of shape \(2, 1\)"):
        attn(x, mask=torch.ones(2, 1, dtype=torch.long))


def test_decomposition_reproduces_the_forward():
    attn, x = layer(2), torch.randn(2, 17, 16)
    terms = attn.decompose(x)
    B, N, D = x.shape
    assert terms.weights.shape == (2, 2, N, N) and (terms.weights.triu(1) == 0).all()
    torch.testing.assert_close(terms.weights.sum(-1), torch.ones(2, 2, N))
    out = attn.out_proj((terms.weights @ terms.values).transpose(1, 2).reshape(B, N, D))
    torch.testing.assert_close(out, attn(x), atol=1e-6, rtol=1e-5)


def test_a_bad_cache_is_refused():
    with pytest.raises(ValueError, match="KV cache state .k. must be a float tensor of shape"):
        layer()(torch.randn(2, 1, 16), state={"k": torch.zeros(2, 3, 4, 8), "v": torch.zeros(2, 3, 4, 8)})


@pytest.mark.parametrize("pieces", [[6, 1, 1, 1], [6, 6], [3, 1, 4]])
def test_gradients_through_a_carried_cache_equal_one_pass(pieces):
    """Training through a sequence fed in pieces (the state carried, gradients on): the cache
    may not be written in place under autograd, since earlier steps saved views of it."""
    from wavefield import WaveFieldConfig, WaveFieldLM

    torch.manual_seed(0)
    model = WaveFieldLM(WaveFieldConfig(vocab_size=32, d_model=16, n_layers=2, n_heads=2, layer_types=["attention", "wave"])).train()
    ids = torch.randint(0, 32, (2, sum(pieces)))
    whole = model(ids)
    grads = torch.autograd.grad(whole.square().mean(), list(model.parameters()))
    outs, state, start = [], None, 0
    for n in pieces:
        out, state = model(ids[:, start : start + n], state=state, return_state=True)
        outs.append(out)
        start += n
    piecewise = torch.cat(outs, dim=1)
    torch.testing.assert_close(piecewise, whole, rtol=1e-5, atol=1e-5)
    for a, b in zip(torch.autograd.grad(piecewise.square().mean(), list(model.parameters())), grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
