"""``vmamba predict``: the top-k classes of image files."""
from __future__ import annotations

import argparse

from . import UsageError


def add_parser(sub) -> None:
    p = sub.add_parser("predict", help="top-k classes of image files", description=__doc__)
    p.add_argument("checkpoint", metavar="SOURCE",
                   help="a published model (NAME or NAME.TAG, see `vmamba models`), a training checkpoint (.pt), "
                   "exported .safetensors, a save_pretrained folder, the authors' .pth (with --model) or a URL")
    p.add_argument("images", nargs="+", help="image files (any format Pillow reads)")
    p.add_argument("--topk", type=int, default=5, help="classes to show per image (default: %(default)s)")
    p.add_argument("--model", help="architecture, for checkpoints that store no config (the authors')")
    p.add_argument("--img-size", type=int, help="input resolution (default: the training one)")
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None,
                   help="use the EMA weights (default: when present)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..checkpoint import CheckpointError
    from ..train import DataError, predict

    if args.topk < 1:
        raise UsageError("--topk must be at least 1")
    try:
        results = predict(args.checkpoint, args.images, topk=args.topk, model=args.model, img_size=args.img_size,
                          use_ema=args.ema, device=args.device)
    except (DataError, CheckpointError, FileNotFoundError, ValueError) as e:
        raise UsageError(str(e))
    for path, top in zip(args.images, results):
        print(path)
        for name, prob in top:
            print(f"  {100 * prob:6.2f}%  {name}")
    return 0
