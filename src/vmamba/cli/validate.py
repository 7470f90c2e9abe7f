"""Argument checks shared by the ``vmamba`` commands: argparse ``type=`` functions that turn a
bad value into a usage error (exit code 2) naming the flag, the value and what is allowed, and
output-path checks made before any work starts."""
from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
from pathlib import Path


def _number(convert, text: str, kind: str):
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {kind}") from None
    if isinstance(value, float) and math.isnan(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not {kind}")
    return value


def int_range(low: int | None = None, high: int | None = None):
    """An argparse type: an integer in [low, high] (either end may be open-ended)."""
    allowed = (f"an integer from {low} to {high}" if low is not None and high is not None
               else f"an integer >= {low}" if low is not None else f"an integer <= {high}")

    def parse(text: str) -> int:
        value = _number(int, text, "an integer")
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{value} is not allowed; expected {allowed}")
        return value

    parse.__name__ = "integer"
    return parse


def float_range(low: float | None = None, high: float | None = None, low_open: bool = False):
    """An argparse type: a finite number in [low, high] ((low, high] with ``low_open``)."""
    left = f"> {low}" if low_open else f">= {low}"
    allowed = (f"a number {left} and <= {high}" if low is not None and high is not None
               else f"a number {left}" if low is not None else f"a number <= {high}")

    def parse(text: str) -> float:
        value = _number(float, text, "a number")
        bad_low = low is not None and (value <= low if low_open else value < low)
        if bad_low or (high is not None and value > high) or math.isinf(value):
            raise argparse.ArgumentTypeError(f"{value:g} is not allowed; expected {allowed}")
        return value

    parse.__name__ = "number"
    return parse


positive_int = int_range(1)


def device(text: str) -> str:
    """An argparse type: a device this machine has ('cuda' without CUDA is refused); 'auto' gives
    'cuda' when CUDA is available, else 'cpu'."""
    import torch

    from ..train.config import ConfigError, check_device

    try:
        check_device(text)
    except ConfigError as e:  # "--device 'cuda': not allowed; ..." -> "'cuda': not allowed; ..."
        raise argparse.ArgumentTypeError(str(e).split(" ", 1)[1]) from None
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return text


def json_object(text: str) -> dict:
    """An argparse type: a JSON object such as '{"dims": 32}'."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def add_preload(parser) -> None:
    """The ``--preload FILE`` option of the commands that import timm (check it with :func:`check_preload`)."""
    parser.add_argument("--preload", metavar="FILE",
                        help="a Python file executed before timm is imported (a fix-up an installation needs)")


def check_preload(path: str | None) -> None:
    """``--preload``'s file exists (or none was given); :class:`vmamba.cli.UsageError` otherwise."""
    from . import UsageError

    if path and not os.path.isfile(path):
        raise UsageError(f"--preload {path}: no such file")


def check_output_file(path: str | os.PathLike, flag: str) -> Path:
    """Make sure ``path`` can be written (its folder created if needed) before the work that
    produces it; returns it. Raises :class:`vmamba.cli.UsageError` naming ``flag`` and the path."""
    from . import UsageError

    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{flag} {path}: a folder is in the way (expected a file name)")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=parent, prefix=f".{path.name}.", suffix=".probe"):
            pass
    except OSError as e:
        raise UsageError(f"{flag} {path}: cannot write there ({e.strerror or e})") from None
    return path


def check_output_folder(path: str | os.PathLike, flag: str) -> Path:
    """Make sure the folder ``path`` exists (created if needed) and is writable; returns it."""
    from . import UsageError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path}: a file is in the way (expected a folder)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe."):
            pass
    except OSError as e:
        raise UsageError(f"{flag} {path}: cannot write there ({e.strerror or e})") from None
    return path
