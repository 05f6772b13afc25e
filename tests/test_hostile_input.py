"""Hostile checkpoints: a config.json, tokenizer.json or model.safetensors that lies. Every one
is one line on stderr and exit 2 through `wavefield info`, `eval` and `generate` (a UserError
in Python), refused before anything big is allocated; and the package never unpickles."""

import ast
import json
import os
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import wavefield
from wavefield import WaveFieldLM
from wavefield.cli import main
from wavefield.errors import UserError


@pytest.fixture
def ckpt(trained_run, tmp_path):
    """A copy of the tiny trained run's checkpoint folder, free to damage."""
    out = tmp_path / "ckpt"
    shutil.copytree(trained_run / "checkpoint", out)
    return out


def refused(capsys, folder, phrase, commands=("info", "eval", "generate")):
    """Each command on `folder` prints one line naming the problem and exits 2."""
    for command in commands:
        argv = [command, str(folder)] + (["--max-new-tokens", "2"] if command == "generate" else ["--max-windows", "1"] if command == "eval" else [])
        code = main(argv)
        err = capsys.readouterr().err.strip()
        assert code == 2, (command, err)
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert phrase in err, (command, err)


def edit_config(ckpt, **changes):
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**config, **changes}))


# ---------------------------------------------------------------- config.json


@pytest.mark.parametrize(
    "text, phrase",
    [
        ("{not json", "is not a valid wavefield config"),
        ("[1, 2, 3]", "must be a JSON object, got list"),
        ('"a string"', "must be a JSON object, got str"),
        ("null", "must be a JSON object, got NoneType"),
        ("[" * 100_000, "is not a valid wavefield config"),
        ('{"config_version": 1, "d_model": 1' + "0" * 5000 + "}", "is not a valid wavefield config"),
    ],
)
def test_config_that_is_not_a_config(ckpt, capsys, text, phrase):
    (ckpt / "config.json").write_text(text)
    refused(capsys, ckpt, phrase)


def test_config_that_is_not_utf8_or_huge(ckpt, capsys):
    (ckpt / "config.json").write_bytes(b"\xff\xfe{}")
    refused(capsys, ckpt, "is not a valid wavefield config", ("info",))
    (ckpt / "config.json").write_bytes(b" " * (2 << 20))
    refused(capsys, ckpt, "not a wavefield config", ("info",))


@pytest.mark.parametrize(
    "changes, phrase",
    [
        ({"d_model": 10**9}, "d_model must be <= 65536"),
        ({"vocab_size": 10**12}, "vocab_size must be <="),
        ({"n_layers": 10**6, "layer_types": None}, "n_layers must be between 1 and 1024"),
        ({"vocab_size": 2**31 - 1, "d_model": 4096, "n_heads": 4}, "more than the 1e+11"),
        ({"d_model": "16"}, "d_model must be an integer"),
        ({"d_model": [16]}, "d_model must be an integer"),
        ({"d_model": None}, "d_model must be an integer"),
        ({"d_model": True}, "d_model must be an integer"),
        ({"d_model": 16.0}, "d_model must be an integer"),
        ({"d_model": -16}, "d_model must be >= 1"),
        ({"n_heads": 0}, "n_heads must be >= 1"),
        ({"mlp_ratio": float("nan")}, "mlp_ratio must be a finite number"),
        ({"reach_max": float("inf")}, "reach_max must be a finite number"),
        ({"rope_base": -1.0}, "rope_base must be > 0"),
        ({"norm_eps": 0}, "norm_eps must be > 0"),
        ({"chunk_size": 10**8}, "chunk_size must be <="),
        ({"layer_types": "wave"}, "layer_types must be a list of strings"),
        ({"layer_types": [1, 2]}, "layer_types must be a list of strings"),
        ({"wave_norm": "yes"}, "wave_norm must be true or false"),
        ({"feature_map": 3}, "feature_map must be a string"),
        ({"dropout": 2.0}, "dropout must be in [0, 1)"),
        ({"surprise": 1}, "unknown config fields: surprise"),
        ({"d_model": 32}, "does not match its config"),  # valid config, but not the weights' shapes
        ({"vocab_size": 10**9}, "does not match its config"),  # 16e9 parameters: allowed by the bound, refused by the file
    ],
)
def test_config_with_hostile_values(ckpt, capsys, changes, phrase):
    edit_config(ckpt, **changes)
    refused(capsys, ckpt, phrase)
    with pytest.raises(UserError, match="config"):
        WaveFieldLM.from_pretrained(ckpt)


def test_a_legit_large_config_is_allowed():
    """The bound leaves room for real large models: a 70B-class shape passes the check (nothing is built)."""
    from wavefield.config import MAX_PARAMETERS, WaveFieldConfig, estimated_parameters

    cfg = WaveFieldConfig(vocab_size=128_000, d_model=8192, n_layers=80, n_heads=64, mlp_ratio=3.5)
    assert 5e10 < estimated_parameters(cfg) <= MAX_PARAMETERS


# ---------------------------------------------------------------- model.safetensors


def header_file(path, header: dict, data: bytes = b"", length=None):
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)


@pytest.mark.parametrize(
    "damage, phrase",
    [
        ("random bytes", "cannot be read"),
        ("empty", "cannot be read"),
        ("header length beyond the file", "cannot be read"),
        ("offsets beyond the file", "cannot be read"),
        ("integer dtype", "expected a floating-point type"),
        ("wrong shape", "has shape [16, 16], the config needs"),
        ("missing tensor", "missing tensors embed.weight"),
        ("extra tensor", "unexpected tensors surprise"),
    ],
)
def test_weights_whose_header_lies(ckpt, capsys, damage, phrase):
    weights = ckpt / "model.safetensors"
    tensors = load_file(str(weights))
    if damage == "random bytes":
        weights.write_bytes(os.urandom(5000))
    elif damage == "empty":
        weights.write_bytes(b"")
    elif damage == "header length beyond the file":
        header_file(weights, {"embed.weight": {"dtype": "F32", "shape": [257, 16], "data_offsets": [0, 16448]}}, length=10**12)
    elif damage == "offsets beyond the file":
        header_file(weights, {"embed.weight": {"dtype": "F32", "shape": [257, 16], "data_offsets": [0, 16448]}}, b"\0" * 64)
    else:
        if damage == "integer dtype":
            tensors["embed.weight"] = tensors["embed.weight"].to(torch.int32)
        elif damage == "wrong shape":
            tensors["embed.weight"] = torch.zeros(16, 16)
        elif damage == "missing tensor":
            del tensors["embed.weight"]
        else:
            tensors["surprise"] = torch.zeros(3)
        save_file(tensors, str(weights))
    refused(capsys, ckpt, phrase)


def test_weights_in_another_float_dtype_still_load(ckpt):
    """A bfloat16 copy of the weights is a legitimate file (save_pretrained of a bf16 model)."""
    tensors = {k: v.to(torch.bfloat16) for k, v in load_file(str(ckpt / "model.safetensors")).items()}
    save_file(tensors, str(ckpt / "model.safetensors"))
    assert WaveFieldLM.from_pretrained(ckpt).embed.weight.dtype == torch.float32


# ---------------------------------------------------------------- tokenizer.json


def tokenizer_json(ckpt):
    return json.loads((ckpt / "tokenizer.json").read_text())


@pytest.mark.parametrize(
    "damage, phrase",
    [
        ("random bytes", "is not a valid tokenizer"),
        ("JSON of another shape", "is not a valid tokenizer"),
        ("a list", "is not a valid tokenizer"),
        ("an id beyond u32", "is not a valid tokenizer"),
        ("an id far beyond the vocabulary", "tokenizer ids are not 0..257"),
        ("no separator", "has no <|endoftext|> token"),
        ("huge", "more than a tokenizer's"),
    ],
)
def test_tokenizer_that_lies(ckpt, capsys, damage, phrase):
    path = ckpt / "tokenizer.json"
    tok = tokenizer_json(ckpt)
    if damage == "random bytes":
        path.write_bytes(os.urandom(3000))
    elif damage == "JSON of another shape":
        path.write_text('{"model": {"type": "Nope"}, "vocab": 12}')
    elif damage == "a list":
        path.write_text("[1, 2, 3]")
    elif damage == "an id beyond u32":
        tok["model"]["vocab"]["zz"] = 10**12
        path.write_text(json.dumps(tok))
    elif damage == "an id far beyond the vocabulary":  # one id at 2^32 - 1: an embedding lookup out of range
        tok["model"]["vocab"]["zz"] = 2**32 - 1
        path.write_text(json.dumps(tok))
    elif damage == "no separator":
        tok["added_tokens"] = []
        path.write_text(json.dumps(tok))
    else:
        with open(path, "wb") as f:  # a sparse file: large on paper, nothing written
            f.truncate((1 << 28) + 1)
    refused(capsys, ckpt, phrase, ("eval", "generate"))


# ---------------------------------------------------------------- no pickle anywhere


def test_the_package_never_unpickles():
    """Checkpoints are JSON and safetensors only: no torch.load, pickle, weights_only=False,
    numpy allow_pickle=True, or numpy.load anywhere in wavefield/."""
    forbidden_modules = {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
    found = []
    for path in Path(wavefield.__file__).parent.rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            where = f"{path.name}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Import):
                found += [where for a in node.names if a.name.split(".")[0] in forbidden_modules]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in forbidden_modules:
                found.append(where)
            elif isinstance(node, ast.ImportFrom) and node.module in ("torch", "numpy") and any(a.name == "load" for a in node.names):
                found.append(where)
            elif isinstance(node, ast.Attribute) and node.attr in ("load", "loads") and isinstance(node.value, (ast.Name, ast.Attribute)):
                base = node.value.id if isinstance(node.value, ast.Name) else node.value.attr
                if base in ("torch", "np", "numpy", "pickle", "joblib"):
                    found.append(where)
            elif isinstance(node, ast.keyword) and node.arg in ("weights_only", "allow_pickle"):
                if not (isinstance(node.value, ast.Constant) and node.value.value is (node.arg == "weights_only")):
                    found.append(where)
    assert found == []


# ---------------------------------------------------------------- train_state.json


@pytest.mark.parametrize(
    "change, phrase",
    [
        (lambda s: [s], "not a valid training state"),
        (lambda s: {**s, "step": "60"}, "wrong type: step"),
        (lambda s: {**s, "step": -1}, "not a valid training state"),
        (lambda s: {**s, "data": [1]}, "wrong type: data"),
        (lambda s: {**s, "data": {}}, "wrong type: data"),
        (lambda s: {**s, "optimizer_param_groups": [1, 2]}, "not a valid training state"),
        (lambda s: {**s, "args": {**s["args"], "seq_len": "32"}}, "the saved arguments seq_len have the wrong type"),
        (lambda s: {**s, "args": {**s["args"], "batch_size": -4}}, "--batch-size must be between 1"),
        (lambda s: {**s, "args": {k: v for k, v in s["args"].items() if k != "lr"}}, "differing: lr"),
        (lambda s: {**s, "args": {**s["args"], "future_flag": 1}}, "differing: future_flag"),
    ],
)
def test_resume_from_a_hostile_train_state(trained_run, tmp_path, capsys, change, phrase):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    path = run / "checkpoint" / "train_state.json"
    path.write_text(json.dumps(change(json.loads(path.read_text()))))
    assert main(["train", "--out", str(run), "--resume", "--max-steps", "61"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and phrase in err, err


@pytest.mark.parametrize(
    "damage, phrase",
    [
        (lambda s: json.dumps({**s, "args": {**s["args"], "seq_len": -5}}).encode(), "--seq-len must be between 1"),
        (lambda s: json.dumps({**s, "args": {**s["args"], "data": 5}}).encode(), "the saved arguments data have the wrong type"),
        (lambda s: json.dumps({**s, "args": {k: v for k, v in s["args"].items() if k != "data"}}).encode(), "differing: data"),
        (lambda s: b"\xff\xfe" + json.dumps(s).encode(), "not a valid training state (UnicodeDecodeError"),
    ],
)
@pytest.mark.parametrize("command", [["eval"], ["eval", "--task", "lambada", "--limit", "1"], ["generate", "--max-new-tokens", "1"]])
def test_every_command_checks_the_saved_training_arguments(trained_run, tmp_path, capsys, damage, phrase, command):
    """eval takes its corpus and window from them: a damaged or foreign train_state.json is one
    line, exit 2, in every command that loads the checkpoint (not a KeyError deep inside)."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    path = run / "checkpoint" / "train_state.json"
    path.write_bytes(damage(json.loads(path.read_text())))
    assert main([command[0], str(run), *command[1:]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and phrase in err, err


def test_info_of_a_head_whose_omega_underflowed(ckpt, capsys):
    """omega = pi * sigmoid(omega_raw) is 0 in float32 for omega_raw = -200: its period is infinite, not a ZeroDivisionError."""
    tensors = load_file(ckpt / "model.safetensors")
    name = next(k for k in tensors if k.endswith("omega_raw"))
    tensors[name][0] = -200.0
    save_file(tensors, ckpt / "model.safetensors")
    assert main(["info", str(ckpt)]) == 0
    assert " inf " in capsys.readouterr().out
