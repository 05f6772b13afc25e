"""Heads as oscillators: figures within their physical ranges, roles, training history."""

import json
import math

import pytest
import torch

from wavefield.diagnostics import LOCAL_MAX, LONG_MIN, head_class, head_physics, head_table, kernel_energy
from wavefield.diagnostics.sources import metrics_history


def test_the_fixture_model_learned(trained_run):
    _, _, records = trained_run
    assert records[-1]["val_loss"] < records[0]["val_loss"] - 1.0, [r["val_loss"] for r in records]


def test_head_figures_within_physical_ranges(trained_run):
    _, model, _ = trained_run
    table = head_table(head_physics(model))
    assert len(table) == model.config.n_layers * model.config.n_heads
    for r in table:
        assert 0 < r["omega"] < math.pi and r["alpha"] > 0
        assert r["period"] > 2  # omega < pi: no head oscillates faster than every other token
        assert r["reach_1e"] == pytest.approx(1 / r["alpha"])
        assert r["reach_1pct"] == pytest.approx(math.log(100) * r["reach_1e"])
        assert r["q_factor"] == pytest.approx(r["omega"] / (2 * r["alpha"]))
        assert 0 < r["energy"] <= math.tanh(r["alpha"] / 2) * (1 + 1e-9)
        assert 0 < r["dissipation"] < 1
        assert r["class"] == head_class(r["reach_1e"])
    # the model spreads its heads over scales: all three roles are present after training
    assert {r["class"] for r in table} == {"local", "medium", "long"}


def test_the_table_shows_what_training_moved(trained_run):
    _, model, _ = trained_run
    fresh = type(model)(model.config)  # the physical parameters start on a fixed grid, not at random
    table, start = head_table(head_physics(model)), head_table(head_physics(fresh))
    for r, r0 in zip(table, start):
        assert r["reach_init"] == pytest.approx(r0["reach_1e"], rel=1e-5) and r["omega_init"] == pytest.approx(r0["omega"], rel=1e-5)
        assert r["reach_moved"] == pytest.approx(r["reach_1e"] / r["reach_init"])
        assert r0["reach_moved"] == pytest.approx(1.0, rel=1e-5)  # untrained: nothing moved
    assert max(abs(r["reach_moved"] - 1) for r in table) > 1e-3  # training did move the reaches
    old = [{k: rec[k] for k in ("layer", "omega", "alpha", "phi")} for rec in head_physics(model)]  # a record from before the initial scales
    assert all(r["reach_moved"] is None and r["reach_init"] is None for r in head_table(old))


def test_role_thresholds():
    assert [head_class(x) for x in (0.5, LOCAL_MAX - 1e-9, LOCAL_MAX, LONG_MIN - 1e-9, LONG_MIN, 1e5)] == ["local", "local", "medium", "medium", "long", "long"]


def test_kernel_energy_closed_form_matches_the_sum():
    g = torch.Generator(torch.get_default_device()).manual_seed(0)
    omega = torch.rand(64, generator=g, dtype=torch.float64) * math.pi
    alpha = 10 ** (torch.rand(64, generator=g, dtype=torch.float64) * 3 - 2.5)  # reach 0.3 .. 300 tokens
    phi = (torch.rand(64, generator=g, dtype=torch.float64) - 0.5) * 8
    t = torch.arange(20000, dtype=torch.float64)
    kappa = -torch.expm1(-alpha)[:, None] * torch.exp(-alpha[:, None] * t) * torch.cos(omega[:, None] * t + phi[:, None])
    torch.testing.assert_close(kernel_energy(omega, alpha, phi), kappa.pow(2).sum(-1), rtol=1e-9, atol=1e-15)


def test_history_from_metrics_shows_the_heads_moving(trained_run):
    run, model, records = trained_run
    history = metrics_history([run])
    assert [h["step"] for h in history] == [r["step"] for r in records]
    first, last = head_table(history[0]["heads"]), head_table(history[-1]["heads"])
    assert last == head_table(head_physics(model))  # the last record is the saved model
    assert max(abs(a["omega"] - b["omega"]) for a, b in zip(first, last)) > 1e-3


def test_history_skips_malformed_records_and_a_line_cut_short(tmp_path):
    rec = {"step": 5, "heads": [{"layer": 0, "omega": [1.0], "alpha": [0.1], "phi": [0.0]}]}
    odd = {"step": 7, "heads": [{"layer": 0, "omega": [1.0, 2.0], "alpha": [0.1]}]}  # not one entry per head
    init = {"step": 8, "heads": [dict(rec["heads"][0], omega_init=[1.0], alpha_init=[0.2])]}
    short = {"step": 10, "heads": [dict(init["heads"][0], alpha_init=[])]}  # an initial scale missing
    words = {"step": 11, "heads": [dict(init["heads"][0], alpha_init=["0.2"])]}
    lines = [json.dumps(r) for r in ({"step": 1, "loss": 3.0}, rec, odd, init, short, words)] + ['{"step": 9, "hea']
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines))
    history = metrics_history([tmp_path])
    assert [h["step"] for h in history] == [5, 8]
    assert [r["reach_moved"] for h in history for r in head_table(h["heads"])] == [None, pytest.approx(2.0)]  # reach 10 from 5
