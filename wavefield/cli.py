"""The `wavefield` command: thin wrappers over library functions."""

import argparse
import sys

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wavefield", description="Language models built on wave-field attention.")
    parser.add_argument("--version", action="version", version=f"wavefield {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    diag = commands.add_parser("diagnose", help="physics diagnostics of a model: heads, energy, causality, information flow")
    diag.add_argument("dirs", nargs="+", metavar="DIR", help="model folder(s), or a run folder of checkpoints (the last model is diagnosed)")
    diag.add_argument("--out", help="folder for the report, figures and JSON (default DIR/diagnostics)")
    diag.add_argument("--prompt", help="text whose information flow is traced (default: a line of Hamlet)")
    diag.add_argument("--json", help="also write the JSON of every figure to this file")
    return parser


def run_diagnose(args) -> int:
    """Exit 0 when the Parseval check and the causality audit pass, 1 when one fails, 2 on bad input."""
    try:
        from .diagnostics.report import diagnose

        report = diagnose(args.dirs, out=args.out, prompt=args.prompt, json_path=args.json)
    except ImportError as e:
        print(f"wavefield diagnose: error: needs matplotlib and Pillow ({e}); pip install 'wavefield[diagnostics]'", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"wavefield diagnose: error: {e}", file=sys.stderr)
        return 2
    verdict = lambda ok: "PASS" if ok else "FAIL"  # noqa: E731
    print(f"heads: {len(report['heads'])}, prompt: {len(report['prompt']['ids'])} tokens ({report['prompt']['tokenizer']})")
    if report["parseval"]["layers"]:
        print(f"Parseval check: {verdict(report['parseval']['passed'])} (largest gap {report['parseval']['max_error']:.2e})")
    print(f"causality audit: {verdict(report['causality']['passed'])} (largest relative change before j {report['causality']['max_relative']:.2e})")
    print(f"report: {report['outputs']['html']}")
    return 0 if report["parseval"]["passed"] and report["causality"]["passed"] else 1


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "diagnose":
        return run_diagnose(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
