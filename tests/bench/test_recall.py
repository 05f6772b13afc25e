"""MQAR data as Zoology defines it, the answer-only scoring, and the `bench recall` command."""

import dataclasses
import json

import pytest
import torch

from wavefield import WaveFieldLM
from wavefield.bench.recall import IGNORE, RecallTask, answer_logits, mqar, recall_accuracy, recall_config
from wavefield.cli import main


def test_mqar_sequences_hold_pairs_then_queries_answered_by_their_values():
    task = RecallTask(256, 16)
    inputs, targets = mqar(200, task, torch.Generator().manual_seed(0))
    assert inputs.shape == targets.shape == (200, 256)
    P, V = task.n_pairs, task.vocab_size
    for x, y in zip(inputs.tolist(), targets.tolist()):
        keys, values = x[0 : 2 * P : 2], x[1 : 2 * P : 2]
        assert len(set(keys)) == P and all(1 <= k < V // 2 for k in keys)
        assert len(set(values)) == P and all(V // 2 <= v < V for v in values)
        answers = [t for t in range(len(y)) if y[t] != IGNORE]
        assert len(answers) == P and all(t >= 2 * P and (t - 2 * P) % 2 == 0 for t in answers)
        lookup = dict(zip(keys, values))
        assert sorted(x[t] for t in answers) == sorted(keys)  # every key asked exactly once
        assert all(y[t] == lookup[x[t]] for t in answers)  # answered by its own value
        assert all(x[t] == 0 for t in range(2 * P, len(x)) if t not in answers)


def test_query_gaps_follow_a_decaying_power_law():
    inputs, targets = mqar(2000, RecallTask(256, 16), torch.Generator().manual_seed(1))
    gaps = ((targets != IGNORE).nonzero()[:, 1] - 32) // 2
    counts = torch.bincount(gaps, minlength=112).double()
    assert counts[:10].mean() > 2 * counts[50:60].mean() > 0  # near queries are common, far ones occur
    a, b = mqar(5, RecallTask(64, 4), torch.Generator().manual_seed(7)), mqar(5, RecallTask(64, 4), torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # reproducible from the seed


def test_answer_logits_are_the_model_logits_at_the_answers():
    task = RecallTask(32, 4, vocab_size=64)
    model = WaveFieldLM(recall_config("hybrid", task, d_model=16, n_heads=2)).eval()
    inputs, targets = mqar(3, task, torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, answers = answer_logits(model, inputs, targets)
        full = model(inputs)
    mask = targets != IGNORE
    torch.testing.assert_close(logits, full[mask])
    assert torch.equal(answers, targets[mask])
    acc = recall_accuracy(model, inputs, targets)
    assert acc == (full[mask].argmax(-1) == targets[mask]).double().mean().item()


def test_the_model_computes_its_logits_at_chosen_positions_only():
    model = WaveFieldLM(recall_config("hybrid", RecallTask(32, 4, vocab_size=64), d_model=16, n_heads=2)).eval()
    ids = torch.randint(0, 64, (2, 11))
    positions = torch.tensor([[10, 0, 3, 3], [5, 6, 1, 9]])  # any order, repeats allowed
    with torch.no_grad():
        full = model(ids)
        torch.testing.assert_close(model(ids, logits_at=positions), full.gather(1, positions[..., None].expand(-1, -1, 64)))
        assert model(ids, logits_at=positions[:, :0]).shape == (2, 0, 64)
    for bad, needle in [(positions[:1], "batch 2"), (positions.int(), "int64"), (positions + 2, "lie in"), (positions[0], "int64")]:
        with pytest.raises(ValueError, match=needle):
            model(ids, logits_at=bad)
    with pytest.raises(ValueError, match="exclude each other"):
        model(ids, targets=ids, logits_at=positions)


def test_model_kinds_have_the_layers_they_name():
    task = RecallTask(64, 4)
    assert recall_config("wave", task).layer_types == ["wave-outer", "wave"]  # the default architecture
    assert recall_config("wave", task).to_dict() == recall_config("wave", task, wave_norm=False).to_dict()  # with the default's options
    assert recall_config("wave-channel", task).layer_types == ["wave", "wave"]
    assert recall_config("wave", task, layer_types=["wave", "wave-outer"]).layer_types == ["wave", "wave-outer"]  # a candidate
    assert recall_config("transformer", task, layer_types=["wave", "wave-outer"]).layer_types == ["attention", "attention"]
    assert recall_config("wave-outer", task).layer_types == ["wave-outer", "wave-outer"]
    assert recall_config("transformer", task).layer_types == ["attention", "attention"]
    assert recall_config("hybrid", task, n_layers=3).layer_types == ["wave", "wave-outer", "attention"]
    assert recall_config("hybrid", task, n_layers=5).layer_types == ["wave", "wave-outer", "wave", "wave-outer", "attention"]  # the last layer, as before
    assert recall_config("hybrid", task, hybrid_attention=(0,)).layer_types == ["attention", "wave"]
    assert recall_config("conv-transformer", task).layer_types == ["conv-attention", "conv-attention"]
    assert recall_config("mamba2", task).layer_types == ["mamba2", "mamba2"]
    for bad in [(), (0, 1), (2,)]:
        with pytest.raises(ValueError, match="some, not all"):
            recall_config("hybrid", task, hybrid_attention=bad)


def test_bench_recall_command_writes_reports_and_keeps_them(tmp_path, capsys):
    out = tmp_path / "r"
    args = ["bench", "recall", "--quick", "--tasks", "32:4", "--d-model", "16", "--n-heads", "2", "--test-examples", "20", "--threads", "1", "--out", str(out)]
    assert main(args) == 0
    report = json.loads((out / "recall.json").read_text())
    assert [r["model"] for r in report["records"]] == ["wave", "transformer", "hybrid"]
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["task"] == "mqar-32-4" for r in report["records"])
    assert report["records"][0]["wave_options"] == {} and report["records"][0]["layer_types"] == ["wave-outer", "wave"]
    assert "| mqar-32-4 | hybrid | wave-outer+attention |" in (out / "recall.md").read_text()
    before = (out / "recall.json").read_bytes()
    capsys.readouterr()
    assert main(args) == 2  # an earlier report is not replaced without --overwrite
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exists" in err[0]
    assert (out / "recall.json").read_bytes() == before
    assert main(["bench", "recall", "--tasks", "30:8", "--out", str(tmp_path / "x")]) == 2
    assert main(["bench", "recall", "--wave-layer-types", "wave,wave-outer", "--n-layers", "3", "--out", str(tmp_path / "x")]) == 2
    assert main(["bench", "recall", "--wave-layer-types", "wave,bogus", "--out", str(tmp_path / "x")]) == 2
    capsys.readouterr()
    assert main(["bench", "recall", "--models", "wave,transformer", "--hybrid-attention", "0", "--out", str(tmp_path / "x")]) == 2
    assert "no hybrid" in capsys.readouterr().err
    assert main(["bench", "recall", "--device", "nowhere", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


def test_the_peer_kinds_run_through_bench_recall(tmp_path):
    """conv-transformer and mamba2 train and score, without MLPs and without the wave options."""
    from wavefield.bench.recall import QUICK, bench_recall

    budget = dataclasses.replace(QUICK, steps=3, test_examples=8)
    records = bench_recall(
        ["conv-transformer", "mamba2"], [RecallTask(32, 4, vocab_size=64)], budget, d_model=16, n_heads=2, out_dir=tmp_path, log=lambda *_: None
    )
    assert [r["model"] for r in records] == ["conv-transformer", "mamba2"]
    for r in records:
        assert 0.0 <= r["accuracy"] <= 1.0 and r["wave_options"] is None and r["config"]["mlp_ratio"] == 0.0
    assert "| mqar-32-4 | mamba2 | mamba2+mamba2 |" in (tmp_path / "recall.md").read_text()


def test_sequences_to_reads_the_first_point_at_each_threshold():
    from wavefield.bench.recall import sequences_to

    curve = [[32, 0.1], [64, 0.55], [96, 0.5], [128, 0.95]]
    assert sequences_to(curve) == {"0.5": 64, "0.9": 128, "0.99": None}
    assert sequences_to([]) == {"0.5": None, "0.9": None, "0.99": None}


def test_learning_curves_and_the_early_stop(tmp_path):
    from wavefield.bench.recall import RecallBudget, bench_recall

    task = RecallTask(8, 2, vocab_size=16)
    budget = RecallBudget(steps=20, batch_size=8, lrs=(1e-2,), test_examples=40, eval_every=5, curve_examples=30)
    [record] = bench_recall(["wave"], [task], budget, d_model=16, n_heads=2, out_dir=tmp_path, log=lambda *_: None)
    [run] = record["runs"]
    assert [n for n, _ in run["curve"]] == [40, 80, 120, 160] and run["steps"] == 20  # a point every 5 steps of 8
    assert all(0.0 <= acc <= 1.0 for _, acc in run["curve"])
    assert set(run["sequences_to"]) == {"0.5", "0.9", "0.99"}
    assert (tmp_path / "recall_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "sequences to 0.5 / 0.9 / 0.99" in (tmp_path / "recall.md").read_text()
    first = run["curve"][0][1]
    assert first > 0  # the value half of a 16-token vocabulary is guessed right sometimes
    stopped = RecallBudget(**{**budget.__dict__, "stop_at": first})
    [record] = bench_recall(["wave"], [task], stopped, d_model=16, n_heads=2, log=lambda *_: None)
    assert record["runs"][0]["steps"] == 5 and record["runs"][0]["curve"] == run["curve"][:1]  # the same run, stopped at its first point


def test_a_stop_needs_a_curve():
    from wavefield.bench.recall import RecallBudget
    from wavefield.errors import UserError

    with pytest.raises(UserError, match="stop_at"):
        RecallBudget(stop_at=0.99)
    with pytest.raises(UserError, match="stop_at"):
        RecallBudget(eval_every=10, stop_at=1.5)
