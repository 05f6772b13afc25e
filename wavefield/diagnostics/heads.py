"""Every wave head as a physical oscillator: its numbers, its role, and how it moved in training.

A head's kernel is kappa(t) = gain * exp(-alpha t) cos(omega t + phi). Read off it:

    period       2 pi / omega                 tokens per oscillation
    reach_1e     1 / alpha                    distance at which the envelope falls to 1/e
    reach_1pct   ln(100) / alpha              ... and to 1%
    q_factor     omega / (2 alpha)            oscillations that ring before the energy decays
                                              (the quality factor of a damped oscillator)
    reach_moved  reach_1e / its initial value what training did to the head's scale (1: nothing;
                                              None for records without the initial scales)

and a role from reach_1e (the thresholds are LOCAL_MAX and LONG_MIN, in tokens):

    local    reach_1e <  8      a few neighbouring tokens: word pieces, grammar
    medium   8 <= reach_1e < 128   a sentence or a paragraph: context
    long     reach_1e >= 128    far back: long-range memory
"""

import torch

from ..info import head_physics  # noqa: F401  (re-exported: the per-head record diagnostics read)
from ..ops.kernel import period, reach
from .energy import dissipation, kernel_energy

LOCAL_MAX = 8.0
LONG_MIN = 128.0


def head_class(reach_1e: float) -> str:
    if reach_1e < LOCAL_MAX:
        return "local"
    return "medium" if reach_1e < LONG_MIN else "long"


def head_table(params: list[dict]) -> list[dict]:
    """One row per head with its physical figures, from head_physics records (wavefield.info);
    the initial omega and reach, and how far the reach moved, where the record has them."""
    rows = []
    for rec in params:
        omega, alpha, phi = (torch.tensor(rec[k], dtype=torch.float64) for k in ("omega", "alpha", "phi"))
        omega0, alpha0 = (rec.get(k) or [None] * len(omega) for k in ("omega_init", "alpha_init"))
        energy, lost = kernel_energy(omega, alpha, phi), dissipation(alpha)
        reach_1e, reach_1pct = reach(alpha), reach(alpha, 0.01)
        for h in range(len(omega)):
            rows.append(
                {
                    "layer": rec["layer"],
                    "head": h,
                    "omega": omega[h].item(),
                    "alpha": alpha[h].item(),
                    "phi": phi[h].item(),
                    "period": period(omega[h].item()),
                    "reach_1e": reach_1e[h].item(),
                    "reach_1pct": reach_1pct[h].item(),
                    "q_factor": (omega[h] / (2 * alpha[h])).item(),
                    "energy": energy[h].item(),
                    "dissipation": lost[h].item(),
                    "class": head_class(reach_1e[h].item()),
                    "omega_init": omega0[h],
                    "reach_init": 1 / alpha0[h] if alpha0[h] else None,
                    "reach_moved": reach_1e[h].item() * alpha0[h] if alpha0[h] else None,
                }
            )
    return rows
