"""Propagation: y[t] = sum_{s<=t} kappa_h(t - s) u[s], three exact ways.

Shapes used throughout: deposits u are (B, N, H, d) float32 (the (B, N, D) activations seen
as H heads of d channels), the field state is (B, H, d) complex64: the value of
s[t] = lambda * s[t-1] + u[t] after the last token processed, so that a later call continues
exactly where this one stopped.

* `propagate_fft`: causal convolution by FFT, padded to >= 2N - 1. O(N log N), the training
  path. Circular wrap-around cannot reach the first N outputs, so it is exact up to round-off.
* `propagate_chunked`: chunks of C tokens; a C x C Toeplitz matmul inside each chunk and the
  recurrent carry between chunks. O(N C), all matmuls, and exactly causal bit for bit.
* `propagate_recurrent`: the recurrence itself, one token at a time. O(1) per token: the
  reference path, and the decoding step.

An incoming state adds Re(gain * c * lambda^(t+1) * s) to output t; the outgoing state is
lambda^N * s + sum_t lambda^(N-1-t) u[t]. Both are shared by every path below.
"""

import torch

from .kernel import next_fast_len, read_weights, wave_kernel, wave_powers

PATHS = ("fft", "chunked", "recurrent")


def _real_mix(w: torch.Tensor, s: torch.Tensor, pattern: str) -> torch.Tensor:
    """Re(w * s) contracted by an einsum `pattern`, done in real arithmetic."""
    return torch.einsum(pattern, w.real, s.real) - torch.einsum(pattern, w.imag, s.imag)


def carry_in(state, omega, alpha, phi, n: int) -> torch.Tensor:
    """What an incoming state adds to outputs t = 0 .. n-1: (B, H, d) -> (B, n, H, d)."""
    w = read_weights(omega, alpha, phi, n, start=1)  # (H, n): gain * c * lambda^(t+1)
    return _real_mix(w, state, "hn,bhd->bnhd")


def state_out(u, omega, alpha, state=None) -> torch.Tensor:
    """Field state after the last token of u: (B, N, H, d) -> (B, H, d) complex64."""
    N = u.shape[1]
    powers = wave_powers(omega, alpha, N + 1).to(torch.complex64)  # (H, N + 1)
    back = powers[:, :N].flip(-1)  # lambda^(N-1-t)
    s = torch.complex(torch.einsum("hn,bnhd->bhd", back.real, u), torch.einsum("hn,bnhd->bhd", back.imag, u))
    if state is not None:
        s = s + powers[:, N, None] * state
    return s


def propagate_fft(u, omega, alpha, phi, state=None):
    """Causal FFT convolution with the wave kernel: (B, N, H, d) -> (B, N, H, d)."""
    N = u.shape[1]
    n_fft = next_fast_len(2 * N - 1)
    kernel = wave_kernel(omega, alpha, phi, N)  # (H, N)
    k_f = torch.fft.rfft(kernel, n=n_fft, dim=-1).T[:, :, None]  # (F, H, 1)
    u_f = torch.fft.rfft(u, n=n_fft, dim=1)  # (B, F, H, d)
    y = torch.fft.irfft(u_f * k_f, n=n_fft, dim=1)[:, :N]  # (B, N, H, d)
    if state is not None:
        y = y + carry_in(state, omega, alpha, phi, N)
    return y


def propagate_chunked(u, omega, alpha, phi, state=None, chunk_size: int = 64):
    """Toeplitz matmuls inside chunks of C tokens, recurrent carry between them."""
    B, N, H, d = u.shape
    C = max(1, min(chunk_size, N))
    n_chunks = -(-N // C)
    u = torch.nn.functional.pad(u, (0, 0, 0, 0, 0, n_chunks * C - N))  # zeros at the end only
    u = u.view(B, n_chunks, C, H, d)

    # inside each chunk: y[i] = sum_{j<=i} kappa(i-j) u[j]
    kernel = wave_kernel(omega, alpha, phi, C)  # (H, C)
    lag = torch.arange(C, device=u.device)
    lag = lag[:, None] - lag[None, :]  # (C, C): i - j
    toeplitz = kernel[:, lag.clamp(min=0)] * (lag >= 0)  # (H, C, C), zero above the diagonal
    y = torch.einsum("hij,bcjhd->bcihd", toeplitz, u)

    # between chunks: the state entering chunk c is lambda^C * (state entering c-1) + its sum
    powers = wave_powers(omega, alpha, C + 1).to(torch.complex64)  # (H, C + 1)
    back = powers[:, :C].flip(-1)  # lambda^(C-1-j)
    sums = torch.complex(torch.einsum("hj,bcjhd->bchd", back.real, u), torch.einsum("hj,bcjhd->bchd", back.imag, u))
    entering = [state if state is not None else torch.zeros_like(sums[:, 0])]
    for c in range(n_chunks - 1):
        entering.append(powers[:, C, None] * entering[-1] + sums[:, c])
    entering = torch.stack(entering, dim=1)  # (B, n_chunks, H, d)
    y = y + _real_mix(read_weights(omega, alpha, phi, C, start=1), entering, "hi,bchd->bcihd")
    return y.reshape(B, n_chunks * C, H, d)[:, :N]


def propagate_recurrent(u, omega, alpha, phi, state=None):
    """s[t] = lambda * s[t-1] + u[t], y[t] = gain * Re(c * s[t]), token by token."""
    B, N, H, d = u.shape
    lam = wave_powers(omega, alpha, 1, start=1).to(torch.complex64)  # (H, 1)
    read = read_weights(omega, alpha, phi, 1)  # (H, 1): gain * c
    s = state if state is not None else torch.zeros(B, H, d, dtype=torch.complex64, device=u.device)
    ys = []
    for t in range(N):
        s = lam * s + u[:, t]
        ys.append((read * s).real)
    return torch.stack(ys, dim=1) if ys else u.new_zeros(B, 0, H, d)


def propagate(u, omega, alpha, phi, state=None, path: str = "fft", chunk_size: int = 64, return_state: bool = False):
    """Dispatch to one exact path; float32 inside, even under autocast.

    Returns y (B, N, H, d) float32, or (y, new_state) when return_state is set.
    """
    if path not in PATHS:
        raise ValueError(f"unknown wave path {path!r}; expected one of {PATHS}")
    with torch.autocast(device_type=u.device.type, enabled=False):
        u = u.float()
        if path == "fft":
            y = propagate_fft(u, omega, alpha, phi, state)
        elif path == "chunked":
            y = propagate_chunked(u, omega, alpha, phi, state, chunk_size)
        else:
            y = propagate_recurrent(u, omega, alpha, phi, state)
        if not return_state:
            return y
        return y, state_out(u, omega, alpha, state)

