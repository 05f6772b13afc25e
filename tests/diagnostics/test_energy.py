"""Energy: field energy, and the training summary (energy, dissipation, path agreement, which can fail)."""

import json

import pytest
import torch

from wavefield.diagnostics import field_amplitude, field_energy, head_physics, head_table, physics_summary
from wavefield.diagnostics.flow import mixer_inputs, wave_mixers
from wavefield.ops import propagate_heads


def test_field_energy_matches_the_recurrent_state(trained_run, sample_ids):
    """The last position's field energy equals that of the state the recurrence carries out."""
    _, model, _ = trained_run
    energy, amp = field_energy(model, sample_ids), field_amplitude(model, sample_ids)
    assert energy.shape == (2, len(sample_ids)) and (energy > 0).all() and torch.isfinite(energy).all()
    xs = mixer_inputs(model, sample_ids)
    for k, (i, m) in enumerate(wave_mixers(model)):
        with torch.no_grad():
            u = m.decompose(xs[i][None]).deposits  # (1, H, d, N)
            _, state = propagate_heads(u, m.omega, m.alpha, m.phi, path="recurrent", return_state=True)
        gain = -torch.expm1(-m.alpha.detach())[None, :, None]
        assert energy[k, -1].item() == pytest.approx((gain * state).abs().pow(2).sum().item(), rel=1e-4)
        torch.testing.assert_close(energy[k], amp[k].pow(2).sum(0) * u.shape[2], rtol=1e-4, atol=0)  # d channels a head, d * d for outer deposits


def test_physics_summary_for_training_logs(trained_run, sample_ids):
    _, model, _ = trained_run
    summary = physics_summary(model, sample_ids)
    json.dumps(summary)  # loggable as it is
    table = head_table(head_physics(model))
    assert [e for h in summary["heads"] for e in h["energy"]] == pytest.approx([r["energy"] for r in table])
    assert [e for h in summary["heads"] for e in h["dissipation"]] == pytest.approx([r["dissipation"] for r in table])
    assert summary["paths_agree"] and summary["path_gap"] <= 1e-5
    assert physics_summary(model)["paths_agree"]  # on random deposits, without a sample
    under_padded = physics_summary(model, sample_ids, fft_size=len(sample_ids))  # a circular convolution
    assert not under_padded["paths_agree"] and under_padded["path_gap"] > 1e-3
