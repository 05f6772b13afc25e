"""The selective state-space recurrence of Mamba-2 (state-space duality, SSD; Dao & Gu 2024).

Per head h (head size P, state size N), for t = 0, 1, ..:

    h[t] = exp(dt[t] A) h[t-1] + dt[t] B[t] x[t]^T      h (N, P); B[t], C[t] (N,); x[t] (P,)
    y[t] = C[t]^T h[t]                                   (P,)

dt[t] > 0 and A < 0 per head, so the decay exp(dt A) lies in (0, 1]; B and C are shared by the
heads (one group). Shapes: x (B, L, H, P), dt (B, L, H), A (H,), B and C (B, L, N), the state
(B, H, N, P). A position with dt = 0 neither decays the state nor adds to it.

* ssd_step: one token, the recurrence as written (decoding).
* ssd_reference: ssd_step over every token: the ground truth, O(L) sequential steps.
* ssd_chunked: the same in chunks of Q tokens. Inside a chunk, the quadratic (masked
  attention-like) form: y[i] = sum_{j<=i} C[i].B[j] exp(a[j+1] + .. + a[i]) dt[j] x[j] with
  a = dt A; between chunks, one state per chunk boundary, passed on sequentially. O(L Q) work
  in matmuls, plus L / Q small steps.
"""

import math

import torch
import torch.nn.functional as F


def segsum(a: torch.Tensor) -> torch.Tensor:
    """a (..., Q) -> (..., Q, Q): entry [i, j] = a[j+1] + .. + a[i] for j <= i (0 on the
    diagonal), -inf above it. Summed directly, not as a difference of cumulative sums, so no
    precision is lost to cancellation; for a <= 0 every finite entry is <= 0 and its exp <= 1."""
    Q = a.shape[-1]
    below = torch.ones(Q, Q, dtype=torch.bool, device=a.device).tril(-1)  # j < i
    terms = a[..., :, None].expand(*a.shape, Q).masked_fill(~below, 0.0)  # [k, j] = a[k] where j < k
    sums = terms.cumsum(-2)  # [i, j] = sum over j < k <= i of a[k]
    return sums.masked_fill(~torch.ones(Q, Q, dtype=torch.bool, device=a.device).tril(), float("-inf"))


def ssd_step(x, dt, A, B, C, state):
    """One token: x (B, H, P), dt (B, H), A (H,), B and C (B, N), state (B, H, N, P) ->
    (y (B, H, P), the new state)."""
    decay = torch.exp(dt * A)[..., None, None]  # (B, H, 1, 1)
    deposit = B[:, None, :, None] * (dt[..., None] * x)[:, :, None, :]  # (B, H, N, P)
    state = decay * state + deposit
    y = (C[:, None, None, :] @ state).squeeze(2)  # (B, H, 1, N) @ (B, H, N, P) -> (B, H, P)
    return y, state


def _initial(x, state, N: int):
    Bsz, _, H, P = x.shape
    return state.to(x.dtype) if state is not None else x.new_zeros(Bsz, H, N, P)


def ssd_reference(x, dt, A, B, C, state=None):
    """The recurrence token by token from `state` (None: zeros): (y (B, L, H, P), final state)."""
    h = _initial(x, state, B.shape[-1])
    ys = []
    for t in range(x.shape[1]):
        y, h = ssd_step(x[:, t], dt[:, t], A, B[:, t], C[:, t], h)
        ys.append(y)
    y = torch.stack(ys, 1) if ys else x.new_zeros(x.shape)
    return y, h


def ssd_chunked(x, dt, A, B, C, state=None, chunk_size: int = 64):
    """The recurrence in chunks of chunk_size tokens, continuing from `state` (None: zeros):
    (y (B, L, H, P), final state (B, H, N, P)). Equal to ssd_reference up to round-off."""
    Bsz, L, H, P = x.shape
    N = B.shape[-1]
    h = _initial(x, state, N)
    if L == 0:
        return x.new_zeros(x.shape), h
    Q = min(chunk_size, L)
    nc = math.ceil(L / Q)
    pad = nc * Q - L  # padded positions get dt = 0: they change neither the outputs nor the state
    if pad:
        x, dt, B, C = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x, dt, B, C))
    xdt = (x * dt[..., None]).view(Bsz, nc, Q, H, P).permute(0, 3, 1, 2, 4)  # (B, H, c, Q, P): dt[j] x[j]
    a = (dt * A).view(Bsz, nc, Q, H).permute(0, 3, 1, 2)  # (B, H, c, Q): log decays, <= 0
    Bc, Cc = B.view(Bsz, 1, nc, Q, N), C.view(Bsz, 1, nc, Q, N)  # (B, 1, c, Q, N): the same for every head
    a_cum = a.cumsum(-1)  # (B, H, c, Q): log decay from the chunk's start to each position

    # 1. inside each chunk: y[i] = sum_{j<=i} (C[i].B[j]) exp(segsum(a)[i, j]) dt[j] x[j]
    scores = (Cc @ Bc.mT) * torch.exp(segsum(a))  # (B, H, c, Q, Q), zero above the diagonal
    y = scores @ xdt  # (B, H, c, Q, P)

    # 2. each chunk's deposits, decayed to the chunk's end: its own contribution to the state there
    to_end = torch.exp(a_cum[..., -1:] - a_cum)  # (B, H, c, Q)
    chunk_states = (Bc * to_end[..., None]).mT @ xdt  # (B, H, c, N, P)

    # 3. the state entering each chunk, passed on from chunk to chunk
    chunk_decay = torch.exp(a_cum[..., -1])  # (B, H, c)
    entering = []
    decays, states = chunk_decay[..., None, None].unbind(2), chunk_states.unbind(2)  # one backward for all chunks, not a full-size one per index
    for c in range(nc):
        entering.append(h)
        h = decays[c] * h + states[c]
    entering = torch.stack(entering, 2)  # (B, H, c, N, P)

    # 4. what the entering state gives each position: C[i]^T exp(a_cum[i]) h_entering
    y = y + torch.exp(a_cum)[..., None] * (Cc @ entering)  # (B, H, c, Q, P)
    y = y.permute(0, 2, 3, 1, 4).reshape(Bsz, nc * Q, H, P)[:, :L]  # (B, L, H, P)
    return y, h
