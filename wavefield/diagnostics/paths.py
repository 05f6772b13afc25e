"""Path agreement: the FFT path of a wave layer against its chunked path, on the same deposits.

The three propagation paths (ops.propagate) compute the same causal convolution; the FFT path
is exact only when its length leaves room for the whole convolution (>= 2N - 1): shorter, the
tail wraps around onto the first outputs. An energy (Parseval) check cannot see that, since a
circular convolution conserves energy as well as a linear one; comparing the outputs can. The
check runs the FFT path and the chunked path (a different algorithm: Toeplitz matmuls and a
scan) on the deposits of a real input and reports the largest gap between them, relative to
the largest output.
"""

import torch

from ..ops import propagate_heads
from .flow import mixer_inputs, wave_mixers

PATH_TOL = 1e-5
SAMPLE_TOKENS = 512  # length of the seeded random deposits used when no input is given


@torch.no_grad()
def path_agreement(model, ids=None, fft_size=None) -> dict:
    """Per wave layer, max |y_fft - y_chunked| / max |y_chunked| on the deposits of ids (N,),
    or on seeded random deposits of SAMPLE_TOKENS tokens without ids (and for layers with outer
    deposits, which have no per-channel deposits). fft_size replaces the FFT length (default:
    the exact one, as in training), so that one can see the check fail on an FFT too short.

    Returns {"layers": [{"layer", "gap"}], "max_gap", "tolerance", "passed"}.
    """
    xs = mixer_inputs(model, ids) if ids is not None else None
    g = torch.Generator().manual_seed(0)
    layers = []
    for i, m in wave_mixers(model):
        if xs is not None and m.deposit == "channel":
            u = m.decompose(xs[i][None]).deposits  # (1, H, d, N)
        else:
            u = torch.randn(1, m.n_heads, m.head_dim, len(ids) if ids is not None else SAMPLE_TOKENS, generator=g, device="cpu").to(m.omega.device)
        fft = propagate_heads(u, m.omega, m.alpha, m.phi, path="fft", fft_size=fft_size)
        chunked = propagate_heads(u, m.omega, m.alpha, m.phi, path="chunked", chunk_size=m.chunk_size)
        layers.append({"layer": i, "gap": ((fft - chunked).abs().max() / chunked.abs().max().clamp_min(1e-30)).item()})
    worst = max((r["gap"] for r in layers), default=0.0)
    return {"layers": layers, "max_gap": worst, "tolerance": PATH_TOL, "passed": worst <= PATH_TOL}
