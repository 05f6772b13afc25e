"""Outer-product deposits: the same damped wave, acting on a matrix state per head.

Each token deposits the outer product k v^T (d x d per head) instead of a per-channel value,
and a token reads the field with its query:

    S[t] = lambda * S[t-1] + k[t] v[t]^T             complex (d, d) per head
    y[t] = gain * Re(c * q[t]^T S[t])
         = sum_{s<=t} kappa(t - s) (q[t] . k[s]) v[s]

kappa is the kernel of ops.kernel (three physical numbers per head), so the field is linear
attention whose scores are weighted by a damped wave of the distance t - s; RetNet's retention
is the case phi = 0. Shapes: q, k, v are (B, N, H, d) float32, the state is (B, H, d, d)
complex64 (rows indexed by key channels, columns by value channels). Three exact paths:

* `outer_quadratic`: scores (Q K^T) * Toeplitz(kappa), times V. O(N^2 d): the reference.
* `outer_chunked`: the quadratic form inside chunks of C tokens, the matrix state carried
  between chunks. O(N C d + N d^2), all matmuls: the training path.
* `outer_recurrent`: the recurrence, one token at a time, O(d^2) per token: decoding.
"""

import torch

from .kernel import exact_float32, lower_toeplitz, read_weights, wave_kernel, wave_powers

OUTER_PATHS = ("quadratic", "chunked", "recurrent")


def _read_state(q, state, weights) -> torch.Tensor:
    """Re(w[h, i] * q[i]^T S): (..., n, H, d) x (..., H, d, e) with w (H, n) -> (..., n, H, e).

    One real product against the state's (re, im) pairs, (d, e, 2) read as (d, 2e): no copy of
    its real and imaginary parts."""
    e = state.shape[-1]
    qs = (q.transpose(-3, -2) @ torch.view_as_real(state).flatten(-2)).unflatten(-1, (e, 2))  # (..., H, n, e, 2): q^T Re S, q^T Im S
    return (weights.real[:, :, None] * qs[..., 0] - weights.imag[:, :, None] * qs[..., 1]).transpose(-3, -2)


def _deposit(k, v, weights) -> torch.Tensor:
    """sum_j w[h, j] k[j] v[j]^T: (..., n, H, d) twice with w (H, n) complex -> (..., H, d, e)."""
    re = torch.einsum("hn,...nhd,...nhe->...hde", weights.real, k, v)
    im = torch.einsum("hn,...nhd,...nhe->...hde", weights.imag, k, v)
    return torch.complex(re, im)


def outer_state_out(k, v, omega, alpha, state=None) -> torch.Tensor:
    """State after the last token: lambda^N S + sum_t lambda^(N-1-t) k[t] v[t]^T, (B, H, d, d)."""
    N = k.shape[1]
    powers = wave_powers(omega, alpha, N + 1).to(torch.complex64)  # (H, N + 1)
    s = _deposit(k, v, powers[:, :N].flip(-1))
    if state is not None:
        s = s + powers[:, N, None, None] * state
    return s


def outer_quadratic(q, k, v, omega, alpha, phi, state=None):
    """y = ((Q K^T) * Toeplitz(kappa)) V plus what the incoming state adds: (B, N, H, d)."""
    N = q.shape[1]
    scores = torch.einsum("bihd,bjhd->bhij", q, k) * lower_toeplitz(wave_kernel(omega, alpha, phi, N))  # (B, H, N, N)
    y = torch.einsum("bhij,bjhe->bihe", scores, v)
    if state is not None:
        y = y + _read_state(q, state, read_weights(omega, alpha, phi, N, start=1))
    return y


def outer_chunked(q, k, v, omega, alpha, phi, state=None, chunk_size: int = 64, return_state: bool = False):
    """The quadratic form inside chunks of C tokens, the matrix state carried between them; with
    return_state, (y, the state after the last token), taken from the chunks' own deposits."""
    B, N, H, d = q.shape
    C = max(1, min(chunk_size, N))
    n_chunks = -(-N // C)
    q, k, v = (torch.nn.functional.pad(x, (0, 0, 0, 0, 0, n_chunks * C - N)).view(B, n_chunks, C, H, -1) for x in (q, k, v))
    # (B, n_chunks, C, H, d) each, zeros at the end only

    scores = torch.einsum("bcihd,bcjhd->bchij", q, k) * lower_toeplitz(wave_kernel(omega, alpha, phi, C))
    y = torch.einsum("bchij,bcjhe->bcihe", scores, v)  # inside each chunk

    # between chunks: the state entering chunk c is lambda^C * (state entering c-1) + its deposits
    powers = wave_powers(omega, alpha, C + 1).to(torch.complex64)  # (H, C + 1)
    deposits = _deposit(k, v, powers[:, :C].flip(-1))  # (B, n_chunks, H, d, e)
    entering = [state if state is not None else torch.zeros_like(deposits[:, 0])]
    chunk_deposits = deposits.unbind(1)  # one backward for all chunks (indexing each would zero-fill a full-size gradient per chunk)
    for c in range(n_chunks - 1):
        entering.append(powers[:, C, None, None] * entering[-1] + chunk_deposits[c])
    y = y + _read_state(q, torch.stack(entering, dim=1), read_weights(omega, alpha, phi, C, start=1))
    y = y.reshape(B, n_chunks * C, H, -1)[:, :N]
    if not return_state:
        return y
    # the last chunk holds r real tokens, then zeros: its deposits above are weighted for C, so a
    # short last chunk is deposited again with its own weights (one chunk's work)
    r = N - (n_chunks - 1) * C
    last = chunk_deposits[-1] if r == C else _deposit(k[:, -1, :r], v[:, -1, :r], powers[:, :r].flip(-1))
    return y, powers[:, r, None, None] * entering[-1] + last


def outer_recurrent(q, k, v, omega, alpha, phi, state=None, return_state: bool = False):
    """S[t] = lambda * S[t-1] + k[t] v[t]^T, y[t] = gain * Re(c * q[t]^T S[t]), token by token;
    with return_state, (y, the state after the last token)."""
    B, N, H, d = q.shape
    lam = wave_powers(omega, alpha, 1, start=1).to(torch.complex64)[:, :, None]  # (H, 1, 1)
    read = read_weights(omega, alpha, phi, 1)  # (H, 1): gain * c
    s = state if state is not None else torch.zeros(B, H, d, v.shape[-1], dtype=torch.complex64, device=q.device)
    ys = []
    for t in range(N):
        s = lam * s  # a new tensor: adding the real deposit to its real parts in place is safe
        torch.view_as_real(s)[..., 0].add_(k[:, t, :, :, None] * v[:, t, :, None, :])
        ys.append(_read_state(q[:, t, None], s, read)[:, 0])
    y = torch.stack(ys, dim=1) if ys else v.new_zeros(B, 0, H, v.shape[-1])
    return (y, s) if return_state else y


def propagate_outer(q, k, v, omega, alpha, phi, state=None, path: str = "chunked", chunk_size: int = 64, return_state: bool = False):
    """Dispatch to one exact path; float32 inside, even under autocast.

    Returns y (B, N, H, d) float32, or (y, new_state) when return_state is set.
    """
    if path not in OUTER_PATHS:
        raise ValueError(f"unknown outer-deposit path {path!r}; expected one of {OUTER_PATHS}")
    with exact_float32(q.device.type):  # IEEE float32: no autocast, no TF32 (ops.kernel)
        q, k, v = q.float(), k.float(), v.float()
        if path == "recurrent":  # its loop ends on the new state
            return outer_recurrent(q, k, v, omega, alpha, phi, state, return_state)
        if path == "chunked":  # so do its chunks
            return outer_chunked(q, k, v, omega, alpha, phi, state, chunk_size, return_state)
        y = outer_quadratic(q, k, v, omega, alpha, phi, state)
        return (y, outer_state_out(k, v, omega, alpha, state)) if return_state else y
