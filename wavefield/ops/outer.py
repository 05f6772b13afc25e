"""Outer-product deposits: the same damped wave, acting on a matrix state per head.

Each token deposits the outer product k v^T (d x e per head) instead of a per-channel value,
and a token reads the field with its query:

    S[t] = lambda * S[t-1] + k[t] v[t]^T             complex (d, e) per head
    y[t] = gain * Re(c * q[t]^T S[t])
         = sum_{s<=t} kappa(t - s) (q[t] . k[s]) v[s]

kappa is the kernel of ops.kernel (three physical numbers per head), so the field is linear
attention whose scores are weighted by a damped wave of the distance t - s; RetNet's retention
is the case phi = 0.

The paths work head-major with time last, as ops.propagate does: q, k (B, H, d, N) and v
(B, H, e, N) float32, the layout a wave layer's projections come in, so nothing is permuted
on the way in or out; `propagate_outer` takes the time-major (B, N, H, d) layout and permutes.
The state is (B, H, d, e) complex64 (rows indexed by key channels, columns by value channels).
Inside, the chunked path keeps it as real (B, H, 2d, e): the real rows, then the imaginary
ones, so that every product with it is one real matmul. Three exact paths:

* `outer_quadratic`: scores (Q^T K) * Toeplitz(kappa), times V. O(N^2 (d + e)): the reference.
* `outer_chunked`: the quadratic form inside chunks of C tokens, the matrix state carried
  between chunks. O(N C (d + e) + N d e), all matmuls: the training and prefill path.
* `outer_recurrent`: the recurrence, one token at a time, O(d e) per token: decoding.
"""

import torch
import torch.nn.functional as F

from .kernel import exact_float32, lower_toeplitz, read_weights, wave_kernel, wave_powers

OUTER_PATHS = ("quadratic", "chunked", "recurrent")


def _stacked(state) -> torch.Tensor:
    """(..., d, e) complex -> (..., 2d, e) real: the real rows above the imaginary ones."""
    return torch.cat([state.real, state.imag], dim=-2)


def _complex(stacked) -> torch.Tensor:
    """(..., 2d, e) real -> (..., d, e) complex64: the inverse of _stacked."""
    re, im = stacked.chunk(2, dim=-2)
    return torch.complex(re, im)


def _rotation(lam) -> torch.Tensor:
    """lam (H,) complex as the (H, 2, 2) real matrices [[a, -b], [b, a]] that _turn applies."""
    a, b = lam.real, lam.imag
    return torch.stack([torch.stack([a, -b], -1), torch.stack([b, a], -1)], -2)


def _turn(stacked, rotation) -> torch.Tensor:
    """lam * S for S stacked (B, H, 2d, e) (H the third axis from the end), with lam given as
    _rotation(lam): each head's complex scalar, applied to the (real, imaginary) pair in one matmul."""
    return (rotation @ stacked.unflatten(-2, (2, -1)).flatten(-2)).view(stacked.shape)


def _weighted(x, w) -> torch.Tensor:
    """[x * Re w; x * Im w] along the channel axis: x (..., d, n), w (H, n) complex -> (..., 2d, n).

    With keys and w[j] = lambda^(n-1-j), this times V^T is the stacked deposit sum_j w[j] k[j] v[j]^T;
    with queries and conj(w), S^T times it is the read Re(w[i] q[i]^T S)."""
    w = w.resolve_conj().view(w.shape[0], *(1,) * (x.dim() - 3), w.shape[-1])  # the axes between H and n broadcast
    return torch.cat([x * w.real, x * w.imag], dim=-2)


def outer_state_out(k, v, omega, alpha, state=None) -> torch.Tensor:
    """State after the last token: lambda^N S + sum_t lambda^(N-1-t) k[t] v[t]^T, (B, H, d, e)."""
    N = k.shape[-1]
    powers = wave_powers(omega, alpha, N + 1).to(torch.complex64)  # (H, N + 1)
    s = _weighted(k, powers[:, :N].flip(-1)) @ v.mT  # (B, H, 2d, e)
    if state is not None:
        s = s + _turn(_stacked(state), _rotation(powers[:, N]))
    return _complex(s)


def outer_quadratic(q, k, v, omega, alpha, phi, state=None):
    """y = V ((Q^T K) * Toeplitz(kappa))^T plus what the incoming state adds: (B, H, e, N)."""
    N = q.shape[-1]
    scores = (q.mT @ k) * lower_toeplitz(wave_kernel(omega, alpha, phi, N))  # (B, H, N, N): [t, s]
    y = v @ scores.mT
    if state is not None:
        y = y + _stacked(state).mT @ _weighted(q, read_weights(omega, alpha, phi, N, start=1).conj())
    return y


def outer_chunked(q, k, v, omega, alpha, phi, state=None, chunk_size: int = 64, return_state: bool = False):
    """The quadratic form inside chunks of C tokens, the matrix state carried between them; with
    return_state, (y, the state after the last token), taken from the chunks' own deposits."""
    B, H, d, N = q.shape
    e = v.shape[2]
    if N == 0:  # nothing to read or deposit
        y = v.new_zeros(B, H, e, 0)
        return (y, state if state is not None else torch.zeros(B, H, d, e, dtype=torch.complex64, device=q.device)) if return_state else y
    C = max(1, min(chunk_size, N))
    nc = -(-N // C)

    def chunks(x):  # (B, H, channels, N) -> (B, H, nc, channels, C), zeros at the end only
        x = F.pad(x, (0, nc * C - N)) if nc * C > N else x
        return x.unflatten(-1, (nc, C)).transpose(2, 3).contiguous()

    q, k, v = chunks(q), chunks(k), chunks(v)  # (B, H, nc, d or e, C)

    # inside each chunk: y[:, i] = sum_{j<=i} kappa(i - j) (q[i] . k[j]) v[j], i.e. V (Q^T K * T)^T
    scores = (q.mT @ k) * lower_toeplitz(wave_kernel(omega, alpha, phi, C))[:, None]  # (B, H, nc, C, C): [i, j]
    scores = scores.view(-1, C, C).mT  # [j, i], a view: bmm reads it transposed

    # between chunks: the state entering chunk c is lambda^C * (state entering c-1) + its deposits
    powers = wave_powers(omega, alpha, C + 1).to(torch.complex64)  # (H, C + 1)
    deposits = _weighted(k, powers[:, :C].flip(-1)) @ v.mT  # (B, H, nc, 2d, e), stacked
    entering = [_stacked(state) if state is not None else deposits.new_zeros(B, H, 2 * d, e)]
    chunk_deposits = deposits.unbind(2)  # one backward for all chunks (indexing each would zero-fill a full-size gradient per chunk)
    lam_C = _rotation(powers[:, C])  # the same step between every pair of chunks
    for c in range(nc - 1):
        entering.append(_turn(entering[-1], lam_C) + chunk_deposits[c])
    if nc > 1 or state is not None:  # what the entering states add: Re(gain * c * lambda^(i+1) * q[i]^T S)
        reads = _weighted(q, read_weights(omega, alpha, phi, C, start=1).conj())  # (B, H, nc, 2d, C)
        y = torch.baddbmm((torch.stack(entering, 2).mT @ reads).view(-1, e, C), v.view(-1, e, C), scores)
    else:
        y = torch.bmm(v.view(-1, e, C), scores)
    y = y.view(B, H, nc, e, C).transpose(2, 3).reshape(B, H, e, nc * C)[..., :N]
    if not return_state:
        return y
    # the last chunk holds r real tokens, then zeros: its deposits above are weighted for C, so a
    # short last chunk is deposited again with its own weights (one chunk's work)
    r = N - (nc - 1) * C
    last = chunk_deposits[-1] if r == C else _weighted(k[:, :, -1, :, :r], powers[:, :r].flip(-1)) @ v[:, :, -1, :, :r].mT
    return y, _complex(_turn(entering[-1], _rotation(powers[:, r])) + last)


def outer_recurrent(q, k, v, omega, alpha, phi, state=None, return_state: bool = False):
    """S[t] = lambda * S[t-1] + k[t] v[t]^T, y[t] = gain * Re(c * q[t]^T S[t]), token by token;
    with return_state, (y, the state after the last token)."""
    B, H, d, N = q.shape
    e = v.shape[2]
    lam = wave_powers(omega, alpha, 1, start=1).to(torch.complex64)[:, :, None]  # (H, 1, 1)
    read = read_weights(omega, alpha, phi, 1)[:, :, None]  # (H, 1, 1): gain * c
    s = state if state is not None else torch.zeros(B, H, d, e, dtype=torch.complex64, device=q.device)
    ys = []
    for t in range(N):
        s = lam * s  # a new tensor: adding the real deposit to its real parts in place is safe
        torch.view_as_real(s)[..., 0].add_(k[..., t, None] * v[..., None, :, t])
        qs = q[..., None, :, t] @ torch.view_as_real(s).flatten(-2)  # (B, H, 1, 2e): q^T Re S, q^T Im S interleaved
        ys.append((read * torch.view_as_complex(qs.unflatten(-1, (e, 2)))).real[..., 0, :])  # (B, H, e)
    y = torch.stack(ys, dim=-1) if ys else v.new_zeros(B, H, e, 0)
    return (y, s) if return_state else y


def propagate_outer_heads(q, k, v, omega, alpha, phi, state=None, path: str = "chunked", chunk_size: int = 64, return_state: bool = False):
    """Dispatch head-major q, k (B, H, d, N) and v (B, H, e, N) to one exact path; float32 inside,
    even under autocast.

    Returns y (B, H, e, N) float32, or (y, new_state) when return_state is set.
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


def propagate_outer(q, k, v, omega, alpha, phi, state=None, path: str = "chunked", chunk_size: int = 64, return_state: bool = False):
    """propagate_outer_heads for time-major q, k (B, N, H, d) and v (B, N, H, e): y (B, N, H, e), and the state."""
    heads = [x.permute(0, 2, 3, 1) for x in (q, k, v)]  # (B, H, d, N)
    out = propagate_outer_heads(*heads, omega, alpha, phi, state, path, chunk_size, return_state)
    if return_state:
        return out[0].permute(0, 3, 1, 2), out[1]
    return out.permute(0, 3, 1, 2)
