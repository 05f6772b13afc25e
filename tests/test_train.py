"""Training end to end: the loss falls, resuming reproduces an uninterrupted run, the
checkpoint holds everything, and eval / generate / info work on the result."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from wavefield.checkpoint import load_checkpoint
from wavefield.cli import main
from wavefield.train import TrainArgs, lr_at, make_optimizer, param_groups, set_lr, train


def read_metrics(out, kind="train"):
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["type"] == kind]


def test_training_loss_falls(trained_run):
    losses = [r["loss"] for r in read_metrics(trained_run)]
    assert len(losses) == 60
    assert math.isclose(losses[0], math.log(257), abs_tol=0.1)  # a fresh model guesses uniformly over bytes
    assert sum(losses[-10:]) / 10 < losses[0] - 1.0
    val = read_metrics(trained_run, "val")
    assert [r["step"] for r in val] == [20, 40, 60]
    assert val[-1]["val_loss"] < val[0]["val_loss"]


def test_validation_records_carry_each_heads_physics(trained_run):
    first, last = read_metrics(trained_run, "val")[0], read_metrics(trained_run, "val")[-1]
    assert [h["layer"] for h in last["heads"]] == [0, 1]
    model, _, _ = load_checkpoint(trained_run)
    for h in last["heads"]:
        mixer = model.blocks[h["layer"]].mixer
        assert h["omega"] == pytest.approx(mixer.omega.tolist())
        assert h["alpha"] == pytest.approx(mixer.alpha.tolist())
        assert h["phi"] == pytest.approx(mixer.phi.tolist())
    assert first["heads"][0]["phi"] != last["heads"][0]["phi"]  # the heads moved during training


def test_log_physics_records_energy_and_the_path_agreement(trained_run):
    for record in read_metrics(trained_run, "val"):
        physics = record["physics"]
        assert physics["paths_agree"] and 0 <= physics["path_gap"] <= 1e-5
        assert [h["layer"] for h in physics["heads"]] == [h["layer"] for h in record["heads"]]
        for head in physics["heads"]:
            assert all(e > 0 for e in head["energy"]) and all(0 < d < 1 for d in head["dissipation"])


def test_run_folder_holds_checkpoint_curve_and_no_pickle(trained_run):
    ckpt = trained_run / "checkpoint"
    assert sorted(p.name for p in ckpt.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json", "train_state.json", "train_state.safetensors"]
    state = json.loads((ckpt / "train_state.json").read_text())
    assert state["step"] == 60 and state["args"]["seq_len"] == 32
    tensors = load_file(str(ckpt / "train_state.safetensors"))
    assert "rng.0.cpu" in tensors and any(k.endswith(".exp_avg_sq") for k in tensors)
    assert (trained_run / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(trained_run.glob(".checkpoint*"))  # no temporary folder left behind


def test_schedule_and_weight_decay_groups():
    lrs = [lr_at(s, lr=1.0, warmup_steps=10, decay_steps=110, min_lr_ratio=0.1) for s in range(130)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(x >= y for x, y in zip(lrs[9:], lrs[10:]))  # never rises after warm-up
    assert lrs[110] == pytest.approx(0.1) and lrs[129] == pytest.approx(0.1)
    from wavefield import WaveFieldConfig, WaveFieldLM

    model = WaveFieldLM(WaveFieldConfig(vocab_size=50, d_model=8, n_layers=2, n_heads=2, layer_types=["wave", "attention"]))
    decay, no_decay, physical = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0 and physical["weight_decay"] == 0.0
    skipped = {names[id(p)].split(".")[-1] for p in no_decay["params"] + physical["params"]}
    assert skipped == {"omega_raw", "alpha_raw", "phi", "bias", "weight"}  # weight: the norms' gains
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])


def test_the_physical_parameters_and_only_they_skip_decay_and_take_their_own_rate():
    from wavefield import WaveFieldConfig, WaveFieldLM
    from wavefield.model import physical_parameters

    model = WaveFieldLM(WaveFieldConfig(vocab_size=50, d_model=8, n_layers=3, n_heads=2, layer_types=["wave", "attention", "wave"]))
    waves = [model.blocks[0].mixer, model.blocks[2].mixer]
    marked = [p for m in waves for p in (m.omega_raw, m.alpha_raw, m.phi)]
    assert [id(p) for p in physical_parameters(model)] == [id(p) for p in marked]
    groups = param_groups(model, 0.1, physical_lr_scale=0.25)
    assert [id(p) for p in groups[2]["params"]] == [id(p) for p in marked]
    assert [g["lr_scale"] for g in groups] == [1.0, 1.0, 0.25] and groups[2]["weight_decay"] == 0.0
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())  # each parameter exactly once
    optimizer = make_optimizer(model, lr=0.1, weight_decay=0.1, physical_lr_scale=0.25)
    set_lr(optimizer, 0.02)
    assert [g["lr"] for g in optimizer.param_groups] == [0.02, 0.02, 0.005]


def test_resume_reproduces_the_uninterrupted_run(tmp_path, tiny_flags):
    flags = [*tiny_flags, "--decay-steps", "12", "--warmup-steps", "2", "--eval-interval", "4", "--seed", "3"]
    assert main(["train", "--out", str(tmp_path / "whole"), *flags, "--max-steps", "12"]) == 0
    assert main(["train", "--out", str(tmp_path / "split"), *flags, "--max-steps", "5"]) == 0
    with open(tmp_path / "split" / "metrics.jsonl", "a") as f:  # what a crash after the checkpoint leaves
        f.write('{"type": "train", "step": 6, "loss": 9.9}\n{"type": "tra')
    assert main(["train", "--out", str(tmp_path / "split"), "--resume", "--max-steps", "12"]) == 0
    whole, split = read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "split")
    assert [r["step"] for r in split] == list(range(1, 13))
    assert [r["loss"] for r in split] == [r["loss"] for r in whole]
    a = load_file(str(tmp_path / "whole" / "checkpoint" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "checkpoint" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_interrupt_saves_a_checkpoint_and_resume_continues_identically(tmp_path, tiny_flags, interrupt_after):
    flags = [*tiny_flags, "--max-steps", "100", "--eval-interval", "1000", "--checkpoint-interval", "1000"]
    cmd = [sys.executable, "-m", "wavefield.cli", "train", *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([*cmd, "--out", str(tmp_path / "cut")], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    interrupt_after(proc, tmp_path / "cut" / "metrics.jsonl", 3)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-500:]
    assert "interrupted at step" in err.splitlines()[-1] and "--resume" in err.splitlines()[-1]
    stopped = json.loads((tmp_path / "cut" / "checkpoint" / "train_state.json").read_text())["step"]
    assert 3 <= stopped < 100
    assert subprocess.run([*cmd, "--out", str(tmp_path / "cut"), "--resume"], env=env, capture_output=True).returncode == 0
    assert subprocess.run([*cmd, "--out", str(tmp_path / "whole")], env=env, capture_output=True).returncode == 0
    assert [r["loss"] for r in read_metrics(tmp_path / "cut")] == [r["loss"] for r in read_metrics(tmp_path / "whole")]


def test_eval_reports_perplexity_and_bits_per_byte(trained_run, capsys):
    assert main(["eval", str(trained_run), "--json"]) == 0
    val = json.loads(capsys.readouterr().out)
    assert main(["eval", str(trained_run), "--split", "test", "--json"]) == 0
    test = json.loads(capsys.readouterr().out)
    assert val["split"] == "val" and test["split"] == "test" and val["loss"] != test["loss"]
    assert val["tokens"] == 12000  # one held-out work of 12,000 bytes plus its separator: every token but the first
    assert val["ppl"] == pytest.approx(math.exp(val["loss"]))
    assert val["bpb"] == pytest.approx(val["loss"] / math.log(2) * 12001 / 12000)  # bytes: one token per byte (+ separator)
    assert val["loss"] < math.log(257) - 1.0
    assert main(["eval", str(trained_run), "--split", "train", "--max-windows", "20", "--json"]) == 0
    train = json.loads(capsys.readouterr().out)
    assert train["split"] == "train" and 0 < train["tokens"] <= 20 * 32 and train["loss"] < val["loss"]  # the text it trained on fits better


def test_generate_streams_the_models_own_continuation(trained_run, capsys):
    model, tokenizer, _ = load_checkpoint(trained_run)
    assert main(["generate", str(trained_run), "--prompt", "KING:", "--max-new-tokens", "30", "--temperature", "0"]) == 0
    text = capsys.readouterr().out
    ids = torch.tensor([tokenizer.encode("KING:")])
    expected = tokenizer.decode(model.generate(ids, max_new_tokens=30, temperature=0)[0].tolist())
    assert text == expected + "\n"
    runs = []
    for _ in range(2):
        assert main(["generate", str(trained_run), "--max-new-tokens", "20", "--seed", "7", "--top-k", "20", "--top-p", "0.9"]) == 0
        runs.append(capsys.readouterr().out)
    assert runs[0] == runs[1] and len(runs[0].strip()) > 0


def test_info_shows_counts_config_and_heads(trained_run, capsys):
    assert main(["info", str(trained_run), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    model, _, _ = load_checkpoint(trained_run)
    assert info["parameters"]["total"] == model.num_parameters()
    assert info["config"]["d_model"] == 16
    assert info["heads"][1]["alpha"] == pytest.approx(model.blocks[1].mixer.alpha.tolist())
    assert main(["info", str(trained_run)]) == 0
    text = capsys.readouterr().out
    assert "omega" in text and f"{model.num_parameters():,}" in text
    alpha0 = info["heads"][1]["alpha_init"][0]
    fresh = type(model)(model.config)  # the physical parameters start on a fixed grid, not at random
    assert alpha0 == pytest.approx(fresh.blocks[1].mixer.alpha[0].item()) and f"{alpha0 / info['heads'][1]['alpha'][0]:6.2f}x" in text


@pytest.mark.parametrize("preset, low, high", [("tiny", 0.9e6, 1.5e6), ("small", 5e6, 8e6), ("base", 20e6, 30e6)])
def test_presets_have_their_advertised_sizes(preset, low, high):
    from wavefield import WaveFieldConfig, WaveFieldLM
    from wavefield.train import PRESETS

    n = WaveFieldLM(WaveFieldConfig(vocab_size=8192, **PRESETS[preset]["model"])).num_parameters()
    assert low <= n <= high


def test_frozen_physics_trains_everything_but_omega_alpha_phi(tmp_path, tiny_flags):
    out = tmp_path / "frozen"
    assert main(["train", "--out", str(out), *tiny_flags, "--max-steps", "3", "--freeze-physics", "true"]) == 0
    model, _, _ = load_checkpoint(out / "checkpoint")
    assert model.config.freeze_physics
    fresh = type(model)(model.config)  # the physical parameters start on a fixed grid, not at random
    for name, p in model.named_parameters():
        if name.endswith(("omega_raw", "alpha_raw", "phi")):
            assert not p.requires_grad and torch.equal(p, dict(fresh.named_parameters())[name])
        elif name.endswith("in_proj.weight"):
            assert not torch.equal(p, dict(fresh.named_parameters())[name])  # the rest did train


def test_physical_lr_scale_sets_how_far_omega_alpha_phi_move(tmp_path, tiny_flags, capsys):
    moved = {}
    for scale in ("0", "1", "10"):
        out = tmp_path / scale
        assert main(["train", "--out", str(out), *tiny_flags, "--max-steps", "3", "--physical-lr-scale", scale]) == 0
        model, _, _ = load_checkpoint(out / "checkpoint")
        fresh = dict(type(model)(model.config).named_parameters())
        physics = [n for n, _ in model.named_parameters() if n.endswith(("omega_raw", "alpha_raw", "phi"))]
        moved[scale] = sum((dict(model.named_parameters())[n] - fresh[n]).abs().sum().item() for n in physics)
    assert moved["0"] == 0 < moved["1"] < moved["10"]
    _, _, state = load_checkpoint(tmp_path / "10")
    assert state["args"]["physical_lr_scale"] == 10.0 and state["optimizer_param_groups"][2]["lr_scale"] == 10.0
    capsys.readouterr()
    assert main(["train", "--out", str(tmp_path / "10"), "--resume", "--max-steps", "4", "--physical-lr-scale", "1"]) == 2  # not changeable on resume
    assert "--physical-lr-scale 1.0 differs from the checkpoint's 10.0" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "x"), *tiny_flags, "--physical-lr-scale", "-1"]) == 2
    assert "--physical-lr-scale must lie in [0.0, 1000.0]" in capsys.readouterr().err
    assert train(TrainArgs(**{**state["args"], "physical_lr_scale": 0, "out": str(tmp_path / "int"), "max_steps": 2})) is not None  # from Python, an int
    assert train(TrainArgs(out=str(tmp_path / "int"), resume=True, max_steps=3)) is not None  # saved as 0, resumed as 0.0


def test_a_version_1_checkpoint_resumes_as_the_old_code_continued_it(tmp_path, corpus_dir):
    """tests/fixtures/v1_run: a run of 4 steps saved by wavefield 0.1.0 before the optimizer grew
    its third group (state version 1), with what that code itself gave when resumed to step 8.
    Resumed here, the moments must land on their own parameters: the same losses and weights."""
    import shutil
    from pathlib import Path

    from wavefield.checkpoint import read_state_json

    fixture = Path(__file__).parent / "fixtures" / "v1_run"
    out = tmp_path / "run"
    shutil.copytree(fixture / "checkpoint", out / "checkpoint")
    state_path = out / "checkpoint" / "train_state.json"
    state = json.loads(state_path.read_text())
    assert state["state_version"] == 1 and len(state["optimizer_param_groups"]) == 2
    state["args"].update(data=str(corpus_dir), out=str(out), cache_dir=str(tmp_path / "cache"))  # the run, moved here
    state_path.write_text(json.dumps(state))
    assert read_state_json(out / "checkpoint")["step"] == 4
    assert main(["train", "--out", str(out), "--resume", "--max-steps", "8", "--physical-lr-scale", "2"]) == 2  # it trained at 1
    assert main(["train", "--out", str(out), "--resume", "--max-steps", "8", "--physical-lr-scale", "1"]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["type"] == "train" and r["step"] > 4]
    expected = json.loads((fixture / "step8_losses.json").read_text())["train_losses_5_to_8"]
    assert losses == pytest.approx(expected, rel=1e-6, abs=0)
    ours, theirs = load_file(str(out / "checkpoint" / "model.safetensors")), load_file(str(fixture / "step8_model.safetensors"))
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-6, atol=1e-7, msg=name)
    assert read_state_json(out / "checkpoint")["state_version"] == 2  # saved again in today's layout
