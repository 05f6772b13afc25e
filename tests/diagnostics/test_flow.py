"""Information flow: the effective attention is an exact decomposition, impulse responses and
field amplitudes mean what they say."""

import math

import numpy as np
import pytest
import torch

from wavefield import WaveFieldConfig, WaveFieldLM
from wavefield.diagnostics import effective_attention, field_amplitude, head_physics, head_table, impulse_responses, wavefronts
from wavefield.diagnostics.flow import contributions, mixer_inputs, wave_mixers


def hybrid(**wave):
    torch.manual_seed(1)
    return WaveFieldLM(WaveFieldConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=4, layer_types=["wave", "attention"], **wave)).eval()


@pytest.mark.parametrize("which", ["trained wave", "hybrid", "hybrid without the gate", "hybrid with wave_norm"])
def test_contributions_sum_to_the_mixer_output(trained_run, sample_ids, which):
    model = {
        "trained wave": lambda: trained_run[1],
        "hybrid": hybrid,
        "hybrid without the gate": lambda: hybrid(wave_gate=False),
        "hybrid with wave_norm": lambda: hybrid(wave_norm=True),
    }[which]()
    xs = mixer_inputs(model, sample_ids)
    for block, x in zip(model.blocks, xs):
        with torch.no_grad():
            c = contributions(block.mixer, x)  # (N, N, D)
            out = block.mixer(x[None])[0]
        assert (c.abs().sum(-1).triu(1) == 0).all()  # nothing flows from a later token
        torch.testing.assert_close(c.sum(1), out, rtol=1e-4, atol=1e-5 * out.abs().max().item())


def test_effective_attention_rows_are_shares(trained_run, sample_ids):
    _, model, _ = trained_run
    maps = effective_attention(model, sample_ids, block_rows=16)
    N = len(sample_ids)
    assert maps.shape == (2, N, N) and (maps >= 0).all()
    assert (maps.triu(1) == 0).all()
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, N))
    torch.testing.assert_close(maps, effective_attention(model, sample_ids, block_rows=N))


def test_impulse_responses_follow_the_head_table(trained_run):
    _, model, _ = trained_run
    resp = impulse_responses(model, 300).double().numpy()  # (L, H, 300)
    t = np.arange(300)
    for r in head_table(head_physics(model)):
        expected = -math.expm1(-r["alpha"]) * np.exp(-r["alpha"] * t) * np.cos(r["omega"] * t + r["phi"])
        np.testing.assert_allclose(resp[r["layer"], r["head"]], expected, atol=2e-6)


def test_field_amplitude_starts_at_the_first_deposit(trained_run, sample_ids):
    _, model, _ = trained_run
    amp = field_amplitude(model, sample_ids)  # (L, H, N)
    xs = mixer_inputs(model, sample_ids)
    for k, (i, m) in enumerate(wave_mixers(model)):
        u0 = m.decompose(xs[i][None]).deposits[0, ..., 0].detach()  # (H, d): s[0] = u[0]
        gain = -torch.expm1(-m.alpha.detach())
        torch.testing.assert_close(amp[k, :, 0], gain * u0.pow(2).mean(-1).sqrt(), rtol=1e-4, atol=1e-7)


def test_wavefronts_are_the_damped_wave_of_each_deposit(trained_run, sample_ids):
    """front[t, h, s] = kappa_h(t - s) * |u_h[s]| for s <= t, zero after t; for outer deposits
    kappa_h(t - s) times the match of t's read with s's key, times |v_h[s]|."""
    _, model, _ = trained_run
    assert [m.deposit for _, m in wave_mixers(model)] == ["outer", "channel"]  # the default architecture: both kinds
    fronts = wavefronts(model, sample_ids)  # (T, L * H, N)
    N = len(sample_ids)
    xs = mixer_inputs(model, sample_ids)
    size, match = [], []
    for i, m in wave_mixers(model):
        t = m.decompose(xs[i][None])
        size.append((t.deposits if t.values is None else t.values)[0].detach().norm(dim=1))  # (H, N)
        match.append(torch.ones(m.n_heads, N, N) if t.values is None else torch.einsum("hdt,hds->hts", t.read[0], t.keys[0]).detach())
    size, match = torch.cat(size), torch.cat(match)  # (L * H, N), (L * H, t, s)
    lag = torch.arange(N)[:, None] - torch.arange(N)[None, :]  # (t, s)
    rows = []
    for r in head_table(head_physics(model)):
        kappa = -math.expm1(-r["alpha"]) * torch.exp(-r["alpha"] * lag.double()) * torch.cos(r["omega"] * lag.double() + r["phi"])
        rows.append(torch.where(lag >= 0, kappa, 0.0))
    expected = torch.stack(rows, dim=1) * match.transpose(0, 1).double() * size.double()[None]  # (t, row, s)
    assert fronts.shape == (N, 8, N)
    torch.testing.assert_close(fronts.double(), expected, rtol=1e-4, atol=1e-6)
