"""`wavefield bench speed` end to end at tiny sizes, so that the command never rots. No timing
is asserted: only that every part runs and writes well-formed records, a report and plots."""

import json
import subprocess
import sys

import pytest

from wavefield.bench.speed import mixer_gflops
from wavefield.cli import main


def test_bench_speed_quick_writes_records_report_and_plots(tmp_path):
    out = tmp_path / "bench"
    argv = [
        "bench",
        "speed",
        "--quick",
        "--out",
        str(out),
        "--ops",
        "wave,wave-lean,wave-fft,sdpa,sliding",
        "--lengths",
        "64",
        "--repeats",
        "1",
        "--train-lengths",
        "32",
        "--decode-contexts",
        "8,32",
        "--long-length",
        "300",
        "--threads",
        "1",
    ]
    assert main(argv) == 0
    results = json.loads((out / "speed.json").read_text())
    records = results["records"]
    assert results["environment"]["threads"] == 1
    for rec in records:
        assert {"op", "n", "mode", "seconds", "peak_mb", "skipped"} <= set(rec)
    kinds = {r["kind"] for r in records}
    assert {"copy", "mixer", "floor", "train", "decode", "long"} <= kinds
    mixers = {(r["op"], r["mode"]) for r in records if r["kind"] == "mixer"}
    assert mixers == {(op, mode) for op in ("wave", "wave-fft", "sdpa", "sliding") for mode in ("forward", "backward")} | {("wave-lean", "backward")}
    assert {r["mode"] for r in records if r["kind"] == "floor"} == {"forward", "backward"}
    assert all(r["seconds"] > 0 for r in records if r["kind"] in ("mixer", "train", "decode", "long"))
    decode = {(r["op"], r["n"]): r["state_mb"] for r in records if r["kind"] == "decode"}
    assert decode[("wave-lm", 8)] == decode[("wave-lm", 32)]  # the wave state does not grow
    assert decode[("transformer-lm", 32)] * 9 == pytest.approx(decode[("transformer-lm", 8)] * 33)  # the KV cache grows (prompt + 1)
    report = (out / "speed.md").read_text()
    assert "## Targets" in report and "| 64 |" in report
    for name in ("mixer_time.png", "mixer_memory.png", "decode_latency.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def run_mixers(tmp_path, *args):
    """`bench speed --quick --parts mixer` with args: its mixer records."""
    assert main(["bench", "speed", "--quick", "--out", str(tmp_path), "--parts", "mixer", *args]) == 0
    return [r for r in json.loads((tmp_path / "speed.json").read_text())["records"] if r["kind"] == "mixer"]


def test_the_peer_mixers_run_with_their_flops(tmp_path):
    """mamba2 and conv-sdpa (the quality benchmark's peers) and the wave-outer layer as mixers of their own."""
    mixer = run_mixers(tmp_path, "--ops", "mamba2,conv-sdpa,wave-outer", "--lengths", "64,100", "--repeats", "1", "--threads", "1")
    expected = {(op, n, mode) for op in ("mamba2", "conv-sdpa", "wave-outer") for n in (64, 100) for mode in ("forward", "backward")}
    assert {(r["op"], r["n"], r["mode"]) for r in mixer} == expected
    assert all(r["seconds"] > 0 and r["gflops"] > 0 and not r["skipped"] for r in mixer)
    flops = {(r["op"], r["n"], r["mode"]): r["gflops"] for r in mixer}
    assert flops[("conv-sdpa", 64, "backward")] == pytest.approx(3 * flops[("conv-sdpa", 64, "forward")])
    assert flops[("mamba2", 100, "forward")] > flops[("mamba2", 64, "forward")]


def test_the_chunked_wave_mixers_count_the_chunked_path():
    """wave-lean runs the chunked path and recomputes it in backward (4 passes for 3); wave-outer
    adds its d x d field to the same projections."""
    wave, lean, outer = (mixer_gflops(op, 65536, 256, 8, 1, "backward") for op in ("wave", "wave-lean", "wave-outer"))
    assert lean == pytest.approx(4 / 3 * wave)
    assert wave < outer < 2 * wave


def test_budget_skips_instead_of_running(tmp_path):
    mixer = run_mixers(tmp_path, "--ops", "materialised", "--lengths", "64", "--modes", "forward", "--max-memory-gb", "0.000001")
    assert len(mixer) == 1 and mixer[0]["skipped"] and "GiB" in mixer[0]["reason"] and mixer[0]["seconds"] is None


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--lengths", "12,x"], "--lengths"),
        (["--ops", "flash"], "flash"),
        (["--d-model", "30", "--n-heads", "4"], "--d-model"),
        (["--lengths", "99999999999"], "must be at most 4,194,304"),  # was a 12.8 TB allocation attempt and a traceback
        (["--long-length", "99999999999"], "must be at most 4,194,304"),
        (["--d-model", "1000000000"], "--d-model must be at most"),
        (["--max-seconds", "nan"], "must be > 0"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(tmp_path, args, needle):
    proc = subprocess.run([sys.executable, "-m", "wavefield.cli", "bench", "speed", "--quick", "--out", str(tmp_path), *args], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "speed.json").exists()


def test_targets_list_only_what_the_records_measure():
    from wavefield.bench.report import targets

    def rec(op, n, mode, seconds):
        return {"kind": "mixer", "op": op, "n": n, "mode": mode, "seconds": seconds, "peak_mb": 1.0, "skipped": False}

    records = [rec("wave", 32768, "backward", 1.0), rec("sdpa", 32768, "backward", 11.0)]
    met = {name.split(":")[0]: ok for name, _, ok in targets(records)}
    assert met["b"] is False and "a" not in met and "f" not in met  # 11x < 12x; a and f were not measured
    met = {name.split(":")[0]: ok for name, _, ok in targets(records + [rec("wave", 32768, "forward", 1.0), rec("sdpa", 32768, "forward", 16.0)])}
    assert met["a"] is True
    slow = [rec("wave", 8192, "forward", 1.0), rec("sdpa", 8192, "forward", 2.0)]
    c = {name.split(":")[0]: value for name, value, _ in targets(slow + [rec("mamba2", 8192, "forward", 0.5)])}["c"]
    assert c == 2.0  # a faster mamba2 is no attention peer of target c
