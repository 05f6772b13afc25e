"""Propagation: y[t] = sum_{s<=t} kappa_h(t - s) u[s], three exact ways.

The paths work head-major with time last: deposits u are (B, H, d, N) float32, so that every
channel's time series is contiguous (FFTs and Toeplitz matmuls run along the last axis without
copies). `propagate` takes the time-major (B, N, H, d) layout of the activations and permutes.
The field state is (B, H, d) complex64: the value of s[t] = lambda * s[t-1] + u[t] after the
last token processed, so that a later call continues exactly where this one stopped.

* fft: causal convolution by FFT, padded to >= 2N - 1. O(N log N). Circular wrap-around
  cannot reach the first N outputs, so it is exact up to round-off. (`fft_size` overrides the
  length, so that checks can show what a too short FFT does: below 2N - 1 the tail of the
  convolution wraps around onto the first outputs.)
* chunked: chunks of C tokens; a C x C Toeplitz matmul inside each chunk, and the state
  entering each chunk from a blocked scan over chunks (itself matmuls). O(N C), exactly
  causal bit for bit, and the fastest path on CPUs (see docs/benchmarks.md).
* recurrent: the recurrence itself, one token at a time. O(1) per token: the reference
  path, and the decoding step.

An incoming state adds Re(gain * c * lambda^(t+1) * s) to output t; the outgoing state is
lambda^N * s + sum_t lambda^(N-1-t) u[t].
"""

import torch
import torch.nn.functional as F

from .kernel import exact_float32, lower_toeplitz, next_fast_len, read_weights, wave_kernel, wave_powers

PATHS = ("fft", "chunked", "recurrent")


def carry_in_heads(state, omega, alpha, phi, n: int) -> torch.Tensor:
    """What an incoming state adds to outputs t = 0 .. n-1: (B, H, d) -> (B, H, d, n)."""
    w = read_weights(omega, alpha, phi, n, start=1)  # (H, n): gain * c * lambda^(t+1)
    return state.real[..., None] * w.real[:, None] - state.imag[..., None] * w.imag[:, None]


def state_out_heads(u, omega, alpha, state=None) -> torch.Tensor:
    """Field state after the last token of u: (B, H, d, N) -> (B, H, d) complex64."""
    N = u.shape[-1]
    powers = wave_powers(omega, alpha, N + 1).to(torch.complex64)  # (H, N + 1)
    back = powers[:, :N].flip(-1)  # (H, N): lambda^(N-1-t)
    s = torch.view_as_complex(u @ torch.stack([back.real, back.imag], -1))  # (B, H, d)
    if state is not None:
        s = s + powers[:, N, None] * state
    return s


def _fft(u, omega, alpha, phi, state=None, n_fft=None):
    """Causal FFT convolution with the wave kernel: (B, H, d, N) -> (B, H, d, N), at FFT length
    n_fft (default the exact one, >= 2N - 1)."""
    N = u.shape[-1]
    n_fft = next_fast_len(2 * N - 1) if n_fft is None else n_fft
    k_f = torch.fft.rfft(wave_kernel(omega, alpha, phi, N), n=n_fft)[:, None]  # (H, 1, F)
    y = torch.fft.irfft(torch.fft.rfft(u, n=n_fft) * k_f, n=n_fft)[..., :N]  # (B, H, d, N)
    if state is not None:
        y = y + carry_in_heads(state, omega, alpha, phi, N)
    return y


def _scan(x, omega, alpha, stride: int, state=None, block: int = 64):
    """Exclusive scan over chunks: E[c] = Lambda * E[c-1] + x[c-1], E[0] = state (or 0), with
    Lambda = lambda^stride. x (B, H, d, n) complex -> E (B, H, d, n), blocked: a strictly
    lower-triangular matmul inside blocks of `block`, the same scan one level up between them."""
    B, H, d, n = x.shape
    S = min(block, n)
    nb = -(-n // S)
    x = F.pad(x, (0, nb * S - n)).reshape(B, H, d * nb, S)
    powers = wave_powers(omega.double() * stride, alpha.double() * stride, S + 1).to(x.dtype)  # (H, S + 1): Lambda^k
    local = x @ lower_toeplitz(powers[:, :S], shift=1).mT  # (B, H, d*nb, S)
    if nb > 1:  # the state entering each block, from the block totals
        totals = (x @ powers[:, :S].flip(-1)[..., None]).view(B, H, d, nb)  # sum_j Lambda^(S-1-j) x[j]
        entering = _scan(totals, omega, alpha, stride * S, state, block)  # (B, H, d, nb)
    else:
        entering = state[..., None] if state is not None else None
    E = local.view(B, H, d, nb, S)
    if entering is not None:
        E = E + entering[..., None] * powers[:, None, None, :S]
    return E.reshape(B, H, d, nb * S)[..., :n]


def _chunked(u, omega, alpha, phi, state=None, chunk_size: int = 64, return_state: bool = False):
    """Toeplitz matmuls inside chunks of C tokens, a blocked scan for the state between them."""
    B, H, d, N = u.shape
    C = max(1, min(chunk_size, N))
    nc = -(-N // C)
    if nc * C > N:  # zeros at the end only (F.pad would copy even with nothing to add)
        u = F.pad(u, (0, nc * C - N))
    u = u.reshape(B, H, d * nc, C)  # one row per chunk

    # between chunks: the state entering chunk c is lambda^C * (state entering c-1) + sum of c-1
    powers = wave_powers(omega, alpha, C + 1).to(torch.complex64)  # (H, C + 1)
    back = powers[:, :C].flip(-1)  # lambda^(C-1-j)
    sums = torch.view_as_complex(u @ torch.stack([back.real, back.imag], -1)).view(B, H, d, nc)
    # the scan runs in double precision: the states of slow heads sum thousands of deposits
    state = state.to(torch.complex128) if state is not None else None
    entering = _scan(sums.to(torch.complex128), omega, alpha, C, state)  # (B, H, d, nc)

    # inside each chunk: y[i] = sum_{j<=i} kappa(i-j) u[j], one matmul per head, added to what
    # the entering state contributes, Re(gain * c * lambda^(i+1) * entering[c]), in the same GEMM
    toeplitz = lower_toeplitz(wave_kernel(omega, alpha, phi, C)).mT.repeat(B, 1, 1)  # (B*H, C, C)
    u3 = u.reshape(B * H, d * nc, C)
    if nc > 1 or state is not None:
        w = read_weights(omega, alpha, phi, C, start=1)  # (H, C)
        carry = torch.view_as_real(entering.to(torch.complex64)).reshape(B, H, d * nc, 2) @ torch.stack([w.real, -w.imag], 1)
        y = torch.baddbmm(carry.view(B * H, d * nc, C), u3, toeplitz)
    else:
        y = torch.bmm(u3, toeplitz)
    y = y.view(B, H, d, nc * C)[..., :N]
    if not return_state:
        return y
    # the state after token N-1, from the state entering the last chunk and its r real tokens
    r = N - (nc - 1) * C
    last = u.view(B, H, d, nc, C)[:, :, :, -1, :r]  # (B, H, d, r)
    return y, state_out_heads(last, omega, alpha, entering[..., -1]).to(torch.complex64)


def _recurrent(u, omega, alpha, phi, state=None):
    """s[t] = lambda * s[t-1] + u[t], y[t] = gain * Re(c * s[t]), token by token: (y, last s)."""
    B, H, d, N = u.shape
    lam = wave_powers(omega, alpha, 1, start=1).to(torch.complex64)  # (H, 1)
    read = read_weights(omega, alpha, phi, 1)  # (H, 1): gain * c
    s = state if state is not None else torch.zeros(B, H, d, dtype=torch.complex64, device=u.device)
    ys = []
    for t in range(N):
        s = lam * s + u[..., t]
        ys.append((read * s).real)
    return (torch.stack(ys, dim=-1) if ys else u.new_zeros(B, H, d, 0)), s


def propagate_heads(u, omega, alpha, phi, state=None, path: str = "chunked", chunk_size: int = 64, return_state: bool = False, fft_size=None):
    """Propagate head-major deposits u (B, H, d, N); float32 inside, even under autocast.
    fft_size (fft path only, >= N) replaces the exact FFT length: for checks that must fail.

    Returns y (B, H, d, N) float32, or (y, new_state) when return_state is set.
    """
    if path not in PATHS:
        raise ValueError(f"unknown wave path {path!r}; expected one of {PATHS}")
    if fft_size is not None and (path != "fft" or fft_size < u.shape[-1]):
        raise ValueError(f"fft_size applies to the fft path and must be >= the sequence length {u.shape[-1]}, got {fft_size} ({path!r})")
    with exact_float32(u.device.type):  # IEEE float32: no autocast, no TF32 (ops.kernel)
        u = u.float()
        if path == "chunked":
            return _chunked(u, omega, alpha, phi, state, chunk_size, return_state)
        if path == "recurrent":
            y, s = _recurrent(u, omega, alpha, phi, state)
            return (y, s) if return_state else y
        y = _fft(u, omega, alpha, phi, state, fft_size)
        return (y, state_out_heads(u, omega, alpha, state)) if return_state else y


def propagate(u, omega, alpha, phi, state=None, path: str = "fft", chunk_size: int = 64, return_state: bool = False):
    """Propagate time-major deposits u (B, N, H, d): the layout of (B, N, D) activations.

    Returns y (B, N, H, d) float32, or (y, new_state) when return_state is set.
    """
    out = propagate_heads(u.permute(0, 2, 3, 1), omega, alpha, phi, state, path, chunk_size, return_state)
    if return_state:
        return out[0].permute(0, 3, 1, 2), out[1]
    return out.permute(0, 3, 1, 2)
