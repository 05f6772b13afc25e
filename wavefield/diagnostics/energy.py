"""Energy: how much a head's wave carries, how fast it dissipates, and what the field holds.

* Kernel energy E = sum_{t>=0} kappa(t)^2. With kappa = gain * Re(c lambda^t) it has the closed
  form  gain^2 / 2 * [1 / (1 - e^{-2 alpha}) + Re(c^2 / (1 - lambda^2))],  and lies in
  (0, tanh(alpha / 2)]: the gain keeps every head's energy below 1.
* Dissipation: the wave's energy envelope falls by e^{-2 alpha} per token, so a head loses the
  fraction 1 - e^{-2 alpha} of its energy at every step.
* Field energy: sum over channels of |gain * s[t]|^2, the energy of the wave state at t.

Whether the FFT path computes the field right is not an energy question (a circular
convolution conserves energy too): diagnostics.paths compares it with the chunked path.
"""

import torch

from ..ops.kernel import wave_gain
from .flow import wave_fields, wave_mixers
from .paths import path_agreement


def kernel_energy(omega, alpha, phi) -> torch.Tensor:
    """sum_{t>=0} kappa(t)^2 per head, closed form in float64: (H,)."""
    omega, alpha, phi = omega.double(), alpha.double(), phi.double()
    lam2 = torch.polar(torch.exp(-2 * alpha), 2 * omega)  # lambda^2
    c2 = torch.polar(torch.ones_like(phi), 2 * phi)  # c^2
    return wave_gain(alpha) ** 2 / 2 * (1 / -torch.expm1(-2 * alpha) + (c2 / (1 - lam2)).real)


def dissipation(alpha) -> torch.Tensor:
    """Fraction of a head's wave energy lost per token, 1 - exp(-2 alpha): (H,)."""
    return -torch.expm1(-2 * alpha.double())


def field_energy(model, ids) -> torch.Tensor:
    """sum over heads and channels of |gain * s[t]|^2 per wave layer and position: (L_wave, N)."""
    return torch.stack([f.abs().pow(2).sum((1, 2)) for f in wave_fields(model, ids)])


@torch.no_grad()
def physics_summary(model, ids=None, fft_size=None) -> dict:
    """A compact record for training logs: per wave layer the heads' kernel energy and
    dissipation, and the gap between the FFT and chunked paths (diagnostics.paths; on the
    deposits of ids (N,) when given, fft_size passed through)."""
    heads = [
        {"layer": i, "energy": kernel_energy(m.omega, m.alpha, m.phi).tolist(), "dissipation": dissipation(m.alpha).tolist()} for i, m in wave_mixers(model)
    ]
    check = path_agreement(model, ids, fft_size)
    return {"heads": heads, "path_gap": check["max_gap"], "paths_agree": check["passed"]}
