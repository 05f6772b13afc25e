"""Physics diagnostics of wave-field models: heads as oscillators, energy, causality, the
agreement of the propagation paths, and the flow of information through the field. `wavefield.diagnostics.report.diagnose` gathers them
into one report (its figures need the `diagnostics` extra: matplotlib and Pillow)."""

from .causality import causality_audit
from .energy import field_energy, kernel_energy, physics_summary
from .flow import effective_attention, field_amplitude, impulse_responses, wavefronts
from .heads import LOCAL_MAX, LONG_MIN, head_class, head_physics, head_table
from .paths import path_agreement

__all__ = [
    "causality_audit",
    "field_energy",
    "kernel_energy",
    "path_agreement",
    "physics_summary",
    "effective_attention",
    "field_amplitude",
    "impulse_responses",
    "wavefronts",
    "LOCAL_MAX",
    "LONG_MIN",
    "head_class",
    "head_physics",
    "head_table",
]
