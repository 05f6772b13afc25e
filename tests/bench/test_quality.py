"""`bench quality`: matched parameter counts, the shared learning-rate sweep, and the report."""

import json
import os
import subprocess
import sys

import pytest

from wavefield.bench.quality import ABLATIONS, MATCH_TOLERANCE, QUICK, QualityBudget, model_configs, read_curve
from wavefield.checkpoint import load_checkpoint
from wavefield.cli import main
from wavefield.data import load_corpus, prepare_data
from wavefield.evaluate import evaluate_tokens, summarize
from wavefield.model import WaveFieldLM


def test_small_preset_models_are_matched_within_five_percent():
    kinds = ["wave", "transformer", "hybrid", "conv-transformer", "mamba2", "wave-channel", "wave-outer"]
    configs = model_configs([*kinds, *(f"wave-{a}" for a in ABLATIONS)], QualityBudget(), 8192)
    counts = {name: WaveFieldLM(cfg).num_parameters() for name, cfg in configs.items()}
    assert configs["wave"].layer_types == ["wave", "wave-outer", "wave", "wave-outer", "wave"]  # the default architecture
    assert configs["transformer"].layer_types == ["attention"] * 5
    assert configs["hybrid"].layer_types == ["wave", "wave-outer", "wave", "attention", "wave"]
    assert configs["wave-channel"].layer_types == ["wave"] * 5 and configs["wave-outer"].layer_types == ["wave-outer"] * 5
    assert configs["conv-transformer"].layer_types == ["conv-attention"] * 5 and configs["mamba2"].layer_types == ["mamba2"] * 5
    for name in ("transformer", "hybrid", "conv-transformer", "mamba2"):
        assert abs(counts[name] / counts["wave"] - 1) <= MATCH_TOLERANCE
        assert configs[name].mlp_ratio != configs["wave"].mlp_ratio  # matched by the MLP width, not by luck
    assert configs["wave-no-conv"].short_conv == 0 and counts["wave-no-conv"] < counts["wave"]
    assert not configs["wave-no-gate"].wave_gate and counts["wave"] - counts["wave-no-gate"] == 5 * 256 * 256  # one D x D per layer
    assert configs["wave-single-scale"].reach_min == configs["wave-single-scale"].reach_max
    assert configs["wave-frozen"].freeze_physics and counts["wave-frozen"] == counts["wave"]
    assert configs["wave-outer-deposit"].wave_deposit == "outer" and counts["wave-outer-deposit"] == counts["wave"]
    for name in ("wave-channel", "wave-outer"):  # the same projections: matched without an MLP change
        assert counts[name] == counts["wave"]


def test_unknown_model_is_refused():
    with pytest.raises(ValueError, match="unknown model 'mamba'"):
        model_configs(["wave", "mamba"], QualityBudget(), 8192)


def test_the_wave_model_takes_the_layer_types_it_is_given_and_the_others_keep_theirs():
    """--wave-layer-types: a candidate architecture against the same baselines."""
    types = ["wave", "wave-outer", "wave"]
    configs = model_configs(["wave", "transformer", "wave-no-conv"], QualityBudget(preset="tiny"), 8192, {"layer_types": types})
    assert configs["wave"].layer_types == configs["wave-no-conv"].layer_types == types
    assert configs["transformer"].layer_types == ["attention"] * 3


def test_quick_comparison_writes_a_reproducible_report(tmp_path, corpus_dir, cache_dir):
    out = tmp_path / "quality"
    flags = ["--data", str(corpus_dir), "--tokenizer", "bytes", "--cache-dir", str(cache_dir), "--d-model", "16", "--n-layers", "2", "--n-heads", "2"]
    assert main(["bench", "quality", "--quick", *flags, "--ablations", "no-conv", "--final-windows", "all", "--physical-lr-scale", "2", "--out", str(out)]) == 0
    report = json.loads((out / "quality.json").read_text())
    records = {r["model"]: r for r in report["records"]}
    assert list(records) == ["wave", "transformer", "hybrid", "wave-no-conv"]
    budget = report["budget"]
    assert budget["final_windows"] is None  # every window of val and test
    for name, r in records.items():
        assert abs(r["parameters"] / records["wave"]["parameters"] - 1) <= MATCH_TOLERANCE or name.startswith("wave-")
        assert r["sweep_val_loss"][f"{r['best_lr']:g}"] == min(r["sweep_val_loss"].values())  # the sweep kept its best rate
        assert r["tokens"] == budget["steps"] * budget["batch_size"] * budget["seq_len"]
        steps = [p["step"] for p in r["curve"]]
        assert steps[-1] == budget["steps"] and steps == sorted(steps)
        seconds = [p["seconds"] for p in r["curve"]]
        assert all(b > a for a, b in zip(seconds, seconds[1:]))  # the clock runs on across the resume
        for split in ("val", "test"):
            assert 1 < r[split]["ppl"] < 300 and r[split]["bpb"] > 0  # bytes: a uniform guess is 256
    # the reported test loss is the saved checkpoint's
    model, tokenizer, state = load_checkpoint(records["hybrid"]["run_dir"])
    assert state["step"] == budget["steps"] and model.config.layer_types == ["wave-outer", "attention"]
    assert budget["physical_lr_scale"] == state["args"]["physical_lr_scale"] == state["optimizer_param_groups"][2]["lr_scale"] == 2.0
    data = prepare_data(load_corpus(str(corpus_dir)), "bytes", cache_dir=str(cache_dir))
    scored = evaluate_tokens(model, data.tokens["test"], budget["seq_len"], budget["batch_size"], max_windows=budget["final_windows"])
    assert summarize(scored["nll"], scored["tokens"], data.bytes_per_token("test"))["loss"] == pytest.approx(records["hybrid"]["test"]["loss"], rel=1e-5)
    assert read_curve(out / "runs" / "hybrid" / f"lr-{records['hybrid']['best_lr']:g}", budget["batch_size"] * budget["seq_len"]) == records["hybrid"]["curve"]
    table = (out / "quality.md").read_text()
    assert all(f"| {name} |" in table for name in records)
    assert "| wave | OW |" in table and "| hybrid | OA |" in table and "omega, alpha, phi at 2 x the learning rate" in table
    assert "Layers: W wave, O wave-outer, A attention" in table
    assert (out / "quality.png").read_bytes()[:4] == b"\x89PNG"
    # a second comparison never writes into the first one's folder
    assert main(["bench", "quality", "--quick", *flags, "--out", str(out)]) == 2


def test_quick_comparison_of_the_peers(tmp_path, corpus_dir, cache_dir):
    """conv-transformer and mamba2 through `bench quality --models`, matched to the wave model's
    count; --dropout reaches every model and the report says so."""
    out = tmp_path / "peers"
    flags = ["--data", str(corpus_dir), "--tokenizer", "bytes", "--cache-dir", str(cache_dir), "--d-model", "32", "--n-layers", "2", "--n-heads", "2"]
    assert main(["bench", "quality", "--quick", *flags, "--models", "conv-transformer,mamba2", "--lrs", "3e-3", "--dropout", "0.1", "--out", str(out)]) == 0
    records = {r["model"]: r for r in json.loads((out / "quality.json").read_text())["records"]}
    assert list(records) == ["conv-transformer", "mamba2"]
    assert records["conv-transformer"]["layer_types"] == ["conv-attention"] * 2 and records["mamba2"]["layer_types"] == ["mamba2"] * 2
    wave = model_configs(["wave"], QUICK, records["mamba2"]["config"]["vocab_size"], {"d_model": 32, "n_layers": 2, "n_heads": 2})["wave"]
    for r in records.values():
        assert abs(r["parameters"] / WaveFieldLM(wave).num_parameters() - 1) <= MATCH_TOLERANCE
        assert 1 < r["val"]["ppl"] < 300
        assert r["config"]["dropout"] == 0.1
    table = (out / "quality.md").read_text()
    assert "| mamba2 | MM |" in table and "; dropout 0.1." in table


def test_bad_quality_flags(tmp_path, capsys):
    assert main(["bench", "quality", "--steps", "5", "--sweep-steps", "10", "--out", str(tmp_path / "q")]) == 2
    assert "sweep_steps <= steps" in capsys.readouterr().err
    assert main(["bench", "quality", "--ablations", "gating", "--out", str(tmp_path / "q")]) == 2
    assert "unknown model 'wave-gating'" in capsys.readouterr().err
    assert main(["bench", "quality", "--final-windows", "most", "--out", str(tmp_path / "q")]) == 2
    assert "expected a positive number or 'all', got 'most'" in capsys.readouterr().err
    assert main(["bench", "quality", "--dropout", "1.5", "--out", str(tmp_path / "q")]) == 2
    assert "dropout must be in [0, 1), got 1.5" in capsys.readouterr().err
    assert main(["bench", "quality", "--lrs", "1e-3,3e-3", "--finalists", "3", "--out", str(tmp_path / "q")]) == 2
    assert "finalists must lie in [1, 2]" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()


def test_finalists_run_to_the_end_and_the_better_one_is_kept(tmp_path, corpus_dir, cache_dir):
    """--finalists 2: the sweep's two best rates both train the whole budget; the record keeps the
    one with the lower validation loss at the end, and lists both."""
    out = tmp_path / "finals"
    flags = ["--data", str(corpus_dir), "--tokenizer", "bytes", "--cache-dir", str(cache_dir), "--d-model", "16", "--n-layers", "2", "--n-heads", "2"]
    assert main(["bench", "quality", "--quick", *flags, "--models", "transformer", "--lrs", "1e-4,3e-3,1e-2", "--finalists", "2", "--out", str(out)]) == 0
    report = json.loads((out / "quality.json").read_text())
    (r,) = report["records"]
    sweep, final = r["sweep_val_loss"], r["finalist_val_loss"]
    assert len(final) == 2 and set(final) == set(sorted(sweep, key=sweep.get)[:2])  # the two best of the sweep
    assert r["best_lr"] == float(min(final, key=final.get))
    for lr in sweep:  # the finalists ran to the end, the third rate stopped after the sweep
        state = json.loads((out / "runs" / "transformer" / f"lr-{lr}" / "checkpoint" / "train_state.json").read_text())
        assert state["step"] == (report["budget"]["steps"] if lr in final else report["budget"]["sweep_steps"])
    assert r["curve"][-1]["val_loss"] == final[f"{r['best_lr']:g}"]
    assert "the best 2 resumed to the end and the best there kept by validation loss" in (out / "quality.md").read_text()


def test_an_interrupt_stops_the_sweep_instead_of_losing_one_rate(tmp_path, corpus_dir, cache_dir, interrupt_after):
    """SIGINT while the first rate trains: the comparison stops with exit code 130 (and says it
    does not resume); it does not score the rate as diverged and go on to the next."""
    out = tmp_path / "cut"
    flags = ["--data", str(corpus_dir), "--tokenizer", "bytes", "--cache-dir", str(cache_dir), "--d-model", "16", "--n-layers", "2", "--n-heads", "2"]
    budget = [
        "--preset",
        "tiny",
        "--steps",
        "4000",
        "--sweep-steps",
        "2000",
        "--batch-size",
        "2",
        "--seq-len",
        "16",
        "--eval-interval",
        "5",
        "--eval-windows",
        "2",
    ]
    cmd = [sys.executable, "-m", "wavefield.cli", "bench", "quality", *flags, *budget, "--models", "wave", "--lrs", "1e-3,3e-3", "--out", str(out)]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    interrupt_after(proc, out / "runs" / "wave" / "lr-0.001" / "metrics.jsonl", 2)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-500:]
    assert "interrupted at step" in err and "a comparison does not resume" in err.splitlines()[-1]
    assert not (out / "runs" / "wave" / "lr-0.003").exists() and not (out / "quality.json").exists()
