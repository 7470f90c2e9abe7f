"""``vmamba eval``: top-1/top-5 and per-class accuracy of a checkpoint, at any resolution."""
from __future__ import annotations

import argparse
import json

from . import UsageError
from .validate import device, float_range, int_range, positive_int


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="accuracy of a checkpoint on a dataset (top-1, top-5, per class)",
                       description=__doc__)
    p.add_argument("checkpoint", metavar="SOURCE",
                   help="a published model (NAME or NAME.TAG, see `vmamba models`), a training checkpoint (.pt), "
                   "exported .safetensors, a save_pretrained folder, the authors' .pth (with --model) or a URL")
    p.add_argument("--data", default="fashion-mnist",
                   help="'fashion-mnist' (built-in) or an ImageFolder root with val/<class>/* "
                        "(ImageNet: val/<wnid>/*.JPEG) (default: %(default)s)")
    p.add_argument("--split", choices=("train", "val", "test"), default=None,
                   help="split to evaluate (default: test when the data has one, else val; the built-in set's "
                        "val is the part of its training images that runs hold out)")
    p.add_argument("--model", help="architecture, for checkpoints that store no config (the authors')")
    p.add_argument("--img-size", type=positive_int, help="evaluation resolution (default: the training one)")
    p.add_argument("--crop-pct", type=float_range(0, 1, low_open=True), help="resize to img_size/crop_pct then centre-crop (default: stored)")
    p.add_argument("--batch-size", type=positive_int, default=100, help="images per batch (default: %(default)s)")
    p.add_argument("--workers", type=int_range(0), default=0, help="data-loading processes (default: %(default)s)")
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None, help="use the EMA weights (default: when present)")
    p.add_argument("--device", type=device, default="cpu", help="cpu, cuda, cuda:N, ... (default: %(default)s)")
    p.add_argument("--strict-data", action="store_true", help="fail on an unreadable image")
    p.add_argument("--per-class", action="store_true", help="print the accuracy of every class")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..checkpoint import CheckpointError
    from ..train import DataError, evaluate_checkpoint
    from ..train.datasets import has_test

    split = args.split or ("test" if has_test(args.data) else "val")
    try:
        res = evaluate_checkpoint(args.checkpoint, data=args.data, split=split, img_size=args.img_size,
                                  batch_size=args.batch_size, workers=args.workers, model=args.model,
                                  use_ema=args.ema, device=args.device, crop_pct=args.crop_pct,
                                  strict_data=args.strict_data)
    except (DataError, CheckpointError, FileNotFoundError, ValueError) as e:
        raise UsageError(str(e))
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"{res['data']}: {res['n']} images at {res['img_size']}px"
          + (f" ({res['skipped']} unreadable, skipped)" if res["skipped"] else ""))
    print(f"top-1 {res['acc1']:.2f}%  top-5 {res['acc5']:.2f}%  loss {res['loss']:.4f}")
    reported = res.get("reported") or {}
    if "top1" in reported:
        print(f"the authors report top-1 {reported['top1']:.1f}% for {reported['name']} (ImageNet-1k val, 224px)")
    per_class = sorted(res["per_class"].items(), key=lambda kv: kv[1])
    shown = per_class if args.per_class else per_class[:5]
    print("per-class accuracy" + ("" if args.per_class else " (5 worst; --per-class for all)") + ":")
    for name, acc in shown:
        print(f"  {acc:6.2f}%  {name}")
    return 0
