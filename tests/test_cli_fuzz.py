"""CLI fuzzing: hypothesis draws argument lists for every subcommand (numbers out of range,
negative, huge, NaN, of the wrong type; missing paths, a file where a folder is expected and
the reverse; unknown flags) and `wavefield` must end with exit code 0, 1 or 2 and no
traceback, in-process through wavefield.cli.main.

Nothing drawn can start a long run: train always ends with `--max-steps` of at most 2 (the
last occurrence of a flag wins), valid sizes are drawn only small, generate decodes at most a
few tokens, and each bench command gets a last argument that it refuses before any work."""

import contextlib
import io
import os
import shutil

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from wavefield.cli import main

FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SMALL_INTS = st.integers(-3, 4).map(str)
HUGE_INTS = st.sampled_from(["1000000000000", str(2**63), str(-(2**63)), "9" * 30])
BAD_TEXT = st.sampled_from(["abc", "", "1.5", "0x10", "1,2", "None", "true", "-", "nan", "1e309", " 3", "\udcff"])
INTS = st.one_of(SMALL_INTS, SMALL_INTS, SMALL_INTS, HUGE_INTS, BAD_TEXT)  # mostly small: a valid value lets the next one be tested
FLOATS = st.one_of(st.sampled_from(["nan", "inf", "-inf", "-1", "0", "1e309", "1e-320", "0.5", "1", "2", "1e12", "0.01", "0.1"]), BAD_TEXT)
PATHS = st.sampled_from(["@missing", "@file", "@empty", "@junk", "@run", "@ckpt", "@file/below", "/dev/null"])
MODELS = st.one_of(st.sampled_from(["@run", "@ckpt"]), PATHS)  # mostly a real checkpoint
DEVICES = st.sampled_from(["cpu", "cuda", "tpu", "auto", "cuda:7", ""])
PROMPTS = st.one_of(st.text(max_size=12), st.just("a\udcffb"))  # a lone surrogate: what undecodable bytes in argv become
UNKNOWN = st.sampled_from(["--bogus", "--max-step", "-x", "--", "--help-me"])


def flags(spec: dict, max_flags: int = 4):
    """A list of --flag value pairs drawn from `spec` {flag: strategy or None (a switch)}, sometimes with an unknown flag."""

    def build(draw):
        argv = []
        for flag in draw(st.lists(st.sampled_from(sorted(spec)), max_size=max_flags, unique=True)):
            argv += [flag] if spec[flag] is None else [flag, draw(spec[flag])]
        if draw(st.integers(0, 9)) == 0:
            argv.insert(draw(st.integers(0, len(argv))), draw(UNKNOWN))
        return argv

    return st.composite(lambda draw: build(draw))()


@pytest.fixture(scope="module")
def places(tmp_path_factory, trained_run):
    """The paths the @names stand for: a copy of the tiny run (commands may write into it), a
    plain file, an empty folder, a folder of junk, and a counter for fresh output folders."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # an hf: corpus fails at once instead of trying the network
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    root = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(trained_run, root / "run")
    (root / "file").write_text("just a file\n")
    (root / "empty").mkdir()
    (root / "junk").mkdir()
    (root / "junk" / "model.safetensors").write_bytes(b"junk")
    (root / "junk" / "config.json").write_text("{}")
    return {"root": root, "count": [0]}


def resolve(argv, places):
    root = places["root"]
    names = {
        "@missing": root / "missing",
        "@file": root / "file",
        "@empty": root / "empty",
        "@junk": root / "junk",
        "@run": root / "run",
        "@ckpt": root / "run" / "checkpoint",
        "@fresh": None,
    }
    out = []
    for a in argv:
        if a == "@fresh":
            places["count"][0] += 1
            a = str(root / f"fresh{places['count'][0]}")
        for name, path in names.items():
            if path is not None and a.startswith(name):
                a = str(path) + a[len(name) :]
        out.append(a)
    return out


def run_cli(argv, places):
    """main(argv) in-process: (exit code, stderr). An exception that escapes main fails the test with its traceback."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(resolve(argv, places))
        except SystemExit as e:  # argparse or a bench command's own usage error
            code = e.code
        finally:
            torch.set_num_threads(1)  # a drawn --threads must not slow the rest of the suite
    return code, err.getvalue()


def check(argv, places):
    code, err = run_cli(argv, places)
    assert code in (0, 1, 2), (argv, code, err[-2000:])
    assert "Traceback" not in err, (argv, err[-2000:])


TRAIN = {
    "--data": st.one_of(PATHS, st.sampled_from(["hf:nope/none", "shakespeare-not", ""])),
    "--tokenizer": st.sampled_from(["bytes", "wordpiece", ""]),
    "--out": st.sampled_from(["@fresh", "@file", "@empty", "@file/below", "@run"]),
    "--seq-len": INTS,
    "--batch-size": INTS,
    "--lr": FLOATS,
    "--min-lr-ratio": FLOATS,
    "--weight-decay": FLOATS,
    "--grad-clip": FLOATS,
    "--seed": INTS,
    "--warmup-steps": INTS,
    "--decay-steps": INTS,
    "--eval-interval": INTS,
    "--eval-windows": INTS,
    "--checkpoint-interval": INTS,
    "--log-interval": INTS,
    "--vocab-size": INTS,
    "--device": DEVICES,
    "--cache-dir": st.sampled_from(["@file", "@file/below", "@fresh"]),
    "--resume": None,
    "--threads": INTS,
    "--d-model": INTS,
    "--n-layers": INTS,
    "--n-heads": INTS,
    "--mlp-ratio": FLOATS,
    "--short-conv": INTS,
    "--chunk-size": INTS,
    "--reach-min": FLOATS,
    "--reach-max": FLOATS,
    "--omega-scale": FLOATS,
    "--rope-base": FLOATS,
    "--dropout": FLOATS,
    "--norm-eps": FLOATS,
    "--init-std": FLOATS,
    "--layer-types": st.sampled_from(["wave,attention", "wave,,", "", "retention"]),
    "--wave-norm": st.sampled_from(["true", "maybe", ""]),
    "--feature-map": st.sampled_from(["silu", "tanh"]),
    "--wave-path": st.sampled_from(["fft", "warp"]),
    "--preset": st.sampled_from(["tiny", "huge"]),
}


@FUZZ
@given(drawn=flags(TRAIN), max_steps=st.sampled_from(["1", "2", "2", "0", "x"]))
@example(drawn=["--n-layers", "1000000000000"], max_steps="1")  # found: a list of 10^12 layer types was built before the bound
def test_train(places, tiny_flags, drawn, max_steps):
    # tiny model flags first (a drawn one overrides them), a fresh --out unless one is drawn, --max-steps last
    check(["train", *tiny_flags, "--out", "@fresh", *drawn, "--max-steps", max_steps], places)


EVAL = {
    "--data": PATHS,
    "--split": st.sampled_from(["val", "test", "train"]),
    "--seq-len": INTS,
    "--batch-size": INTS,
    "--max-windows": INTS,
    "--cache-dir": st.sampled_from(["@file", "@fresh", "@missing"]),
    "--device": DEVICES,
    "--json": None,
    "--task": st.sampled_from(["lm", "mmlu"]),
    "--limit": INTS,
    "--threads": INTS,
}


@FUZZ
@given(path=MODELS, drawn=flags(EVAL))
def test_eval(places, path, drawn):
    check(["eval", path, *drawn], places)


@settings(FUZZ, max_examples=10)
@given(path=MODELS, limit=st.sampled_from(["1", "0", "-1", "x", "nan", str(2**63)]), drawn=flags({"--seq-len": INTS, "--device": DEVICES, "--json": None}, 2))
def test_eval_lambada(places, path, limit, drawn):
    """LAMBADA scores --limit passages (all 5153 without it): the fuzzer always passes one."""
    check(["eval", path, "--task", "lambada", *drawn, "--limit", limit], places)


GENERATE = {
    "--prompt": PROMPTS,
    "--temperature": FLOATS,
    "--top-k": INTS,
    "--top-p": FLOATS,
    "--seed": st.one_of(INTS, st.just(str(2**64))),
    "--device": DEVICES,
    "--threads": INTS,
}


@FUZZ
@example(path="@run", drawn=["--prompt", "a\udcffb"], new_tokens="1")  # found: the tokenizer's TypeError on a lone surrogate
@given(path=MODELS, drawn=flags(GENERATE), new_tokens=st.sampled_from(["0", "1", "3", "-1", "1e3", "x", str(10**7)]))
def test_generate(places, path, drawn, new_tokens):
    check(["generate", path, *drawn, "--max-new-tokens", new_tokens], places)


@FUZZ
@given(path=st.one_of(PATHS, PROMPTS), drawn=flags({"--json": None}))
def test_info(places, path, drawn):
    check(["info", path, *drawn], places)


@settings(FUZZ, max_examples=12)
@given(
    dirs=st.lists(MODELS, min_size=1, max_size=2),
    drawn=flags(
        {
            "--out": st.sampled_from(["@fresh", "@file", "@junk", "@file/below"]),
            "--prompt": PROMPTS,
            "--json": st.sampled_from(["@file", "@empty", "@missing/x.json", "@fresh"]),
        }
    ),
)
@example(dirs=["@run"], drawn=["--prompt", "a\udcffb", "--out", "@fresh"])
def test_diagnose(places, dirs, drawn):
    check(["diagnose", *dirs, *drawn], places)


SPEED = {
    "--ops": st.sampled_from(["wave", "flash", "", "wave,,"]),
    "--lengths": st.sampled_from(["0", "-5", "8,x", ""]),
    "--modes": st.sampled_from(["forward", "sideways"]),
    "--parts": st.sampled_from(["mixer", "gpu"]),
    "--batch": INTS,
    "--repeats": INTS,
    "--threads": INTS,
    "--max-seconds": FLOATS,
    "--max-memory-gb": FLOATS,
    "--long-length": INTS,
    "--decode-contexts": st.sampled_from(["0", "1,2"]),
    "--quick": None,
}


@FUZZ
@given(drawn=flags(SPEED))
def test_bench_speed(places, drawn):
    # last: a d_model that does not split into heads, refused before any benchmark runs
    check(["bench", "speed", "--out", "@fresh", *drawn, "--d-model", "6", "--n-heads", "4"], places)


RECALL = {
    "--models": st.sampled_from(["wave", "rnn", ""]),
    "--tasks": st.sampled_from(["64:4", "64", "x:y", "", "64:4:2"]),
    "--steps": INTS,
    "--batch-size": INTS,
    "--lrs": st.sampled_from(["1e-3", "x", "", "nan"]),
    "--seeds": st.sampled_from(["0", "a", ""]),
    "--test-examples": INTS,
    "--physical-lr-scale": FLOATS,
    "--d-model": INTS,
    "--n-layers": INTS,
    "--n-heads": INTS,
    "--init-std": FLOATS,
    "--hybrid-attention": st.sampled_from(["0", "x", "-1"]),
    "--short-conv": INTS,
    "--omega-scale": FLOATS,
    "--reach": st.sampled_from(["1:10", "x", "1:2:3", ""]),
    "--threads": INTS,
    "--quick": None,
}


@FUZZ
@given(drawn=flags(RECALL))
def test_bench_recall(places, drawn):
    # last: --out is a file, refused before any training
    check(["bench", "recall", *drawn, "--out", "@file"], places)


QUALITY = {
    "--models": st.sampled_from(["wave", "rnn", ""]),
    "--ablations": st.sampled_from(["nope", ""]),
    "--preset": st.sampled_from(["tiny", "huge"]),
    "--steps": INTS,
    "--sweep-steps": INTS,
    "--batch-size": INTS,
    "--seq-len": INTS,
    "--eval-interval": INTS,
    "--eval-windows": INTS,
    "--seed": INTS,
    "--final-windows": st.one_of(INTS, st.just("all")),
    "--lrs": st.sampled_from(["1e-3", "x", ""]),
    "--d-model": INTS,
    "--n-layers": INTS,
    "--n-heads": INTS,
    "--data": PATHS,
    "--vocab-size": INTS,
    "--device": st.sampled_from(["cpu", "tpu"]),
    "--threads": INTS,
    "--quick": None,
}


@FUZZ
@given(drawn=flags(QUALITY))
def test_bench_quality(places, drawn):
    # last: --out is a folder that is not empty, refused before any training
    check(["bench", "quality", *drawn, "--out", "@run"], places)


@settings(FUZZ, max_examples=15)
@given(path=MODELS, out=st.sampled_from(["@fresh", "@file", "@empty", "@run", "@file/below", "@missing/deeper/hf", ""]), drawn=flags({"--bogus": None}, 1))
def test_export(places, path, out, drawn):
    pytest.importorskip("transformers")
    check(["export", path, "--out", out, *drawn], places)


@settings(FUZZ, max_examples=8)
@given(
    path=MODELS,
    tasks=st.sampled_from(["no_such_task", "wavefield_piqa,no_such_task", "", ",", "wavefield_piqa", "../../etc"]),
    drawn=flags({"--lm-eval-out": st.sampled_from(["@fresh", "@file", "@run"]), "--lm-eval-include": PATHS, "--json": None, "--batch-size": INTS}, 2),
)
def test_eval_lm_eval(places, path, tasks, drawn):
    """Always with --limit 1 (the last one wins), so that a task that does run scores one document."""
    pytest.importorskip("lm_eval")
    check(["eval", path, "--lm-eval", tasks, *drawn, "--limit", "1"], places)
