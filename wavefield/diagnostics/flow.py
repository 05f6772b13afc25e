"""Information flow: what the field holds at every position, and who sends what to whom.

Every mixer says how its output is made (its `decompose` method); nothing here re-derives it.
A wave layer computes out[t] = W_out(read[t] * y[t]) with read = sigmoid(g) * f(q) (times the
RMS-norm scale of its read-out where wave_norm is on) and y[t] = sum_{s<=t} kappa(t - s) u[s].
Given read, the output is linear in the deposits, so it is an exact sum of one contribution
per earlier token:

    out[t] = sum_{s<=t} c[t, s],    c[t, s] = W_out(read[t] * kappa(t - s) * u[s])   # (D,)

A wave layer with outer-product deposits is linear attention weighted by the wave: with read =
gate and weights kappa(t - s) (f(q[t]) . f(k[s])) / sqrt(d) (its norm's scale included),
c[t, s] = W_out(gate[t] * weights[t, s] * v[s]).

|c[t, s]| over a row, normalised to sum 1, is the layer's "effective attention" from t to s:
read like a transformer's attention map, and for attention layers computed the same way
(c[t, s] = W_out(A[t, s] v[s])), so the two compare on equal terms.

The field itself is complex: s[t] = lambda * s[t-1] + u[t] (d channels per head, or d x d for
outer deposits). Its amplitude |gain * s[t]| is the envelope of the wave a head carries at
position t; its square summed over channels is the field energy there.
"""

import torch

from ..layers import WaveFieldAttention


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


@torch.no_grad()
def wave_fields(model, ids: torch.Tensor) -> list[torch.Tensor]:
    """gain * s[t] of every wave layer for one sequence ids (N,): a list of (N, H, C) complex, C
    channels per head (d, or d * d for outer deposits)."""
    xs = mixer_inputs(model, ids)
    return [m.decompose(xs[i][None]).field[0].permute(2, 0, 1) for i, m in wave_mixers(model)]


def field_amplitude(model, ids: torch.Tensor) -> torch.Tensor:
    """RMS over channels of |gain * s[t]| per wave layer and head: (L_wave, H, N)."""
    return torch.stack([f.abs().pow(2).mean(-1).sqrt().T for f in wave_fields(model, ids)])


def impulse_responses(model, n: int) -> torch.Tensor:
    """Each wave head's response to a unit deposit at t = 0, as its layer states it: (L_wave, H, n)."""
    return torch.stack([m.kernel(n).detach() for _, m in wave_mixers(model)])


def mixing_terms(mixer, x: torch.Tensor):
    """A mixer as out[t] = W_out(read[t] * sum_s weights[h, t, s] * values[s]) for x (N, D),
    from the mixer's own decomposition.

    Returns read (N, D), weights (H, N, N) (zero above the diagonal), values (N, D).
    """
    N, D = x.shape
    terms = mixer.decompose(x[None])
    if isinstance(mixer, WaveFieldAttention):
        channels = lambda t: t[0].reshape(D, N).T  # noqa: E731  (1, H, d, N) -> (N, D)
        if terms.values is not None:  # outer deposits: the read is in the weights (its match with each key)
            return channels(terms.gate), terms.weights[0], channels(terms.values)
        return channels(terms.gate * terms.read), terms.weights[0], channels(terms.deposits)
    return torch.ones_like(x), terms.weights[0], terms.values[0].transpose(0, 1).reshape(N, D)


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
        norms = torch.cat([contributions(block.mixer, x, torch.arange(r, min(r + block_rows, N))).norm(dim=-1) for r in range(0, N, block_rows)])  # (N, N)
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
