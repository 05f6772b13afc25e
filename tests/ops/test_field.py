"""The fused field stage against the same stage composed from autograd ops: values, the new
field and conv states, and the gradients of every input (projections, conv, history, field
state, omega, alpha, phi), with the states feeding what comes next."""

import pytest
import torch

from wavefield.ops import conv_tail, propagate_heads, short_conv
from wavefield.ops.field import FEATURE_MAPS, gated_field


def composed(p, weight, bias, history, omega, alpha, phi, field, n_heads, feature_map, gate, path, chunk_size, mask=None):
    B, P, N = p.shape
    D = P // (4 if gate else 3)
    qkv, g = p[:, : 3 * D], p[:, 3 * D :]
    tail = conv_tail(qkv, history) if weight is not None else None
    if weight is not None:
        qkv = short_conv(qkv, history, weight, bias)
    q, k, v = qkv.split(D, dim=1)
    f = FEATURE_MAPS[feature_map]
    u = f(k) * v if mask is None else f(k) * v * mask
    y, state = propagate_heads(u.view(B, n_heads, -1, N), omega, alpha, phi, field, path, chunk_size, return_state=True)
    z = f(q) * y.view(B, D, N)
    return (torch.sigmoid(g) * z if gate else z), state, tail


@pytest.mark.parametrize("feature_map", ["identity", "silu", "elu1"])
@pytest.mark.parametrize("gate,conv,with_state,path,N,masked", [
    (True, True, True, "chunked", 23, False), (True, True, False, "chunked", 23, False), (False, True, True, "chunked", 23, False),
    (True, False, True, "chunked", 23, False), (True, True, True, "fft", 23, False), (False, False, False, "recurrent", 23, False),
    (True, True, True, "chunked", 2, False),  # shorter than the conv: the new conv state keeps part of the history
    (True, True, True, "chunked", 23, True), (False, True, False, "fft", 23, True), (True, False, True, "recurrent", 23, True),
])
def test_gated_field_matches_the_composed_stage(feature_map, gate, conv, with_state, path, N, masked):
    gen = torch.Generator().manual_seed(7)
    B, H, d, K = 2, 3, 4, 4
    D = H * d
    p = torch.randn(B, (4 if gate else 3) * D, N, generator=gen)
    weight, bias = (torch.randn(3 * D, K, generator=gen), torch.randn(3 * D, generator=gen)) if conv else (None, None)
    history = torch.randn(B, 3 * D, K - 1, generator=gen) if conv else None
    omega, alpha, phi = torch.rand(H, generator=gen) * 3, torch.rand(H, generator=gen) * 0.3 + 0.01, torch.randn(H, generator=gen)
    field = torch.randn(B, H, d, dtype=torch.complex64, generator=gen) if with_state else None
    dz = torch.randn(B, D, N, generator=gen)
    dstate = torch.randn(B, H, d, dtype=torch.complex64, generator=gen)
    dtail = torch.randn(B, 3 * D, K - 1, generator=gen)
    mask = (torch.rand(B, 1, N, generator=gen) < 0.6).float() if masked else None  # 0: nothing deposited there

    results = []
    for fn in (gated_field, composed):
        inputs = [t.clone().requires_grad_() if t is not None else None for t in (p, weight, bias, history, omega, alpha, phi, field)]
        if fn is gated_field:
            z, state, tail = fn(*inputs, n_heads=H, feature_map=feature_map, gate=gate, path=path, chunk_size=5, return_state=True, mask=mask)
        else:
            z, state, tail = fn(*inputs, H, feature_map, gate, path, 5, mask)
        # the states feed a later tile: their gradients flow back too
        loss = (z * dz).sum() + (state * dstate.conj()).real.sum() + ((tail * dtail).sum() if conv else 0)
        loss.backward()
        results.append([z, state, tail, *(t.grad for t in inputs if t is not None)])
    for ours, ref in zip(*results):
        torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-4)


def test_gated_field_without_state_matches_and_rejects_unknown_feature_maps():
    gen = torch.Generator().manual_seed(3)
    p = torch.randn(1, 32, 40, generator=gen, requires_grad=True)
    omega, alpha, phi = torch.tensor([0.5, 2.0]), torch.tensor([0.1, 0.02]), torch.tensor([0.3, -1.0])
    z = gated_field(p, None, None, None, omega, alpha, phi, n_heads=2)
    ref, _, _ = composed(p, None, None, None, omega, alpha, phi, None, 2, "identity", True, "chunked", 64)
    torch.testing.assert_close(z, ref)
    (g_ours,) = torch.autograd.grad(z.square().sum(), p)
    (g_ref,) = torch.autograd.grad(ref.square().sum(), p)
    torch.testing.assert_close(g_ours, g_ref)
    with pytest.raises(ValueError, match="feature_map must be one of"):
        gated_field(p, None, None, None, omega, alpha, phi, n_heads=2, feature_map="relu")
