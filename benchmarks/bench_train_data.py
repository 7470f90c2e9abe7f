"""Does data loading starve the model? Time training steps and report the share spent waiting for data.

    PYTHONPATH=src python benchmarks/bench_train_data.py [--steps 60] [--workers -1]

Runs a capped training epoch (1) on the built-in Fashion-MNIST with the default preset and (2) on
a generated ImageFolder of JPEG files (decoded by Pillow in loader workers) with the same small
model at 64 px, and prints images/s and the share of the epoch spent waiting for the next batch
(``data_wait_share`` in metrics.jsonl).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np


def make_jpeg_folder(root: Path, classes: int = 4, per_class: int = 200, size: int = 96) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", per_class // 4)):
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(d / f"{i}.jpg", quality=90)
    return root


def run(name: str, **overrides) -> dict:
    from vmamba.train import make_config, train

    with tempfile.TemporaryDirectory() as out:
        cfg = make_config("default", out=out, epochs=1, progress=False, **overrides)
        train(cfg)
        row = json.loads((Path(out) / "metrics.jsonl").read_text().splitlines()[-1])
    print(f"{name:<40} {row['img_per_s']:8.0f} img/s   waiting for data {100 * row['data_wait_share']:5.1f}% "
          f"of {row['epoch_time']:.1f} s", file=sys.stderr)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=60, help="training steps per case")
    p.add_argument("--workers", type=int, default=-1, help="loader workers for the ImageFolder case (-1: auto)")
    args = p.parse_args()
    results = {"builtin": run("built-in Fashion-MNIST, in memory", max_steps_per_epoch=args.steps)}
    with tempfile.TemporaryDirectory() as tmp:
        root = make_jpeg_folder(Path(tmp))
        results["imagefolder"] = run(f"ImageFolder JPEG 96px->64px, workers {args.workers}", data=str(root),
                                     img_size=64, in_chans=3, mean=(0.5,), std=(0.5,), crop_pct=0.875,
                                     scale=(0.08, 1.0), batch_size=64, workers=args.workers,
                                     max_steps_per_epoch=args.steps)
    print(json.dumps({k: {m: v[m] for m in ("img_per_s", "data_wait_share", "epoch_time")} for k, v in results.items()}))


if __name__ == "__main__":
    main()
