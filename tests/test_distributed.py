"""torchrun with two CPU processes (gloo): DistributedDataParallel keeps the ranks identical."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file


def launch(cmd, timeout=300):
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:  # a hung rendezvous: end the launcher and both workers
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, err[-2000:]


def test_two_process_torchrun_keeps_identical_weights(tmp_path, corpus_dir, cache_dir):
    out, dump = tmp_path / "run", tmp_path / "dump"
    dump.mkdir()
    worker = Path(__file__).with_name("ddp_worker.py")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(worker),
        str(out),
        str(corpus_dir),
        str(cache_dir),
        str(dump),
    ]
    launch(cmd)
    rank0, rank1 = load_file(str(dump / "rank0.safetensors")), load_file(str(dump / "rank1.safetensors"))
    saved = load_file(str(out / "checkpoint" / "model.safetensors"))
    assert rank0.keys() == rank1.keys() == saved.keys()
    assert all(torch.equal(rank0[k], rank1[k]) and torch.equal(rank0[k], saved[k]) for k in rank0)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["type"] == "train"] == [1, 2, 3, 4, 5, 6]  # one writer
    state = json.loads((out / "checkpoint" / "train_state.json").read_text())
    assert state["data"]["world_size"] == 2 and state["step"] == 6


def torchrun_train(args):
    """`wavefield train` itself, unchanged, under torchrun."""
    launch([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "wavefield.cli", "train", *args])


def test_two_process_resume_with_dropout_reproduces_the_uninterrupted_run(tmp_path, tiny_flags):
    """Each rank's own random state (dropout masks) is saved and restored."""
    flags = [*tiny_flags, "--eval-interval", "3", "--decay-steps", "8", "--warmup-steps", "1", "--dropout", "0.2"]
    torchrun_train(["--out", str(tmp_path / "whole"), *flags, "--max-steps", "8"])
    torchrun_train(["--out", str(tmp_path / "split"), *flags, "--max-steps", "4"])
    torchrun_train(["--out", str(tmp_path / "split"), "--resume", "--max-steps", "8"])
    losses = [
        [json.loads(line)["loss"] for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines() if '"train"' in line] for run in ("whole", "split")
    ]
    assert len(losses[0]) == 8 and losses[0] == losses[1]
