"""The three propagation paths against each other and against the kernel's closed form."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wavefield.ops import PATHS, lower_toeplitz, next_fast_len, propagate, propagate_heads, wave_kernel


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def random_params(H, gen):
    omega = torch.rand(H, generator=gen, dtype=torch.float64) * (math.pi - 0.02) + 0.01
    alpha = torch.exp(torch.empty(H, dtype=torch.float64).uniform_(math.log(1e-4), math.log(3.0), generator=gen))
    phi = torch.empty(H, dtype=torch.float64).uniform_(-math.pi, math.pi, generator=gen)
    return omega.float(), alpha.float(), phi.float()


@pytest.mark.parametrize("path", PATHS)
def test_impulse_response_is_the_damped_wave(path):
    """A unit deposit at t = 0 comes out as gain * exp(-alpha t) cos(omega t + phi)."""
    gen = torch.Generator(torch.get_default_device()).manual_seed(1)
    H, N = 5, 301
    omega, alpha, phi = random_params(H, gen)
    u = torch.zeros(1, N, H, 1)
    u[0, 0] = 1.0
    y = propagate(u, omega, alpha, phi, path=path, chunk_size=37)[0, :, :, 0].T.double()  # (H, N)

    t = np.arange(N)
    om, al, ph = (x.double().numpy()[:, None] for x in (omega, alpha, phi))
    expected = (1 - np.exp(-al)) * np.exp(-al * t) * np.cos(om * t + ph)
    np.testing.assert_allclose(y.numpy(), expected, atol=1e-6, rtol=0)


def test_kernel_gain_normalises_the_envelope():
    """sum_t gain * exp(-alpha t) = 1, so |y| <= max|u| whatever the oscillation does."""
    alpha = torch.tensor([1e-3, 0.1, 2.0])
    envelope = wave_kernel(torch.full((3,), 1e-9), alpha, torch.zeros(3), 100_000)
    torch.testing.assert_close(envelope.double().sum(-1), torch.ones(3, dtype=torch.float64), atol=1e-4, rtol=0)


@settings(max_examples=30, deadline=None)
@given(
    N=st.integers(1, 200),
    H=st.integers(1, 4),
    d=st.integers(1, 5),
    chunk=st.integers(1, 70),
    cuts=st.lists(st.floats(0, 1), max_size=4),
    seed=st.integers(0, 2**16),
)
def test_paths_agree_and_continue_exactly(N, H, d, chunk, cuts, seed):
    """FFT == chunked == recurrence, and any of them split at random points with the state
    carried across gives the same outputs and final state (<= 1e-5 relative, float32)."""
    gen = torch.Generator(torch.get_default_device()).manual_seed(seed)
    omega, alpha, phi = random_params(H, gen)
    u = torch.randn(2, N, H, d, generator=gen)
    ref, ref_state = propagate(u, omega, alpha, phi, path="recurrent", return_state=True)
    bounds = sorted({0, N, *(int(c * N) for c in cuts)})
    for path in PATHS:
        y, s = propagate(u, omega, alpha, phi, path=path, chunk_size=chunk, return_state=True)
        assert rel_err(y, ref) <= 1e-5 and rel_err(s, ref_state) <= 1e-5, path
        pieces, state = [], None
        for a, b in zip(bounds[:-1], bounds[1:]):
            y, state = propagate(u[:, a:b], omega, alpha, phi, state=state, path=path, chunk_size=chunk, return_state=True)
            pieces.append(y)
        assert rel_err(torch.cat(pieces, 1), ref) <= 1e-5 and rel_err(state, ref_state) <= 1e-5, path


def test_long_range_phase_stays_accurate():
    """At 200K tokens a slow head still matches the recurrence: the phase omega * t is formed
    in float64 (in float32 it drifts by a sizeable fraction of a radian)."""
    omega, alpha, phi = torch.tensor([2.9]), torch.tensor([2e-5]), torch.tensor([0.3])
    N = 200_000
    u = torch.zeros(1, N, 1, 1)
    u[0, 0] = 1.0
    y = propagate(u, omega, alpha, phi, path="fft")[0, :, 0, 0].double()
    t = torch.arange(N, dtype=torch.float64)
    a, w, p = alpha.double(), omega.double(), phi.double()
    expected = -torch.expm1(-a) * torch.exp(-a * t) * torch.cos(w * t + p)
    assert (y - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_fft_runs_in_float32_under_autocast():
    u = torch.randn(1, 64, 2, 3)
    omega, alpha, phi = torch.tensor([0.5, 1.0]), torch.tensor([0.1, 0.01]), torch.zeros(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = propagate(u.bfloat16(), omega, alpha, phi, path="fft")
    assert y.dtype == torch.float32
    assert rel_err(y, propagate(u.bfloat16().float(), omega, alpha, phi, path="recurrent")) <= 1e-5


def test_unknown_path_is_rejected():
    with pytest.raises(ValueError, match="unknown wave path"):
        propagate(torch.zeros(1, 3, 1, 1), torch.ones(1), torch.ones(1), torch.zeros(1), path="magic")


def test_fft_size_shows_what_a_too_short_fft_does():
    """fft_size replaces the exact length: any length >= 2N - 1 gives the same outputs, a
    shorter one wraps the convolution's tail onto the first outputs, and below N it is refused."""
    gen = torch.Generator(torch.get_default_device()).manual_seed(5)
    N = 100
    omega, alpha, phi = torch.tensor([0.3, 1.0]), torch.tensor([0.01, 0.05]), torch.tensor([0.0, 1.0])
    u = torch.randn(1, 2, 3, N, generator=gen)
    ref = propagate_heads(u, omega, alpha, phi, path="recurrent")
    assert rel_err(propagate_heads(u, omega, alpha, phi, path="fft"), ref) <= 1e-5
    assert rel_err(propagate_heads(u, omega, alpha, phi, path="fft", fft_size=2 * N - 1), ref) <= 1e-5
    short = propagate_heads(u, omega, alpha, phi, path="fft", fft_size=N)
    assert rel_err(short, ref) > 1e-2
    torch.testing.assert_close(short[..., -1], ref[..., -1], atol=1e-5, rtol=1e-5)  # the last output has no tail to wrap
    with pytest.raises(ValueError, match="fft_size"):
        propagate_heads(u, omega, alpha, phi, path="fft", fft_size=N - 1)
    with pytest.raises(ValueError, match="fft_size"):
        propagate_heads(u, omega, alpha, phi, path="chunked", fft_size=2 * N)


def is_5_smooth(k):
    for p in (2, 3, 5):
        while k % p == 0:
            k //= p
    return k == 1


@pytest.mark.parametrize("n", [1, 2, 3, 7, 100, 129, 1000, 4097, 65537])
def test_next_fast_len_is_the_smallest_5_smooth_size(n):
    m = next_fast_len(n)
    assert m >= n and is_5_smooth(m)
    assert not any(is_5_smooth(k) for k in range(n, m))


@pytest.mark.parametrize("dtype", [torch.float32, torch.complex128])
@pytest.mark.parametrize("shift", [0, 1])
@pytest.mark.parametrize("C", [0, 1, 2, 7])
def test_lower_toeplitz_is_the_causal_convolution_matrix(C, shift, dtype):
    values = torch.randn(3, C, dtype=dtype)
    m = lower_toeplitz(values, shift)
    assert m.shape == (3, C, C)
    for i in range(C):
        for j in range(C):
            expected = values[:, i - j - shift] if i - j >= shift else torch.zeros(3, dtype=dtype)
            assert torch.equal(m[:, i, j], expected), (i, j)


@pytest.mark.parametrize("N,chunk", [(300, 1), (5000, 3)])
def test_chunked_scan_over_many_chunks_matches_the_recurrence(N, chunk):
    """Thousands of chunks: the scan between chunks recurses over several block levels."""
    gen = torch.Generator(torch.get_default_device()).manual_seed(N)
    omega, alpha, phi = random_params(3, gen)
    u = torch.randn(1, N, 3, 2, generator=gen)
    state = torch.randn(1, 3, 2, dtype=torch.complex64, generator=gen)
    ref, ref_state = propagate(u, omega, alpha, phi, state=state, path="recurrent", return_state=True)
    y, s = propagate(u, omega, alpha, phi, state=state, path="chunked", chunk_size=chunk, return_state=True)
    assert rel_err(y, ref) <= 1e-5 and rel_err(s, ref_state) <= 1e-5


def test_paths_have_the_same_gradients():
    """d(loss)/d(u, omega, alpha, phi) agree between the paths (autograd through each form)."""
    gen = torch.Generator(torch.get_default_device()).manual_seed(7)
    params = random_params(3, gen)
    u0 = torch.randn(2, 150, 3, 4, generator=gen)
    weights = torch.randn(2, 150, 3, 4, generator=gen)
    grads = {}
    for path in PATHS:
        u = u0.clone().requires_grad_()
        omega, alpha, phi = (p.clone().requires_grad_() for p in params)
        y, s = propagate(u, omega, alpha, phi, path=path, chunk_size=16, return_state=True)
        ((y * weights).sum() + s.abs().sum()).backward()
        grads[path] = [u.grad, omega.grad, alpha.grad, phi.grad]
    for path in ("fft", "chunked"):
        for g, ref in zip(grads[path], grads["recurrent"]):
            assert rel_err(g, ref) <= 1e-4, path
