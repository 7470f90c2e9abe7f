"""``vmamba train``: train a VMamba (no arguments: the built-in Fashion-MNIST run).

Every field of :class:`vmamba.train.TrainConfig` is a flag; values come from the preset, then
``--config FILE`` (JSON/TOML), then the flags given. Multi-GPU / multi-node: launch with
``torchrun --nproc-per-node N -m vmamba train ...``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json

from . import UsageError


def _dict(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e}): {text!r}")
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def add_parser(sub) -> None:
    from ..train.config import HELP, PRESETS, TrainConfig

    p = sub.add_parser("train", help="train a model (no arguments: small VMamba on built-in Fashion-MNIST)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="default",
                   help="recipe to start from: 'imagenet' is the paper's ImageNet-1K recipe; 'default' "
                        "(= 'fashion-mnist') the small built-in run (default: %(default)s)")
    p.add_argument("--config", metavar="FILE", help="JSON or TOML file of option overrides")
    defaults = PRESETS["default"]
    for f in dataclasses.fields(TrainConfig):
        if f.name == "preset":
            continue
        flag = "--" + f.name.replace("_", "-")
        default = defaults.get(f.name, f.default if f.default is not dataclasses.MISSING else f.default_factory())
        text = f"{HELP[f.name]} (default preset: {default})"
        kw = dict(dest=f.name, default=argparse.SUPPRESS, help=text)
        if f.type == "bool":
            p.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif f.type == "tuple":
            p.add_argument(flag, type=float, nargs="+", metavar="X", **kw)
        elif f.type == "dict":
            p.add_argument(flag, type=_dict, metavar="JSON", **kw)
        else:
            p.add_argument(flag, type={"int": int, "float": float, "str": str}[f.type], **kw)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..checkpoint import CheckpointError
    from ..train import DataError, NonFiniteLossError, make_config, train

    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "func", "preset", "config")}
    try:
        cfg = make_config(args.preset, args.config, **overrides)
    except (ValueError, OSError) as e:
        raise UsageError(str(e))
    try:
        result = train(cfg)
    except (DataError, CheckpointError, FileNotFoundError) as e:
        raise UsageError(str(e))
    except NonFiniteLossError as e:
        print(f"vmamba train: {e}")
        return 1
    if result["rank"] == 0 and result.get("test_acc1") is not None:
        print(f"test accuracy: {result['test_acc1']:.2f}% (top-1)")
    return 0
