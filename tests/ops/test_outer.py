"""Outer-product deposits: the three paths against each other, against the double sum that
defines them, and against the kernel's closed form."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_propagate import random_params, rel_err

from wavefield.ops import OUTER_PATHS, propagate_outer, wave_kernel


@pytest.mark.parametrize("path", OUTER_PATHS)
def test_impulse_response_is_the_damped_wave(path):
    """One key-value deposit at t = 0 read by a fixed query comes out as
    (q . k) * v * gain * exp(-alpha t) cos(omega t + phi)."""
    gen = torch.Generator(torch.get_default_device()).manual_seed(1)
    H, N, d = 4, 203, 3
    omega, alpha, phi = random_params(H, gen)
    q = torch.randn(1, 1, H, d, generator=gen).expand(1, N, H, d)
    k, v = torch.zeros(1, N, H, d), torch.zeros(1, N, H, d)
    k[0, 0], v[0, 0] = torch.randn(H, d, generator=gen), torch.randn(H, d, generator=gen)
    y = propagate_outer(q, k, v, omega, alpha, phi, path=path, chunk_size=29)[0].double()  # (N, H, d)

    t = np.arange(N)[:, None]
    om, al, ph = (x.double().numpy()[None, :] for x in (omega, alpha, phi))
    kappa = (1 - np.exp(-al)) * np.exp(-al * t) * np.cos(om * t + ph)  # (N, H)
    qk = (q[0, 0] * k[0, 0]).sum(-1).double().numpy()  # (H,)
    expected = kappa[:, :, None] * qk[None, :, None] * v[0, 0].double().numpy()[None]
    np.testing.assert_allclose(y.numpy(), expected, atol=1e-6, rtol=0)


def test_quadratic_path_is_the_defining_double_sum():
    """y[t] = sum_{s<=t} kappa(t - s) (q[t] . k[s]) v[s], computed term by term in float64."""
    gen = torch.Generator(torch.get_default_device()).manual_seed(2)
    B, N, H, d = 2, 41, 3, 4
    omega, alpha, phi = random_params(H, gen)
    q, k, v = (torch.randn(B, N, H, d, generator=gen) for _ in range(3))
    kappa = wave_kernel(omega, alpha, phi, N).double()  # (H, N)
    expected = torch.zeros(B, N, H, d, dtype=torch.float64)
    for t in range(N):
        for s in range(t + 1):
            expected[:, t] += kappa[:, t - s, None] * (q[:, t] * k[:, s]).double().sum(-1, keepdim=True) * v[:, s].double()
    assert rel_err(propagate_outer(q, k, v, omega, alpha, phi, path="quadratic").double(), expected) <= 1e-5


@settings(max_examples=30, deadline=None)
@given(
    N=st.integers(1, 150),
    H=st.integers(1, 3),
    d=st.integers(1, 5),
    e=st.integers(1, 5),
    chunk=st.integers(1, 70),
    cuts=st.lists(st.floats(0, 1), max_size=4),
    seed=st.integers(0, 2**16),
)
def test_paths_agree_and_continue_exactly(N, H, d, e, chunk, cuts, seed):
    """quadratic == chunked == recurrence, and any of them split at random points with the
    matrix state carried across gives the same outputs and final state (<= 1e-5 relative);
    keys of d channels, values of e."""
    gen = torch.Generator(torch.get_default_device()).manual_seed(seed)
    omega, alpha, phi = random_params(H, gen)
    q, k = (torch.randn(2, N, H, d, generator=gen) for _ in range(2))
    v = torch.randn(2, N, H, e, generator=gen)
    ref, ref_state = propagate_outer(q, k, v, omega, alpha, phi, path="recurrent", return_state=True)
    assert ref.shape == (2, N, H, e) and ref_state.shape == (2, H, d, e) and ref_state.is_complex()
    bounds = sorted({0, N, *(int(c * N) for c in cuts)})
    for path in OUTER_PATHS:
        y, s = propagate_outer(q, k, v, omega, alpha, phi, path=path, chunk_size=chunk, return_state=True)
        assert rel_err(y, ref) <= 1e-5 and rel_err(s, ref_state) <= 1e-5, path
        pieces, state = [], None
        for a, b in zip(bounds[:-1], bounds[1:]):
            y, state = propagate_outer(q[:, a:b], k[:, a:b], v[:, a:b], omega, alpha, phi, state=state, path=path, chunk_size=chunk, return_state=True)
            pieces.append(y)
        assert rel_err(torch.cat(pieces, 1), ref) <= 1e-5 and rel_err(state, ref_state) <= 1e-5, path


@pytest.mark.parametrize("N, chunk", [(1, 4), (13, 4), (40, 16)])
def test_paths_have_the_same_gradients(N, chunk):
    """Backward through each path (the recurrence updates its state in place on a fresh tensor)
    gives the quadratic path's gradients of q, k, v, the physics and the incoming state."""
    gen = torch.Generator(torch.get_default_device()).manual_seed(N)
    H, d = 2, 3
    physics = random_params(H, gen)
    inputs = [torch.randn(2, N, H, d, generator=gen) for _ in range(3)]
    state = torch.randn(2, H, d, d, dtype=torch.complex64, generator=gen)
    weights = torch.randn(2, N, H, d, generator=gen)
    grads = {}
    for path in OUTER_PATHS:
        leaves = [t.clone().requires_grad_() for t in (*inputs, *physics, state)]
        y, s = propagate_outer(*leaves[:6], state=leaves[6], path=path, chunk_size=chunk, return_state=True)
        ((y * weights).sum() + s.abs().square().sum()).backward()
        grads[path] = [t.grad for t in leaves]
    for path in ("chunked", "recurrent"):
        for ours, ref in zip(grads[path], grads["quadratic"]):
            assert rel_err(ours, ref) <= 1e-4, path


@pytest.mark.parametrize("path", OUTER_PATHS)
def test_an_empty_piece_reads_nothing_and_keeps_the_state(path):
    gen = torch.Generator(torch.get_default_device()).manual_seed(3)
    omega, alpha, phi = random_params(2, gen)
    x = torch.zeros(1, 0, 2, 3)
    state = torch.randn(1, 2, 3, 3, dtype=torch.complex64, generator=gen)
    y, s = propagate_outer(x, x, x, omega, alpha, phi, state=state, path=path, chunk_size=4, return_state=True)
    assert y.shape == (1, 0, 2, 3) and torch.equal(s, state)


def test_unknown_path_is_rejected():
    x = torch.zeros(1, 3, 1, 1)
    with pytest.raises(ValueError, match="unknown outer-deposit path"):
        propagate_outer(x, x, x, torch.ones(1), torch.ones(1), torch.zeros(1), path="fft")
