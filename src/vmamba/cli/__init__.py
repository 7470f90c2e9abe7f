"""The ``vmamba`` command line: one subcommand per module in this package.

Each command module defines ``add_parser(subparsers)``, which adds its subparser and sets
``func`` (called with the parsed arguments, returning an exit code). Modules are imported only
when the command line is parsed, so ``import vmamba`` stays light.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# Subcommand modules, in the order ``vmamba --help`` lists them.
COMMANDS = ["demo", "models", "train", "evaluate", "predict", "export", "flops", "bench", "erf", "scaling", "dense", "peers",
            "study"]


class UsageError(Exception):
    """A bad argument value found after parsing: reported as a usage error, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (all subcommands)."""
    parser = argparse.ArgumentParser(
        prog="vmamba", description="VMamba, the Visual State Space Model: models, training, analyses.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vmamba`` console script and ``python -m vmamba``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except UsageError as e:
        parser.exit(2, f"vmamba {args.command}: error: {e}\n")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
