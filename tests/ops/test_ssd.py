"""The Mamba-2 recurrence (SSD): the chunked form against the token-by-token reference, in
float64, from an initial state, at lengths that are no multiple of the chunk; and its segsum."""

import pytest
import torch

from wavefield.ops import segsum, ssd_chunked, ssd_reference, ssd_step


def inputs(L, seed=0, B=2, H=3, P=4, N=5, dtype=torch.float64):
    """x, dt, A, B, C and an initial state, dt in [1e-3, 0.5] and A in [-16, -1] (decays from
    near 1 to near 0 per token), as the layer makes them."""
    gen = torch.Generator(torch.get_default_device()).manual_seed(seed)
    x = torch.randn(B, L, H, P, generator=gen, dtype=dtype)
    dt = torch.exp(torch.empty(B, L, H, dtype=dtype).uniform_(-7, -0.7, generator=gen))
    A = -torch.empty(H, dtype=dtype).uniform_(1, 16, generator=gen)
    Bm, Cm = torch.randn(B, L, N, generator=gen, dtype=dtype), torch.randn(B, L, N, generator=gen, dtype=dtype)
    state = torch.randn(B, H, N, P, generator=gen, dtype=dtype)
    return x, dt, A, Bm, Cm, state


def test_segsum_sums_the_terms_between_and_is_minus_infinity_above_the_diagonal():
    a = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    s = segsum(a)
    for i in range(4):
        for j in range(4):
            expected = a[j + 1 : i + 1].sum() if j <= i else float("-inf")
            assert s[i, j] == expected
    long = -torch.rand(256, dtype=torch.float64) * 20  # a whole chunk of strong decays
    assert torch.isfinite(torch.exp(segsum(long))).all() and torch.exp(segsum(long)).max() == 1.0


@pytest.mark.parametrize("L, chunk", [(1, 4), (7, 4), (16, 4), (29, 8), (29, 64), (40, 1), (33, 5)])
@pytest.mark.parametrize("with_state", [False, True])
def test_chunked_equals_the_reference_recurrence(L, chunk, with_state):
    x, dt, A, Bm, Cm, state = inputs(L, seed=L * 100 + chunk)
    state = state if with_state else None
    y_ref, h_ref = ssd_reference(x, dt, A, Bm, Cm, state)
    y, h = ssd_chunked(x, dt, A, Bm, Cm, state, chunk_size=chunk)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h, h_ref, rtol=1e-10, atol=1e-10)


def test_step_by_step_after_a_chunked_prefix_equals_one_chunked_pass():
    x, dt, A, Bm, Cm, state = inputs(23, seed=7)
    y_all, h_all = ssd_chunked(x, dt, A, Bm, Cm, state, chunk_size=4)
    y, h = ssd_chunked(x[:, :10], dt[:, :10], A, Bm[:, :10], Cm[:, :10], state, chunk_size=4)
    ys = [y]
    for t in range(10, 23):
        y_t, h = ssd_step(x[:, t], dt[:, t], A, Bm[:, t], Cm[:, t], h)
        ys.append(y_t[:, None])
    torch.testing.assert_close(torch.cat(ys, 1), y_all, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h, h_all, rtol=1e-10, atol=1e-10)


def test_a_position_with_zero_dt_changes_nothing():
    """dt = 0 (how the layer masks padding): the state passes it unchanged and nothing is added."""
    x, dt, A, Bm, Cm, state = inputs(12, seed=3)
    dt[:, :5] = 0
    _, h_masked = ssd_chunked(x, dt, A, Bm, Cm, state, chunk_size=4)
    _, h_rest = ssd_chunked(x[:, 5:], dt[:, 5:], A, Bm[:, 5:], Cm[:, 5:], state, chunk_size=4)
    torch.testing.assert_close(h_masked, h_rest, rtol=1e-12, atol=1e-12)


def test_gradients_of_chunked_equal_the_reference():
    x, dt, A, Bm, Cm, state = inputs(13, seed=5)
    grads = []
    for fn in (ssd_reference, lambda *a: ssd_chunked(*a, chunk_size=4)):
        leaves = [t.clone().requires_grad_() for t in (x, dt, A, Bm, Cm, state)]
        y, h = fn(*leaves)
        (y.square().sum() + h.sum()).backward()
        grads.append([t.grad for t in leaves])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_float32_chunked_stays_close_to_the_float64_reference_over_a_long_sequence():
    x, dt, A, Bm, Cm, state = inputs(1000, seed=11, B=1)
    y_ref, h_ref = ssd_reference(x, dt, A, Bm, Cm, state)
    y, h = ssd_chunked(*(t.float() for t in (x, dt, A, Bm, Cm, state)), chunk_size=64)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(h.double(), h_ref, rtol=1e-4, atol=1e-4)
