"""Make the Fashion-MNIST subset that ships with vmamba (src/vmamba/data/fashion_mnist_subset.npz).

Source: the IDX files of Debian's ``dataset-fashion-mnist`` package
(``apt-get install dataset-fashion-mnist`` puts them under /usr/share/datasets/fashion-mnist),
which are Zalando Research's Fashion-MNIST, MIT licence. The subset is class-balanced and drawn
with a fixed seed, so running this script again gives the same file:

    python scripts/make_default_dataset.py [--src DIR] [--train-per-class 1000] [--test-per-class 200]
"""
from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--out", default=str(ROOT / "src/vmamba/data/fashion_mnist_subset.npz"))
    p.add_argument("--train-per-class", type=int, default=1000)
    p.add_argument("--test-per-class", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    import sys
    sys.path.insert(0, str(ROOT / "src"))
    from vmamba.train.datasets import FASHION_MNIST_CLASSES, read_idx

    rng = np.random.default_rng(args.seed)
    out = {}
    for split, prefix, per_class in (("train", "train", args.train_per_class), ("test", "t10k", args.test_per_class)):
        x = read_idx(Path(args.src) / f"{prefix}-images-idx3-ubyte.gz")
        y = read_idx(Path(args.src) / f"{prefix}-labels-idx1-ubyte.gz")
        idx = np.concatenate([rng.choice(np.flatnonzero(y == c), per_class, replace=False) for c in range(10)])
        idx = rng.permutation(idx)
        out[f"x_{split}"], out[f"y_{split}"] = x[idx], y[idx].astype(np.uint8)
        out[f"index_{split}"] = idx.astype(np.int32)  # positions in the original files (provenance)
    np.savez_compressed(args.out, classes=np.array(FASHION_MNIST_CLASSES), **out)
    data = Path(args.out).read_bytes()
    print(f"wrote {args.out}: {len(data) / 1e6:.2f} MB, sha256 {hashlib.sha256(data).hexdigest()[:16]}, "
          f"{len(out['y_train'])} train + {len(out['y_test'])} test images")


if __name__ == "__main__":
    main()
