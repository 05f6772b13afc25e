"""Information flow: what the field holds at every position, and who sends what to whom.

A wave layer computes out[t] = W_out(read[t] * y[t]) with read = sigmoid(g) * f(q) and
y[t] = sum_{s<=t} kappa(t - s) u[s]. Both steps are linear in the deposits, so the output is an
exact sum of one contribution per earlier token:

    out[t] = sum_{s<=t} c[t, s],    c[t, s] = W_out(read[t] * kappa(t - s) * u[s])   # (D,)

|c[t, s]| over a row, normalised to sum 1, is the layer's "effective attention" from t to s:
read like a transformer's attention map, and for attention layers computed the same way
(c[t, s] = W_out(A[t, s] v[s])), so the two compare on equal terms.

The field itself is complex: s[t] = lambda * s[t-1] + u[t]. Its amplitude |gain * s[t]| is the
envelope of the wave a head carries at position t; its square summed over channels is the
field energy there.
"""

import math

import torch

from ..layers import WaveFieldAttention
from ..layers.attention import rotary
from ..ops import propagate
from ..ops.kernel import wave_kernel


def wave_mixers(model):
    """[(layer index, WaveFieldAttention)] for the wave layers of a WaveFieldLM."""
    return [(i, block.mixer) for i, block in enumerate(model.blocks) if isinstance(block.mixer, WaveFieldAttention)]


@torch.no_grad()
def mixer_inputs(model, ids: torch.Tensor) -> list[torch.Tensor]:
    """What each block's mixer receives for one sequence ids (N,): a list of (N, D)."""
    seen = []
    hooks = [b.mixer.register_forward_pre_hook(lambda m, args: seen.append(args[0][0])) for b in model.blocks]
    try:
        model(ids[None])
    finally:
        for h in hooks:
            h.remove()
    return seen


def wave_deposits(mixer, x: torch.Tensor):
    """The deposits u (N, H, d) and read weights sigmoid(g) * f(q) (N, D) of a wave layer for x (N, D)."""
    N, D = x.shape
    q, k, v, g, _ = mixer.inputs(x[None])  # (1, D, N) each; g is None for a layer without the gate
    q, k, v = (t[0].T for t in (q, k, v))  # (N, D)
    u = (mixer.f(k) * v).view(N, mixer.n_heads, mixer.head_dim)
    return u, mixer.f(q) if g is None else torch.sigmoid(g[0].T) * mixer.f(q)


def complex_field(mixer, u: torch.Tensor) -> torch.Tensor:
    """gain * s[t] for deposits u (N, H, d): (N, H, d) complex, through the FFT path itself.

    Re(gain * c * s) with c = 1 and with c = exp(-i pi/2) = -i gives the real and imaginary parts.
    """
    omega, alpha = mixer.omega, mixer.alpha
    re = propagate(u[None], omega, alpha, torch.zeros_like(mixer.phi), path="fft")[0]
    im = propagate(u[None], omega, alpha, torch.full_like(mixer.phi, -math.pi / 2), path="fft")[0]
    return torch.complex(re, im)


@torch.no_grad()
def wave_fields(model, ids: torch.Tensor) -> list[torch.Tensor]:
    """gain * s[t] of every wave layer for one sequence ids (N,): a list of (N, H, d) complex."""
    xs = mixer_inputs(model, ids)
    return [complex_field(m, wave_deposits(m, xs[i])[0]) for i, m in wave_mixers(model)]


def field_amplitude(model, ids: torch.Tensor) -> torch.Tensor:
    """RMS over channels of |gain * s[t]| per wave layer and head: (L_wave, H, N)."""
    return torch.stack([f.abs().pow(2).mean(-1).sqrt().T for f in wave_fields(model, ids)])


@torch.no_grad()
def impulse_responses(model, n: int) -> torch.Tensor:
    """Each wave head's response to a unit deposit at t = 0, measured through the FFT path: (L_wave, H, n)."""
    out = []
    for _, m in wave_mixers(model):
        impulse = torch.zeros(1, n, m.n_heads, 1)
        impulse[0, 0] = 1.0
        out.append(propagate(impulse, m.omega, m.alpha, m.phi, path="fft")[0, :, :, 0].T)
    return torch.stack(out)


def mixing_terms(mixer, x: torch.Tensor):
    """A mixer as out[t] = W_out(read[t] * sum_s weights[h, t, s] * values[s]) for x (N, D).

    Returns read (N, D), weights (H, N, N) (zero above the diagonal), values (N, D).
    """
    N, D = x.shape
    if isinstance(mixer, WaveFieldAttention):
        u, read = wave_deposits(mixer, x)
        kernel = wave_kernel(mixer.omega, mixer.alpha, mixer.phi, N)  # (H, N)
        lag = torch.arange(N)[:, None] - torch.arange(N)[None, :]  # (N, N): t - s
        return read, kernel[:, lag.clamp(min=0)] * (lag >= 0), u.reshape(N, D)
    H, d = mixer.n_heads, mixer.head_dim
    q, k, v = mixer.qkv_proj(x).view(N, 3, H, d).permute(1, 2, 0, 3)  # (H, N, d) each
    q, k = rotary(q[None], 0, mixer.rope_base)[0], rotary(k[None], 0, mixer.rope_base)[0]
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)  # (H, N, N)
    scores = scores.masked_fill(torch.ones(N, N, dtype=torch.bool).triu(1), float("-inf"))
    return torch.ones_like(x), scores.softmax(-1), v.transpose(0, 1).reshape(N, D)


def contributions(mixer, x: torch.Tensor, rows=None) -> torch.Tensor:
    """c[t, s] for the output positions t in rows (default all): (T, N, D). Summed over s: mixer(x)."""
    read, weights, values = mixing_terms(mixer, x)
    rows = torch.arange(x.shape[0]) if rows is None else rows
    w = weights[:, rows].repeat_interleave(mixer.head_dim, dim=0).permute(1, 2, 0)  # (T, N, D)
    return (read[rows, None, :] * w * values[None]) @ mixer.out_proj.weight.T


@torch.no_grad()
def effective_attention(model, ids: torch.Tensor, block_rows: int = 64) -> torch.Tensor:
    """Per layer, |c[t, s]| normalised over s to sum 1: (L, N, N), zero above the diagonal."""
    xs, N = mixer_inputs(model, ids), ids.shape[0]
    maps = []
    for block, x in zip(model.blocks, xs):
        norms = torch.cat([
            contributions(block.mixer, x, torch.arange(r, min(r + block_rows, N))).norm(dim=-1)
            for r in range(0, N, block_rows)
        ])  # (N, N)
        maps.append(norms / norms.sum(-1, keepdim=True).clamp_min(1e-30))
    return torch.stack(maps)


@torch.no_grad()
def wavefronts(model, ids: torch.Tensor) -> torch.Tensor:
    """The wave each earlier token s contributes at time t: kappa_h(t - s) * |u_h[s]|.

    Returns (T, L_wave * H, N): frame t, one row per head, zero for s > t. Summing a row of
    frame t over s gives (up to the channel mixing) the field at t: this is the field building up.
    """
    xs, N = mixer_inputs(model, ids), ids.shape[0]
    rows = []
    for i, m in wave_mixers(model):
        _, weights, values = mixing_terms(m, xs[i])  # weights (H, N, N)
        size = values.view(N, m.n_heads, m.head_dim).norm(dim=-1).T  # (H, N)
        rows.append(weights * size[:, None, :])  # (H, t, s)
    return torch.cat(rows).transpose(0, 1)
