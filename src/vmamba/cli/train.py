"""``vmamba train``: train a VMamba (no arguments: the built-in Fashion-MNIST run).

Every field of :class:`vmamba.train.TrainConfig` is a flag; values come from the preset, then
``--config FILE`` (JSON/TOML), then the flags given. Every value is checked before any work
starts. Multi-GPU / multi-node: launch with ``torchrun --nproc-per-node N -m vmamba train ...``.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import typing

from . import UsageError
from .validate import json_object


def flag_options(kind) -> dict:
    """argparse keyword arguments for a TrainConfig field of type ``kind`` (a real type, not a string)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is bool:
        return dict(action=argparse.BooleanOptionalAction)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return dict(type=args[0], nargs="+", metavar="X")
        return dict(type=args[0], nargs=len(args), metavar=tuple("X" * len(args)) if len(args) > 1 else "X")
    if kind is dict:
        return dict(type=json_object, metavar="JSON")
    if kind in (int, float, str):
        return dict(type=kind)
    raise TypeError(f"no command-line form for a TrainConfig field of type {kind!r}")


def add_parser(sub) -> None:
    from ..train.config import HELP, PRESETS, TrainConfig

    p = sub.add_parser("train", help="train a model (no arguments: small VMamba on built-in Fashion-MNIST)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="default",
                   help="recipe to start from: 'imagenet' is the paper's ImageNet-1K recipe; 'default' "
                        "(= 'fashion-mnist') the small built-in run (default: %(default)s)")
    p.add_argument("--config", metavar="FILE", help="JSON or TOML file of option overrides")
    # Let '--lr -1e-3' reach the value check (argparse < 3.13 takes '-1e-3' for an option).
    p._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
    defaults = PRESETS["default"]
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name == "preset":
            continue
        default = defaults.get(f.name, f.default if f.default is not dataclasses.MISSING else f.default_factory())
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=argparse.SUPPRESS,
                       help=f"{HELP[f.name]} (default preset: {default})", **flag_options(hints[f.name]))
    p.set_defaults(func=run)


def run(args) -> int:
    from ..checkpoint import CheckpointError
    from ..train import DataError, NonFiniteLossError, make_config, train
    from ..train.outdir import OutputError, WriteError

    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "func", "preset", "config")}
    try:
        cfg = make_config(args.preset, args.config, **overrides)
        result = train(cfg)
    except WriteError as e:  # during the run: not a usage error, the last good checkpoint is kept
        print(f"vmamba train: error: {e}; the last complete checkpoint is kept", file=sys.stderr)
        return 1
    except (ValueError, DataError, CheckpointError, FileNotFoundError, OutputError) as e:
        raise UsageError(str(e)) from None
    except NonFiniteLossError as e:
        print(f"vmamba train: {e}")
        return 1
    if result["rank"] == 0 and result.get("acc1") is not None:
        if result["split"] == "test":
            print(f"test accuracy: {result['acc1']:.2f}% (top-1, selected weights, measured once)")
        else:
            print(f"validation accuracy: {result['acc1']:.2f}% (top-1; the data has no test split, so this "
                  f"number also chose the weights)")
    return 0
