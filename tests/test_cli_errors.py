"""Bad input: one line on stderr naming the problem, exit code 2, no file overwritten."""

import hashlib
import json
import shutil
import subprocess
import sys

import pytest
from safetensors.torch import load_file, save_file

from wavefield.cli import main


def snapshot(folder):
    return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def fails(argv, capsys, phrase):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert phrase in err, err
    return err


@pytest.fixture
def run_copy(trained_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained_run, out)
    return out


@pytest.mark.parametrize(
    "content, phrase",
    [
        (None, "no such file"),
        (b"", "is empty"),
        (b"  \n\n", "is empty"),
        (b"PK\x03\x04\x00\x00\x08\x00binary", "binary"),
        (b"caf\xe9 latin-1 text", "not UTF-8"),
        (b"To be, or not to be.", "too small"),
    ],
)
def test_bad_corpus(tmp_path, tiny_flags, capsys, content, phrase):
    data = tmp_path / "corpus.txt"
    if content is not None:
        data.write_bytes(content)
    flags = [f for f in tiny_flags]
    flags[flags.index("--data") + 1] = str(data)
    fails(["train", "--out", str(tmp_path / "out"), *flags, "--max-steps", "2"], capsys, phrase)
    assert not (tmp_path / "out" / "checkpoint").exists()


@pytest.mark.parametrize(
    "flags, phrase",
    [
        (["--preset", "huge"], "invalid choice: 'huge'"),
        (["--layer-types", "wave,retention"], "layer_types entries must be one of"),
        (["--max-steps", "-5"], "--max-steps must be between 1"),
        (["--seq-len", "0"], "--seq-len must be between 1"),
        (["--batch-size", "100000000"], "--batch-size must be between 1"),
        (["--lr", "1e9"], "--lr must lie in"),
        (["--lr", "nan"], "--lr must lie in"),
        (["--warmup-steps", "-1"], "--warmup-steps must be >= 0"),
        (["--d-model", "10", "--n-heads", "4"], "must be divisible by n_heads"),
        (["--max-steps", "many"], "invalid int value: 'many'"),
        (["--wave-norm", "maybe"], "expected true or false"),
        (["--wave-deposit", "matrix"], "wave_deposit must be one of"),
    ],
)
def test_bad_train_flags(tmp_path, tiny_flags, capsys, flags, phrase):
    fails(["train", "--out", str(tmp_path / "out"), *tiny_flags, *flags], capsys, phrase)
    assert not (tmp_path / "out").exists()


def test_existing_run_is_never_overwritten(run_copy, tiny_flags, capsys):
    before = snapshot(run_copy)
    fails(["train", "--out", str(run_copy), *tiny_flags, "--max-steps", "2"], capsys, "already exists and is not empty")
    assert snapshot(run_copy) == before


def test_resume_with_another_config(run_copy, capsys):
    before = snapshot(run_copy)
    fails(["train", "--out", str(run_copy), "--resume", "--d-model", "32"], capsys, "d_model=32 differs from the checkpoint's d_model=16")
    fails(["train", "--out", str(run_copy), "--resume", "--seq-len", "64"], capsys, "--seq-len 64 differs from the checkpoint's 32")
    assert snapshot(run_copy) == before


def test_resume_without_a_checkpoint(tmp_path, capsys):
    fails(["train", "--out", str(tmp_path), "--resume"], capsys, "holds no checkpoint to resume")


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(run_copy, capsys):
    weights = run_copy / "checkpoint" / "model.safetensors"
    tensors = load_file(str(weights))
    tensors["blocks.0.mlp.up.weight"][0, 0] = float("inf")  # the kind of value a diverging run produces
    save_file(tensors, str(weights), metadata={"format": "pt"})
    before = snapshot(run_copy)
    fails(["train", "--out", str(run_copy), "--resume", "--max-steps", "70"], capsys, "at step 61; stopped: the last good checkpoint (step 60) is kept")
    after = snapshot(run_copy)
    assert all(after[k] == v for k, v in before.items())  # new TensorBoard event files aside, nothing changed


@pytest.mark.parametrize("command", ["eval", "generate", "info"])
def test_missing_checkpoint(tmp_path, capsys, command):
    fails([command, str(tmp_path / "nowhere")], capsys, "no such folder")


@pytest.mark.parametrize("command", ["eval", "generate", "info"])
def test_truncated_checkpoint(run_copy, capsys, command):
    weights = run_copy / "checkpoint" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    fails([command, str(run_copy)], capsys, "truncated or corrupt")


def test_checkpoint_from_another_version(run_copy, capsys):
    config = run_copy / "checkpoint" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "config_version": 99}))
    fails(["eval", str(run_copy)], capsys, "config version 99 is not supported")
    state = run_copy / "checkpoint" / "train_state.json"
    state.write_text(state.read_text()[:50])
    fails(["train", "--out", str(run_copy), "--resume"], capsys, "is not a valid training state")


def test_truncated_tokenizer(run_copy, capsys):
    tok = run_copy / "checkpoint" / "tokenizer.json"
    tok.write_text(tok.read_text()[:100])
    fails(["generate", str(run_copy)], capsys, "is not a valid tokenizer")


@pytest.mark.parametrize(
    "flags, phrase",
    [
        (["--temperature", "-1"], "--temperature must be between 0"),
        (["--top-p", "1.5"], "--top-p must lie in (0, 1]"),
        (["--top-k", "0"], "--top-k must be >= 1"),
        (["--max-new-tokens", "-3"], "--max-new-tokens must be between 0"),
    ],
)
def test_bad_generate_flags(trained_run, capsys, flags, phrase):
    fails(["generate", str(trained_run), *flags], capsys, phrase)


def test_bad_eval_flags(trained_run, capsys):
    fails(["eval", str(trained_run), "--seq-len", "0"], capsys, "--seq-len must be between 1")
    fails(["eval", str(trained_run), "--split", "dev"], capsys, "invalid choice: 'dev'")


def test_the_installed_command_prints_one_line(tmp_path):
    """The console entry point itself: exit 2, one line, no traceback."""
    result = subprocess.run([sys.executable, "-m", "wavefield.cli", "eval", str(tmp_path / "nowhere")], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"wavefield eval: error: {tmp_path / 'nowhere'}: no such folder"]


def test_info_on_a_model_without_mlps(tmp_path, capsys):
    from wavefield import WaveFieldConfig, WaveFieldLM

    WaveFieldLM(WaveFieldConfig(vocab_size=64, d_model=16, n_layers=2, n_heads=2, mlp_ratio=0)).save_pretrained(tmp_path)
    assert main(["info", str(tmp_path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [layer["mlp"] for layer in info["parameters"]["layers"]] == [0, 0]
    assert all(layer["norms"] == 16 for layer in info["parameters"]["layers"])  # norm1 only


def test_a_bug_keeps_its_traceback(trained_run, monkeypatch):
    """Only user errors (UserError, or an OSError of the machine) become one line and exit 2: a
    ValueError or OSError raised by a bug inside the library propagates with its traceback."""
    import errno

    import wavefield.info

    for bug in (ValueError("a bug deep inside"), OSError(errno.EIO, "an I/O bug")):

        def broken(model, bug=bug):
            raise bug

        monkeypatch.setattr(wavefield.info, "describe", broken)
        with pytest.raises(type(bug)):
            main(["info", str(trained_run)])


def test_a_full_disk_is_one_line(trained_run, tmp_path, capsys, monkeypatch):
    """An OSError of the user's machine (here a real ENOSPC from /dev/full) is one line and exit 2."""
    import wavefield.info

    def write_to_full_disk(model):
        with open("/dev/full", "w") as f:
            f.write("x" * 10000)
            f.flush()

    monkeypatch.setattr(wavefield.info, "describe", write_to_full_disk)
    fails(["info", str(trained_run)], capsys, "No space left on device")
