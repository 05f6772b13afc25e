"""Faults of the machine, on real processes and real files: SIGKILL at random moments, a
file-size limit (RLIMIT_FSIZE: writes fail with EFBIG), and resuming on another number of
processes. After each, the run folder holds a checkpoint that loads and nothing is lost."""

import hashlib
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from wavefield.checkpoint import load_checkpoint
from wavefield.cli import main

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
CLI = [sys.executable, "-m", "wavefield.cli"]


def snapshot(folder):
    return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def train_losses(out):
    """The train lines of metrics.jsonl; a last line cut short by a kill is skipped."""
    records = []
    for line in (out / "metrics.jsonl").read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return [(r["step"], r["loss"]) for r in records if r["type"] == "train"]


def last_step(out) -> int:
    steps = [s for s, _ in train_losses(out)] if (out / "metrics.jsonl").exists() else []
    return max(steps, default=0)


def file_size_limit(limit_bytes):
    """A preexec_fn: the child may write no file beyond `limit_bytes` (Python ignores SIGXFSZ, so writes fail with EFBIG)."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))


def assert_one_line_error(result, phrase):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert phrase in lines[0], lines[0]


# ---------------------------------------------------------------- SIGKILL


def test_sigkill_at_random_moments_loses_nothing(tmp_path, tiny_flags):
    """Kill `wavefield train` (a checkpoint every step) three times at random moments, resuming
    each time: after every kill a checkpoint loads, and the finished run has the losses and
    the weights of an uninterrupted one, bit for bit."""
    flags = [
        *tiny_flags,
        "--max-steps",
        "60",
        "--decay-steps",
        "60",
        "--warmup-steps",
        "2",
        "--eval-interval",
        "1000",
        "--checkpoint-interval",
        "1",
        "--seed",
        "5",
    ]
    assert main(["train", "--out", str(tmp_path / "whole"), *flags]) == 0
    out, rng, kills = tmp_path / "cut", random.Random(1234), 0
    for _ in range(3):
        resume = ["--resume"] if out.exists() else []
        proc = subprocess.Popen([*CLI, "train", "--out", str(out), *flags, *resume], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        start = last_step(out) if resume else 0
        deadline = time.time() + 60
        while proc.poll() is None and last_step(out) < start + 2 and time.time() < deadline:  # >= 1 new checkpoint written
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.15))
        proc.kill()
        proc.wait()
        assert proc.returncode in (-signal.SIGKILL, 0), proc.stderr.read()[-2000:]
        proc.stderr.close()
        kills += proc.returncode == -signal.SIGKILL
        model, _, state = load_checkpoint(out)  # whatever the moment, a whole checkpoint is there
        assert start < state["step"] <= 60 and model.num_parameters() > 0
    assert kills >= 2  # the runs were really cut short
    result = subprocess.run([*CLI, "train", "--out", str(out), "--resume"], env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert train_losses(out) == train_losses(tmp_path / "whole")
    assert [s for s, _ in train_losses(out)] == list(range(1, 61))
    a, b = load_file(str(tmp_path / "whole" / "checkpoint" / "model.safetensors")), load_file(str(out / "checkpoint" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary folder or file left


def test_sigkill_inside_checkpoint_writes_loses_nothing(tmp_path, tiny_flags):
    """Kill `wavefield train` the moment a checkpoint write is seen under way (its temporary
    folder or .checkpoint.old exists), three times: the half-written checkpoint is left behind
    by the kill itself, a whole one still loads, and the resumed run ends as an uninterrupted one."""
    flags = [
        *tiny_flags,
        "--max-steps",
        "40",
        "--decay-steps",
        "40",
        "--warmup-steps",
        "2",
        "--eval-interval",
        "1000",
        "--checkpoint-interval",
        "1",
        "--seed",
        "6",
    ]
    assert main(["train", "--out", str(tmp_path / "whole"), *flags]) == 0
    out, inside = tmp_path / "cut", 0
    for _ in range(3):
        resume = ["--resume"] if out.exists() else []
        start = last_step(out) if resume else 0
        proc = subprocess.Popen([*CLI, "train", "--out", str(out), *flags, *resume], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while proc.poll() is None and time.time() < deadline:
            if last_step(out) > start + 1 and any(p.name.startswith(".checkpoint.") for p in out.iterdir()):  # after a first whole save
                proc.kill()  # a save in progress, seen from outside
                break
        proc.wait()
        if proc.returncode == -signal.SIGKILL:
            inside += any(p.name.startswith(".checkpoint.") for p in out.iterdir())  # the kill interrupted the write
        model, _, state = load_checkpoint(out)
        assert start <= state["step"] <= 40 and model.num_parameters() > 0
    assert inside >= 2  # most kills really landed inside a checkpoint write
    result = subprocess.run([*CLI, "train", "--out", str(out), "--resume"], env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert train_losses(out) == train_losses(tmp_path / "whole")
    a, b = load_file(str(tmp_path / "whole" / "checkpoint" / "model.safetensors")), load_file(str(out / "checkpoint" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_a_kill_between_the_two_renames_keeps_the_previous_checkpoint(tmp_path, tiny_flags, capsys):
    """The state a SIGKILL between `checkpoint/ -> .checkpoint.old/` and `tmp -> checkpoint/`
    leaves: only .checkpoint.old/ and a temporary folder (plus, from an earlier kill, a
    temporary metrics file). It loads, and --resume continues from it and tidies up."""
    out = tmp_path / "run"
    flags = [*tiny_flags, "--eval-interval", "1000", "--checkpoint-interval", "1"]
    assert main(["train", "--out", str(out), *flags, "--max-steps", "3"]) == 0
    os.rename(out / "checkpoint", out / ".checkpoint.old")
    half = out / ".checkpoint.tmp-killed"
    shutil.copytree(out / ".checkpoint.old", half)
    (half / "model.safetensors").write_bytes((half / "model.safetensors").read_bytes()[:100])
    (out / ".metrics.jsonl.killed.tmp").write_text('{"type": "train", "st')  # a kill inside the rewrite of metrics.jsonl
    assert load_checkpoint(out)[2]["step"] == 3
    assert main(["info", str(out), "--json"]) == 0 and json.loads(capsys.readouterr().out)["config"]["d_model"] == 16
    assert main(["train", "--out", str(out), "--resume", "--max-steps", "5"]) == 0
    assert load_checkpoint(out)[2]["step"] == 5
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


# ---------------------------------------------------------------- a file-size limit (EFBIG)


def test_a_checkpoint_that_cannot_be_written_keeps_the_previous_one(tmp_path, tiny_flags):
    """Resume under a 16 KB file-size limit: metrics fit, the 44 KB model.safetensors does not.
    One line, exit 2, the old checkpoint byte for byte, no temporary litter."""
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *tiny_flags, "--max-steps", "3", "--eval-interval", "1000", "--checkpoint-interval", "1"]) == 0
    before = snapshot(out / "checkpoint")
    result = subprocess.run(
        [*CLI, "train", "--out", str(out), "--resume", "--max-steps", "6"], env=ENV, capture_output=True, text=True, preexec_fn=file_size_limit(16_000)
    )
    assert_one_line_error(result, "File too large")
    assert "model.safetensors" in result.stderr
    assert snapshot(out / "checkpoint") == before
    assert load_checkpoint(out)[2]["step"] == 3
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_a_token_cache_that_cannot_be_written_leaves_no_entry(tmp_path, tiny_flags):
    cache = tmp_path / "cache"
    flags = [*tiny_flags, "--max-steps", "1"]
    flags[flags.index("--cache-dir") + 1] = str(cache)
    result = subprocess.run(
        [*CLI, "train", "--out", str(tmp_path / "run"), *flags], env=ENV, capture_output=True, text=True, preexec_fn=file_size_limit(8_000)
    )  # train.bin is ~200 KB
    assert_one_line_error(result, "File too large")
    assert list(cache.iterdir()) == []  # no partial entry that a later run would trust, no temporary folder
    assert main(["train", "--out", str(tmp_path / "run2"), *flags]) == 0  # the cache fills normally once there is room


def test_save_pretrained_under_a_file_size_limit_raises_efbig_and_keeps_the_old_model(tmp_path):
    code = f"""
import errno, sys
from wavefield import WaveFieldConfig, WaveFieldLM
model = WaveFieldLM(WaveFieldConfig(vocab_size=64, d_model=64, n_layers=2, n_heads=2))
try:
    model.save_pretrained({str(tmp_path)!r})
except OSError as e:
    print(e.errno == errno.EFBIG, e)
    sys.exit(0)
sys.exit(1)
"""
    from wavefield import WaveFieldConfig, WaveFieldLM

    WaveFieldLM(WaveFieldConfig(vocab_size=64, d_model=16, n_layers=2, n_heads=2)).save_pretrained(tmp_path)
    before = snapshot(tmp_path)
    result = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, preexec_fn=file_size_limit(50_000))
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("True") and "could not write" in result.stdout and "model.safetensors" in result.stdout
    assert snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


# ---------------------------------------------------------------- a full disk (ENOSPC)


def on_a_full_disk(tmp_path, size_kb: int, script: str) -> subprocess.CompletedProcess:
    """Run the shell `script` with a real tmpfs of size_kb KB mounted at $DISK, in a mount
    namespace of its own (unshare: no privileges needed, nothing mounted outside it)."""
    if subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare -rm (a private mount namespace) is not available here")
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = f'mount -t tmpfs -o size={size_kb}k tmpfs "$DISK" && '
    return subprocess.run(["unshare", "-rm", "sh", "-c", mount + script], env={**ENV, "DISK": str(disk), "PY": sys.executable}, capture_output=True, text=True)


def test_a_checkpoint_on_a_full_disk_keeps_the_previous_one(tmp_path, tiny_flags):
    """The run folder sits on a disk with room for it and ~60 KB more; the next checkpoint
    (~200 KB) fails with ENOSPC: one line, exit 2, the old checkpoint byte for byte, no litter."""
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *tiny_flags, "--max-steps", "3", "--eval-interval", "1000", "--checkpoint-interval", "1"]) == 0
    size_kb = sum(p.stat().st_size for p in run.rglob("*") if p.is_file()) // 1024 + 60
    result = on_a_full_disk(
        tmp_path,
        size_kb,
        f'cp -a {run} "$DISK/run" && "$PY" -m wavefield.cli train --out "$DISK/run" --resume --max-steps 6; '
        f'echo $? > {tmp_path}/rc; cp -a "$DISK/run" {tmp_path}/after',
    )
    assert (tmp_path / "rc").read_text().strip() == "2", result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "No space left on device" in lines[0] and "Traceback" not in result.stderr, result.stderr[-2000:]
    after = tmp_path / "after"
    assert snapshot(after / "checkpoint") == snapshot(run / "checkpoint")
    assert load_checkpoint(after)[2]["step"] == 3
    assert not [p.name for p in after.iterdir() if p.name.startswith(".")]


def test_a_token_cache_on_a_full_disk_leaves_no_entry(tmp_path, tiny_flags):
    flags = [*tiny_flags, "--max-steps", "1"]
    flags[flags.index("--cache-dir") + 1] = "$DISK/cache"
    result = on_a_full_disk(
        tmp_path, 64, f'"$PY" -m wavefield.cli train --out {tmp_path}/run {" ".join(flags)}; echo $? > {tmp_path}/rc; ls -A "$DISK/cache" > {tmp_path}/left'
    )
    assert (tmp_path / "rc").read_text().strip() == "2", result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "No space left on device" in lines[0], result.stderr[-2000:]
    assert (tmp_path / "left").read_text() == ""  # no partial entry, no temporary folder


# ---------------------------------------------------------------- another number of processes


def test_resume_with_another_world_size_is_refused(tmp_path, tiny_flags, capsys, monkeypatch):
    """torchrun tells each process the world size in WORLD_SIZE; resolve() reads it before any
    process group is made, so a 1-process checkpoint resumed by 2 processes is refused at once."""
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *tiny_flags, "--max-steps", "2"]) == 0
    capsys.readouterr()
    before = snapshot(out)
    for world, rank in (("2", "0"), ("2", "1")):
        monkeypatch.setenv("WORLD_SIZE", world)
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("LOCAL_RANK", rank)
        assert main(["train", "--out", str(out), "--resume", "--max-steps", "4"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "trained with 1 process(es) but this run has 2" in err, err
    monkeypatch.setenv("WORLD_SIZE", "two")
    assert main(["train", "--out", str(out), "--resume"]) == 2
    assert "WORLD_SIZE must be a positive integer" in capsys.readouterr().err
    assert snapshot(out) == before


def test_torchrun_with_two_processes_refuses_a_one_process_checkpoint(tmp_path, tiny_flags):
    """The real launcher: both workers stop in resolve(), before any rendezvous could hang,
    each with the one line (torchrun then reports the failed workers in its own words)."""
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *tiny_flags, "--max-steps", "2"]) == 0
    before = snapshot(out)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "wavefield.cli", "train", "--out", str(out), "--resume"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # a hung launcher: end it and its workers
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0
    assert "trained with 1 process(es) but this run has 2" in output and "exitcode  : 2" in output, output[-3000:]
    assert "wavefield/" not in output.replace(str(out), "")  # no frame of ours in any traceback
    assert snapshot(out) == before


def test_an_export_that_cannot_be_written_leaves_nothing(trained_run, tmp_path):
    """`wavefield export` under a 16 KB file-size limit (its model.safetensors is larger): one line,
    exit 2, no export folder and no temporary folder beside it."""
    pytest.importorskip("transformers")
    parent = tmp_path / "exports"
    parent.mkdir()
    result = subprocess.run(
        [*CLI, "export", str(trained_run), "--out", str(parent / "hf")], env=ENV, capture_output=True, text=True, preexec_fn=file_size_limit(16_000)
    )
    assert_one_line_error(result, "File too large")
    assert list(parent.iterdir()) == []


def test_an_atomic_write_reaches_the_disk_before_its_rename(tmp_path):
    """Traced with strace on a real process: the temporary file is fsynced before it is renamed
    over the destination, and the folder after, so a power cut leaves the old file or the new one."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    target = tmp_path / "out.txt"
    code = f"from wavefield.io import write_text_atomic; write_text_atomic({str(target)!r}, 'new')"
    trace = tmp_path / "trace"
    run = subprocess.run(["strace", "-f", "-o", str(trace), "-e", "trace=openat,fsync,rename,renameat,renameat2", sys.executable, "-c", code], env=ENV)
    if run.returncode != 0 and not target.exists():
        pytest.skip("strace cannot trace here (ptrace not permitted)")
    assert target.read_text() == "new"
    lines = [line for line in trace.read_text().splitlines() if str(tmp_path) in line or "fsync(" in line]
    fds = {}  # fd -> path opened under tmp_path
    events = []
    for line in lines:
        if "openat(" in line and "= " in line and str(tmp_path) in line:
            fd = line.rsplit("= ", 1)[1].split()[0]
            if fd.isdigit():
                fds[fd] = line.split('"')[1]
        elif "fsync(" in line:
            fd = line.split("fsync(", 1)[1].split(")")[0]
            if fd in fds:
                events.append(("fsync", fds[fd]))
        elif "rename" in line and str(target) in line:
            events.append(("rename", str(target)))
    kinds = [kind for kind, _ in events]
    assert "rename" in kinds, lines
    r = kinds.index("rename")
    assert any(kind == "fsync" and Path(p).name.startswith(".out.txt.") for kind, p in events[:r]), events
    assert ("fsync", str(tmp_path)) in events[r + 1 :], events


def test_generate_into_a_pipe_closed_by_its_reader_stops_quietly(trained_run):
    """`wavefield generate RUN | head -c 10`: once the reader has gone, the next write fails with
    EPIPE; the command stops with 128 + SIGPIPE and no traceback, as a program killed by SIGPIPE."""
    argv = [sys.executable, "-m", "wavefield.cli", "generate", str(trained_run), "--max-new-tokens", "100000", "--threads", "1"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    assert len(proc.stdout.read(10)) == 10
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGPIPE and err == b"", err.decode()
