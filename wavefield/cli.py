"""The `wavefield` command: thin wrappers over library functions."""

import argparse
import sys

from . import __version__
from .bench import speed


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wavefield", description="Language models built on wave-field attention.")
    parser.add_argument("--version", action="version", version=f"wavefield {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    speed.add_cli(commands)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
