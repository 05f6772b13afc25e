"""Path agreement: the FFT path of a wave layer against its chunked path, on the same deposits.

The three propagation paths (ops.propagate) compute the same causal convolution; the FFT path
is exact only when its length leaves room for the whole convolution (>= 2N - 1): shorter, the
tail wraps around onto the first outputs. An energy (Parseval) check cannot see that, since a
circular convolution conserves energy as well as a linear one; comparing the outputs can. The
check runs the FFT path and the chunked path (a different algorithm: Toeplitz matmuls and a
scan) on the deposits of a real input and reports the largest gap between them, relative to
the largest output. A layer with outer-product deposits runs its own two sequence paths
(ops.outer: the quadratic whole-sequence form, what its "fft" path takes, and the chunked one)
on its queries, keys and values; fft_size does not apply to it.
"""

import torch

from ..ops import propagate_heads, propagate_outer_heads
from .flow import mixer_inputs, wave_mixers

PATH_TOL = 1e-5
SAMPLE_TOKENS = 512  # length of the seeded random deposits used when no input is given


@torch.no_grad()
def path_agreement(model, ids=None, fft_size=None) -> dict:
    """Per wave layer, max |y_fft - y_chunked| / max |y_chunked| on the deposits of ids (N,),
    or on seeded random deposits of SAMPLE_TOKENS tokens without ids; for outer deposits the
    quadratic against the chunked outer path, on the layer's queries, keys and values (random
    ones without ids). fft_size replaces the FFT length of channel layers (default: the exact
    one, as in training), so that one can see the check fail on an FFT too short.

    Returns {"layers": [{"layer", "gap"}], "max_gap", "tolerance", "passed"}.
    """
    xs = mixer_inputs(model, ids) if ids is not None else None
    g = torch.Generator().manual_seed(0)
    layers = []
    for i, m in wave_mixers(model):
        if m.deposit == "outer":
            layers.append({"layer": i, "gap": _outer_gap(m, xs[i] if xs is not None else None, g)})
            continue
        if xs is not None:
            u = m.decompose(xs[i][None]).deposits  # (1, H, d, N)
        else:
            u = torch.randn(1, m.n_heads, m.head_dim, len(ids) if ids is not None else SAMPLE_TOKENS, generator=g, device="cpu").to(m.omega.device)
        fft = propagate_heads(u, m.omega, m.alpha, m.phi, path="fft", fft_size=fft_size)
        chunked = propagate_heads(u, m.omega, m.alpha, m.phi, path="chunked", chunk_size=m.chunk_size)
        layers.append({"layer": i, "gap": ((fft - chunked).abs().max() / chunked.abs().max().clamp_min(1e-30)).item()})
    worst = max((r["gap"] for r in layers), default=0.0)
    return {"layers": layers, "max_gap": worst, "tolerance": PATH_TOL, "passed": worst <= PATH_TOL}


def _outer_gap(m, x, g) -> float:
    """The quadratic and chunked outer paths on the layer's read, keys and values for x (N, D), or on random ones."""
    if x is not None:
        t = m.decompose(x[None])
        q, k, v = t.read, t.keys, t.values  # (1, H, d, N) each
    else:
        q, k, v = (torch.rand(1, m.n_heads, m.head_dim, SAMPLE_TOKENS, generator=g).to(m.omega.device) for _ in range(3))
    quadratic = propagate_outer_heads(q, k, v, m.omega, m.alpha, m.phi, path="quadratic")
    chunked = propagate_outer_heads(q, k, v, m.omega, m.alpha, m.phi, path="chunked", chunk_size=m.chunk_size)
    return ((quadratic - chunked).abs().max() / chunked.abs().max().clamp_min(1e-30)).item()
