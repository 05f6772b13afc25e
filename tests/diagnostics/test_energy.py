"""Energy: Parseval on the FFT path (and that the check can fail), field energy, training summary."""

import json

import pytest
import torch

from wavefield.diagnostics import field_amplitude, field_energy, head_physics, head_table, parseval_check, physics_summary
from wavefield.diagnostics.energy import parseval_error, spectral_energy
from wavefield.diagnostics.flow import mixer_inputs, wave_deposits, wave_mixers
from wavefield.ops import propagate


@pytest.mark.parametrize("n", [100, 101])  # even and odd FFT lengths: Nyquist bin or none
def test_spectral_energy_equals_the_full_spectrum(n):
    x = torch.randn(3, 70, dtype=torch.float64)
    full = torch.fft.fft(x, n=n).abs().pow(2).sum(-1) / n
    torch.testing.assert_close(spectral_energy(torch.fft.rfft(x, n=n), n), full)


def test_parseval_check_passes_on_trained_weights(trained_run, sample_ids):
    _, model, _ = trained_run
    check = parseval_check(model, sample_ids)
    assert check["passed"] and check["max_error"] <= 1e-5
    assert len(check["layers"]) == 2 and all(r["field_error"] is not None for r in check["layers"])


def test_parseval_check_fails_when_the_fft_truncates():
    x = torch.randn(4, 100)
    assert parseval_error(x, torch.fft.rfft(x, n=128), 128) < 1e-5
    assert parseval_error(x, torch.fft.rfft(x, n=64), 64) > 1e-2  # an FFT too short drops energy


def test_field_energy_matches_the_recurrent_state(trained_run, sample_ids):
    """The last position's field energy equals that of the state the recurrence carries out."""
    _, model, _ = trained_run
    energy, amp = field_energy(model, sample_ids), field_amplitude(model, sample_ids)
    assert energy.shape == (2, len(sample_ids)) and (energy > 0).all() and torch.isfinite(energy).all()
    xs = mixer_inputs(model, sample_ids)
    for k, (i, m) in enumerate(wave_mixers(model)):
        u = wave_deposits(m, xs[i])[0][None]
        with torch.no_grad():
            _, state = propagate(u, m.omega, m.alpha, m.phi, path="recurrent", return_state=True)
        gain = -torch.expm1(-m.alpha.detach())[None, :, None]
        assert energy[k, -1].item() == pytest.approx((gain * state).abs().pow(2).sum().item(), rel=1e-4)
        torch.testing.assert_close(energy[k], amp[k].pow(2).sum(0) * m.head_dim, rtol=1e-4, atol=0)


def test_physics_summary_for_training_logs(trained_run, sample_ids):
    _, model, _ = trained_run
    summary = physics_summary(model, sample_ids)
    json.dumps(summary)  # loggable as it is
    table = head_table(head_physics(model))
    assert [e for h in summary["heads"] for e in h["energy"]] == pytest.approx([r["energy"] for r in table])
    assert [e for h in summary["heads"] for e in h["dissipation"]] == pytest.approx([r["dissipation"] for r in table])
    assert summary["parseval_passed"] and summary["parseval_error"] <= 1e-5
    assert physics_summary(model)["parseval_passed"]  # kernels only, without a sample
