"""``vmamba scaling CHECKPOINT``: accuracy and FLOPs of a trained model at several resolutions."""
from __future__ import annotations

import json
from pathlib import Path

from . import UsageError


def add_parser(sub) -> None:
    p = sub.add_parser("scaling", help="accuracy and FLOPs of a trained model across input resolutions",
                       description="The paper's input-scaling study: evaluate a model trained at one size "
                                   "at several others.")
    p.add_argument("checkpoint", metavar="SOURCE",
                   help="a trained model: the output of `vmamba train`, a published NAME.TAG, a folder or a URL")
    p.add_argument("--sizes", type=int, nargs="+", default=None,
                   help="input sides (default: 1x, 1.5x, 2x, 3x, 4x the training size)")
    p.add_argument("--data", default="fashion-mnist", help="'fashion-mnist' or an ImageFolder root")
    p.add_argument("--split", default="val")
    p.add_argument("--model", help="architecture name for checkpoints without a stored config (the authors')")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="outputs/scaling", help="folder for scaling.json and scaling.png")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..analysis.scaling import plot_resolution_scaling, resolution_scaling
    from ..checkpoint import CheckpointError
    from ..train.datasets import DataError
    from ..train.inference import load_for_inference

    try:
        sizes = args.sizes
        if sizes is None:
            base = load_for_inference(args.checkpoint, model=args.model)[2]["img_size"]
            sizes = [base, int(base * 1.5), base * 2, base * 3, base * 4]
        if min(sizes) < 8:
            raise UsageError("--sizes must be >= 8")
        rows = resolution_scaling(args.checkpoint, sizes, args.data, args.split, args.model,
                                  args.batch_size, args.device)
    except (CheckpointError, DataError, FileNotFoundError) as e:
        raise UsageError(str(e)) from None
    print(f"{'size':>6}{'top-1 %':>10}{'top-5 %':>10}{'GFLOPs':>10}")
    for r in rows:
        print(f"{r['size']:>6}{r['top1']:>10.2f}{r['top5']:>10.2f}{r['gflops']:>10.3f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scaling.json").write_text(json.dumps({"checkpoint": str(args.checkpoint), "rows": rows}, indent=2))
    png = plot_resolution_scaling(rows, out / "scaling.png", f"{Path(args.checkpoint).name}")
    print(f"\nwrote {out / 'scaling.json'}" + (f", {png}" if png else ""))
    return 0
