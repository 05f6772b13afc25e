"""Energy: how much a head's wave carries, how fast it dissipates, and whether the FFT keeps it.

* Kernel energy E = sum_{t>=0} kappa(t)^2. With kappa = gain * Re(c lambda^t) it has the closed
  form  gain^2 / 2 * [1 / (1 - e^{-2 alpha}) + Re(c^2 / (1 - lambda^2))],  and lies in
  (0, tanh(alpha / 2)]: the gain keeps every head's energy below 1.
* Dissipation: the wave's energy envelope falls by e^{-2 alpha} per token, so a head loses the
  fraction 1 - e^{-2 alpha} of its energy at every step.
* Parseval: time-domain energy sum x[t]^2 equals frequency-domain energy sum_f |X[f]|^2 / n.
  Checking it on the kernels and on the field of a real input, at the FFT length the training
  path uses, is the FFT path's energy-conservation monitor: a transform that truncated,
  aliased or mis-scaled the signal would create or lose energy.
"""

import torch

from ..ops.kernel import next_fast_len, wave_gain, wave_kernel
from .flow import mixer_inputs, wave_deposits, wave_fields, wave_mixers

PARSEVAL_TOL = 1e-5


def kernel_energy(omega, alpha, phi) -> torch.Tensor:
    """sum_{t>=0} kappa(t)^2 per head, closed form in float64: (H,)."""
    omega, alpha, phi = omega.double(), alpha.double(), phi.double()
    lam2 = torch.polar(torch.exp(-2 * alpha), 2 * omega)  # lambda^2
    c2 = torch.polar(torch.ones_like(phi), 2 * phi)  # c^2
    return wave_gain(alpha) ** 2 / 2 * (1 / -torch.expm1(-2 * alpha) + (c2 / (1 - lam2)).real)


def dissipation(alpha) -> torch.Tensor:
    """Fraction of a head's wave energy lost per token, 1 - exp(-2 alpha): (H,)."""
    return -torch.expm1(-2 * alpha.double())


def spectral_energy(spectrum: torch.Tensor, n: int) -> torch.Tensor:
    """sum_f |X[f]|^2 / n over the full spectrum, from an rfft of length n along the last axis."""
    weight = torch.full((spectrum.shape[-1],), 2.0, dtype=torch.float64)
    weight[0] = 1.0  # DC appears once
    if n % 2 == 0:
        weight[-1] = 1.0  # so does the Nyquist bin
    return (spectrum.abs().double() ** 2 * weight).sum(-1) / n


def parseval_error(signal: torch.Tensor, spectrum: torch.Tensor, n: int) -> float:
    """Largest relative gap between time- and frequency-domain energy over the leading axes.

    signal (..., T) and its rfft spectrum (..., n // 2 + 1) along the last axis.
    """
    time = signal.double().pow(2).sum(-1)
    return ((time - spectral_energy(spectrum, n)).abs() / time.clamp_min(1e-300)).max().item()


@torch.no_grad()
def parseval_check(model, ids=None) -> dict:
    """Parseval per wave layer, at the training path's FFT length, on the kernels and, given a
    sequence ids (N,), on the field y = kappa * u of that real input.

    Returns {"layers": [{"layer", "kernel_error", "field_error"}], "max_error", "tolerance", "passed"}.
    """
    N = ids.shape[0] if ids is not None else 512
    n_fft = next_fast_len(2 * N - 1)  # as in the FFT path (ops.propagate)
    xs = mixer_inputs(model, ids) if ids is not None else None
    layers = []
    for i, m in wave_mixers(model):
        kernel = wave_kernel(m.omega, m.alpha, m.phi, N)  # (H, N)
        k_f = torch.fft.rfft(kernel, n=n_fft)  # (H, F)
        row = {"layer": i, "kernel_error": parseval_error(kernel, k_f, n_fft), "field_error": None}
        if xs is not None:
            u = wave_deposits(m, xs[i])[0].permute(1, 2, 0)  # (H, d, N)
            y_f = torch.fft.rfft(u, n=n_fft) * k_f[:, None]  # the product the FFT path forms
            row["field_error"] = parseval_error(torch.fft.irfft(y_f, n=n_fft), y_f, n_fft)
        layers.append(row)
    worst = max([e for r in layers for e in (r["kernel_error"], r["field_error"]) if e is not None], default=0.0)
    return {"layers": layers, "max_error": worst, "tolerance": PARSEVAL_TOL, "passed": worst <= PARSEVAL_TOL}


def field_energy(model, ids) -> torch.Tensor:
    """sum over heads and channels of |gain * s[t]|^2 per wave layer and position: (L_wave, N)."""
    return torch.stack([f.abs().pow(2).sum((1, 2)) for f in wave_fields(model, ids)])


@torch.no_grad()
def physics_summary(model, ids=None) -> dict:
    """A compact record for training logs: per wave layer the heads' kernel energy and
    dissipation, and the Parseval error of the FFT path (on ids (N,) when given)."""
    heads = [
        {"layer": i, "energy": kernel_energy(m.omega, m.alpha, m.phi).tolist(), "dissipation": dissipation(m.alpha).tolist()}
        for i, m in wave_mixers(model)
    ]
    check = parseval_check(model, ids)
    return {"heads": heads, "parseval_error": check["max_error"], "parseval_passed": check["passed"]}
