"""The `wavefield` command: thin wrappers over library functions."""

import argparse
import sys

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wavefield", description="Language models built on wave-field attention.")
    parser.add_argument("--version", action="version", version=f"wavefield {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    bench = commands.add_parser("bench", help="benchmarks").add_subparsers(dest="bench", metavar="BENCHMARK", required=True)
    add_recall_parser(bench)
    return parser


def _comma_list(kind):
    def parse(text):
        return tuple(kind(x) for x in text.split(","))

    parse.__name__ = f"comma-separated {kind.__name__}"
    return parse


def add_recall_parser(bench):
    from .bench.recall import QUICK, RECALL_WAVE, RecallBudget

    p = bench.add_parser("recall", help="multi-query associative recall (Zoology MQAR) for wave, transformer and hybrid models")
    p.add_argument("--models", default="wave,transformer,hybrid", help="comma-separated model kinds (default: all three)")
    p.add_argument("--tasks", default="256:16,512:64", help="comma-separated SEQ_LEN:PAIRS (default: 256:16,512:64)")
    p.add_argument("--quick", action="store_true", help=f"smoke-test budget ({QUICK.steps} steps of {QUICK.batch_size})")
    p.add_argument("--steps", type=int, help=f"training steps per run (default {RecallBudget.steps})")
    p.add_argument("--batch-size", type=int, help=f"sequences per step (default {RecallBudget.batch_size})")
    p.add_argument("--lrs", type=_comma_list(float), help=f"comma-separated learning rates, best kept (default {','.join(map(str, RecallBudget.lrs))})")
    p.add_argument("--seeds", type=_comma_list(int), help="comma-separated seeds (default 0)")
    p.add_argument("--test-examples", type=int, help=f"test sequences per task (default {RecallBudget.test_examples})")
    p.add_argument("--physical-lr-scale", type=float, help="learning rate of omega, alpha, phi relative to the rest (default 1)")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--init-std", type=float, help="weight init std of every model (default d_model^-0.5)")
    p.add_argument("--deposit", choices=["channel", "outer"], default=RECALL_WAVE["wave_deposit"], help="wave deposit (default %(default)s)")
    p.add_argument("--norm", action=argparse.BooleanOptionalAction, default=RECALL_WAVE["wave_norm"], help="per-head RMS norm of the wave read-out")
    p.add_argument("--short-conv", type=int, default=RECALL_WAVE["short_conv"], help="short conv kernel size, 0 for none (default %(default)s)")
    p.add_argument("--feature-map", choices=["identity", "silu", "elu1"], default=RECALL_WAVE["feature_map"])
    p.add_argument("--omega-scale", type=float, default=RECALL_WAVE["omega_scale"], help="initial frequencies times this (default %(default)s)")
    p.add_argument("--reach", default=f"{RECALL_WAVE['reach_min']:g}:{RECALL_WAVE['reach_max']:g}", help="initial reach range MIN:MAX in tokens (default %(default)s)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="torch device to train on, e.g. cuda (default %(default)s)")
    p.add_argument("--out", default="runs/recall", help="folder for recall.json and recall.md (default %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier report in --out")


def run_recall(args) -> int:
    import dataclasses
    from pathlib import Path

    import torch

    from .bench.recall import QUICK, RecallBudget, RecallTask, bench_recall

    try:
        tasks = [[int(x) for x in t.split(":")] for t in args.tasks.split(",")]
        reach = [float(x) for x in args.reach.split(":")]
    except ValueError:
        raise ValueError("--tasks wants SEQ_LEN:PAIRS pairs such as 256:16, --reach MIN:MAX such as 16:1024") from None
    if any(len(t) != 2 for t in tasks) or len(reach) != 2:
        raise ValueError("--tasks wants SEQ_LEN:PAIRS pairs such as 256:16, --reach MIN:MAX such as 16:1024")
    tasks = [RecallTask(*t) for t in tasks]
    given = {"steps": args.steps, "batch_size": args.batch_size, "test_examples": args.test_examples, "physical_lr_scale": args.physical_lr_scale,
             "lrs": args.lrs, "seeds": args.seeds}
    budget = dataclasses.replace(QUICK if args.quick else RecallBudget(), **{k: v for k, v in given.items() if v is not None})
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    if (out / "recall.json").exists() and not args.overwrite:
        raise ValueError(f"{out / 'recall.json'} exists; pass --overwrite to replace it or choose another --out")
    wave = {"wave_deposit": args.deposit, "wave_norm": args.norm, "short_conv": args.short_conv, "feature_map": args.feature_map,
            "omega_scale": args.omega_scale, "reach_min": reach[0], "reach_max": reach[1]}
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise ValueError(f"--device {args.device!r} is not a torch device") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available here")
    if args.threads:
        torch.set_num_threads(args.threads)
    bench_recall(args.models.split(","), tasks, budget, wave, args.d_model, args.n_layers, args.n_heads, args.init_std, out_dir=out, device=args.device)
    print(f"wrote {out / 'recall.json'} and {out / 'recall.md'}")
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        if args.command == "bench" and args.bench == "recall":
            return run_recall(args)
    except ValueError as e:
        print(f"wavefield: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
