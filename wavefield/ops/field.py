"""The field stage of a wave layer with channel deposits, as one op with a hand-written backward.

From the input projections p = W_in x (channel-major) to the gated read of the field:

    q, k, v = causal_conv(p[:3D])          # the short depthwise conv (optional)
    u       = f(k) * v * mask              # deposit (mask: optional (B, 1, N) of 0/1, padding)
    y       = propagate(u)                 # the damped wave of each head (ops.propagate)
    z       = sigmoid(g) * f(q) * y        # read and gate (g = p[3D:]; no gate: z = f(q) * y)

Composed from autograd ops (the reference: WaveFieldAttention with implementation="reference") this
stage is a dozen passes over (B, D, N) tensors, each allocating a fresh result, and its
backward concatenates the gradients of q, k, v and g back into the gradient of p. Here
forward keeps only p (plus the small state and parameters); backward recomputes the conv, the
deposit and the propagation, and writes every gradient straight into its slice of one buffer
for p. The propagation's own backward (the transposed, anti-causal propagation and the
gradients of omega, alpha, phi) still comes from autograd, recomputed inside backward.

With a mask, nothing is deposited at masked positions (u = 0 there, whatever the conv's bias
makes of k and v): the caller zeroes the projections there too (WaveFieldAttention), so that
a padded batch runs exactly as its samples do alone.
"""

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .conv import causal_conv, causal_conv_backward, conv_tail
from .propagate import propagate_heads

FEATURE_MAPS = {"identity": lambda x: x, "silu": F.silu, "elu1": lambda x: F.elu(x) + 1.0}


def feature_grad(name: str, x, fx):
    """f'(x) for the feature maps above, given x and f(x) (None for the identity)."""
    if name == "identity":
        return None
    if name == "silu":
        s = torch.sigmoid(x)
        return s * (1 + x * (1 - s))
    return fx.clamp(max=1.0)  # elu1: f = exp(x) <= 1 below 0, where f' = f; f' = 1 above


def _inputs(p, weight, bias, history, gate: bool):
    """p (B, 4D, N) (3D without the gate) -> q, k, v after the conv, and g (or None)."""
    D = p.shape[1] // (4 if gate else 3)
    qkv = p[:, : 3 * D]
    if weight is not None:
        qkv = causal_conv(qkv, history, weight, bias)  # (B, 3D, N)
    q, k, v = qkv.split(D, dim=1)
    return q, k, v, (p[:, 3 * D :] if gate else None)


def _deposit(fk, v, mask):
    """u = f(k) * v (B, D, N), zero where the mask (B, 1, N) is 0 (no mask: everywhere)."""
    return fk * v if mask is None else fk * v * mask


class _GatedField(torch.autograd.Function):
    @staticmethod
    def forward(ctx, p, weight, bias, history, field, omega, alpha, phi, mask, n_heads, feature_map, gate, path, chunk_size, return_state):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(p, weight, bias, history, field, omega, alpha, phi, mask)
        ctx.options = (n_heads, feature_map, gate, path, chunk_size)
        B, _, N = p.shape
        q, k, v, g = _inputs(p, weight, bias, history, gate)
        f = FEATURE_MAPS[feature_map]
        u = _deposit(f(k), v, mask).view(B, n_heads, -1, N)  # (B, H, d, N)
        y = propagate_heads(u, omega, alpha, phi, field, path, chunk_size, return_state)
        y, state = y if return_state else (y, None)
        z = f(q) * y.view(B, -1, N).to(p.dtype)  # (B, D, N)
        if gate:
            z.mul_(torch.sigmoid(g))
        tail = conv_tail(p[:, : 3 * z.shape[1]], history) if return_state and weight is not None else None
        return z, state, tail

    @staticmethod
    @once_differentiable
    def backward(ctx, dz, dstate, dtail):
        p, weight, bias, history, field, omega, alpha, phi, mask = ctx.saved_tensors
        n_heads, feature_map, gate, path, chunk_size = ctx.options
        B, P, N = p.shape
        D = P // (4 if gate else 3)
        dp = torch.empty_like(p)
        if dz is None:  # only the state was used
            dz = p.new_zeros(B, D, N)
        q, k, v, g = _inputs(p, weight, bias, history, gate)
        f = FEATURE_MAPS[feature_map]
        fq, fk = f(q), f(k)

        # the propagation again, under autograd, for its backward
        needs = ctx.needs_input_grad
        u = _deposit(fk, v, mask).view(B, n_heads, -1, N).requires_grad_()  # (B, H, d, N)
        physics = [t.detach().requires_grad_(need) if t is not None else None
                   for t, need in zip((omega, alpha, phi, field), (needs[5], needs[6], needs[7], needs[4]))]
        with torch.enable_grad():
            y = propagate_heads(u, *physics, path, chunk_size, return_state=dstate is not None)
        outputs = [*y] if dstate is not None else [y]
        y_read = outputs[0].detach().view(B, D, N).to(dz.dtype)

        # read and gate: z = sg * f(q) * y
        dqkv = dp[:, : 3 * D] if weight is None else torch.empty_like(p[:, : 3 * D])
        dq, dk, dv = dqkv.split(D, dim=1)
        if gate:
            sg = torch.sigmoid(g)
            dz = dz * sg  # the gradient of the read f(q) * y
        torch.mul(dz, y_read, out=dq)  # d f(q)
        if gate:  # dg = dz * f(q) * y * sg * (1 - sg)
            torch.mul(dq, fq, out=dp[:, 3 * D :]).addcmul_(dp[:, 3 * D :], sg, value=-1)
        dy = dz.mul_(fq) if gate else dz * fq

        # the propagation backward, then the deposit u = f(k) * v
        wanted = [u] + [t for t in physics if t is not None and t.requires_grad]
        grads = torch.autograd.grad(outputs, wanted, [dy.view(u.shape)] + ([dstate] if dstate is not None else []))
        found = dict(zip(map(id, wanted), grads))
        du = found[id(u)].view(B, D, N)
        if mask is not None:  # the gradient of u before the mask
            du = du * mask
        torch.mul(du, v, out=dk)  # d f(k)
        torch.mul(du, fk, out=dv)
        for d, x, fx in ((dq, q, fq), (dk, k, fk)):
            slope = feature_grad(feature_map, x, fx)
            if slope is not None:
                d.mul_(slope)

        d_weight = d_bias = d_history = None
        if weight is not None:
            _, d_history, d_weight, d_bias = causal_conv_backward(dqkv, p[:, : 3 * D], history, weight, needs[3], out=dp[:, : 3 * D])
            if dtail is not None:  # the tail read the last n columns of p, and the history before them
                lags = history.shape[2]
                n = min(N, lags)
                dp[:, : 3 * D, N - n :] += dtail[..., lags - n :]
                if d_history is not None:
                    d_history[..., n:] += dtail[..., : lags - n]
        d_omega, d_alpha, d_phi, d_field = (found.get(id(t)) for t in physics)
        return dp, d_weight, d_bias, d_history, d_field, d_omega, d_alpha, d_phi, None, None, None, None, None, None, None


def gated_field(p, weight, bias, history, omega, alpha, phi, field=None, n_heads: int = 1, feature_map: str = "identity",
                gate: bool = True, path: str = "chunked", chunk_size: int = 64, return_state: bool = False, mask=None):
    """The field stage from projections p (B, 4D, N) (3D without the gate) to z (B, D, N).

    weight (3D, K), bias (3D,) and history (B, 3D, K-1) are the short conv and the K-1 inputs
    before p (weight None: no conv); omega, alpha, phi (H,) the physical parameters; field the
    incoming field state (B, H, d) complex or None; mask (B, 1, N) of 0/1 in p's dtype, or None:
    nothing is deposited where it is 0. Returns z, or (z, new field state, new history: the
    last K-1 conv inputs (B, 3D, K-1), None without a conv).
    """
    if feature_map not in FEATURE_MAPS:
        raise ValueError(f"feature_map must be one of {tuple(FEATURE_MAPS)}, got {feature_map!r}")
    if history is not None:
        history = history.to(p.dtype)
    z, state, tail = _GatedField.apply(p, weight, bias, history, field, omega, alpha, phi, mask, n_heads, feature_map, gate, path, chunk_size, return_state)
    return (z, state, tail) if return_state else z
