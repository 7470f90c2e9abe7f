"""Write the generated dense-prediction demo datasets (fixed seeds; nothing is downloaded).

    python scripts/make_dense_demo_data.py [--root data/vmamba_shapes] [--train 200] [--val 50]

Writes ROOT/coco (COCO-format instance segmentation: train/, val/, annotations/) and ROOT/seg
(MMSegmentation layout: img_dir/, ann_dir/), the paths the demo configs in
vmamba/dense/configs use by default. Same as `vmamba dense data`.
"""
from __future__ import annotations

import argparse
import sys

from vmamba.cli import main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data/vmamba_shapes")
    parser.add_argument("--train", type=int, default=200)
    parser.add_argument("--val", type=int, default=50)
    args = parser.parse_args()
    sys.exit(main(["dense", "data", "--root", args.root, "--train-images", str(args.train),
                   "--val-images", str(args.val)]))
