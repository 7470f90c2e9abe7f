"""``vmamba predict``: the top-k classes of image files."""
from __future__ import annotations

import argparse
import os
import sys

from . import UsageError
from .validate import device, positive_int


def add_parser(sub) -> None:
    p = sub.add_parser("predict", help="top-k classes of image files", description=__doc__)
    p.add_argument("checkpoint", metavar="SOURCE",
                   help="a published model (NAME or NAME.TAG, see `vmamba models`), a training checkpoint (.pt), "
                   "exported .safetensors, a save_pretrained folder, the authors' .pth (with --model) or a URL")
    p.add_argument("images", nargs="+", help="image files (any format Pillow reads)")
    p.add_argument("--topk", type=positive_int, default=5, help="classes to show per image (default: %(default)s)")
    p.add_argument("--model", help="architecture, for checkpoints that store no config (the authors')")
    p.add_argument("--img-size", type=positive_int, help="input resolution (default: the training one)")
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None,
                   help="use the EMA weights (default: when present)")
    p.add_argument("--device", type=device, default="cpu", help="cpu, cuda, cuda:N, ... (default: %(default)s)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..checkpoint import CheckpointError
    from ..train import DataError, predict

    if os.sep in args.checkpoint and not os.path.exists(args.checkpoint):  # fail before reading any image
        raise UsageError(f"{args.checkpoint}: no such file or folder")
    images = readable_images(args.images)
    if not images:
        raise UsageError(f"none of the {len(args.images)} image file(s) could be read")
    try:
        results = predict(args.checkpoint, images, topk=args.topk, model=args.model, img_size=args.img_size,
                          use_ema=args.ema, device=args.device)
    except (DataError, CheckpointError, FileNotFoundError, ValueError) as e:
        raise UsageError(str(e))
    for path, top in zip(images, results):
        print(path)
        for name, prob in top:
            print(f"  {100 * prob:6.2f}%  {name}")
    skipped = len(args.images) - len(images)
    if skipped:
        print(f"vmamba predict: skipped {skipped} unreadable image file(s) of {len(args.images)}", file=sys.stderr)
    return 1 if skipped else 0


def readable_images(paths: list[str]) -> list[str]:
    """The files Pillow can decode; each other one is named on stderr with the reason, and skipped."""
    from PIL import Image

    good = []
    for path in paths:
        try:
            with Image.open(path) as im:
                im.convert("RGB")
        except Exception as e:  # noqa: BLE001 - Pillow raises many kinds for bad files
            print(f"vmamba predict: skipping {path}: cannot read it as an image ({e})", file=sys.stderr)
            continue
        good.append(path)
    return good
