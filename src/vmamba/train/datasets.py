"""Datasets: an ImageFolder layout on disk and the built-in Fashion-MNIST.

Both yield ``(PIL image, label)`` pairs (``None`` instead of the image when it could not be
read), so one per-sample transform (:mod:`vmamba.train.transforms`) serves them all.
"""
from __future__ import annotations

import gzip
import os
from importlib import resources
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from ..utils import IMAGE_EXTENSIONS
BUILTIN = "fashion-mnist"
PATHFINDER = ("pathfinder32", "pathfinder64", "pathfinder32-mini")  # built-in, see vmamba.data.pathfinder
FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)  # Debian's dataset-fashion-mnist
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)


class DataError(ValueError):
    """The data is missing, laid out wrongly or unreadable."""


class ImageFolder(Dataset):
    """Images in ``root/<class>/<file>`` (any depth below the class folder), classes sorted by name.

    A file that cannot be decoded yields ``None`` as its image (counted and skipped by the
    loader), or raises :class:`DataError` when ``strict``.
    """

    def __init__(self, root: str | os.PathLike, transform=None, strict: bool = False):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"image folder {self.root} does not exist")
        self.classes = sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not self.classes:
            raise DataError(f"{self.root} has no class sub-folders; expected {self.root}/<class>/<image files>")
        self.samples = []
        for label, name in enumerate(self.classes):
            for dirpath, _, files in sorted(os.walk(self.root / name, followlinks=True)):
                self.samples += [(os.path.join(dirpath, f), label) for f in sorted(files)
                                 if f.lower().endswith(IMAGE_EXTENSIONS)]
        if not self.samples:
            raise DataError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {self.root}/<class>/")
        self.targets = [label for _, label in self.samples]
        self.transform, self.strict = transform, strict

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        from PIL import Image

        path, label = self.samples[i]
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
        except Exception as e:  # PIL raises many types for bad files
            if self.strict:
                raise DataError(f"cannot read image {path}: {e}") from e
            return None, label
        return (self.transform(img) if self.transform else img), label


class ArrayDataset(Dataset):
    """Images held in memory as a uint8 array (N, H, W) or (N, H, W, C) with integer labels."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, classes: list[str], transform=None):
        if len(images) != len(labels):
            raise DataError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.targets, self.classes = images, [int(v) for v in labels], list(classes)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        from PIL import Image

        img = Image.fromarray(self.images[i])
        return (self.transform(img) if self.transform else img), self.targets[i]


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not, as a numpy array."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if data[:2] != b"\0\0" or data[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def find_full_fashion_mnist() -> Path | None:
    """The folder holding the full Fashion-MNIST IDX files, if installed (env FASHION_MNIST_DIR first)."""
    names = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
    env = os.environ.get("FASHION_MNIST_DIR")
    for d in ([env] if env else []) + list(FASHION_MNIST_DIRS):
        if all((Path(d) / n).is_file() for n in names):
            return Path(d)
    return None


def load_fashion_mnist(full: bool | None = None) -> tuple[dict, str]:
    """The built-in dataset as ``({'train': (x, y), 'test': (x, y)}, description)``.

    ``full=None`` uses the full 70,000 images when Debian's ``dataset-fashion-mnist`` (or
    ``$FASHION_MNIST_DIR``) provides them, else the 12,000-image subset shipped with vmamba.
    """
    src = find_full_fashion_mnist() if full in (None, True) else None
    if full and src is None:
        raise DataError("full Fashion-MNIST not found: apt-get install dataset-fashion-mnist "
                        "or set FASHION_MNIST_DIR to a folder with its four IDX .gz files")
    if src is not None:
        splits = {split: (read_idx(src / f"{p}-images-idx3-ubyte.gz"), read_idx(src / f"{p}-labels-idx1-ubyte.gz"))
                  for split, p in (("train", "train"), ("test", "t10k"))}
        return splits, f"Fashion-MNIST (full, {src})"
    with resources.files("vmamba.data").joinpath("fashion_mnist_subset.npz").open("rb") as f:
        npz = np.load(f)
        splits = {s: (npz[f"x_{s}"], npz[f"y_{s}"]) for s in ("train", "test")}
    return splits, "Fashion-MNIST (subset shipped with vmamba)"


FASHION_NAMES = (BUILTIN, f"{BUILTIN}-full", f"{BUILTIN}-subset")
BUILTIN_NAMES = FASHION_NAMES + PATHFINDER
SPLIT_SEED = 0  # the held-out validation split is the same for every run and --seed


def holdout_indices(targets: list[int], fraction: float, seed: int = SPLIT_SEED) -> tuple[list[int], list[int]]:
    """Split sample indices into (train, val), ``fraction`` of every class to val (at least one
    image per class with two or more), chosen by a fixed-seed shuffle: the same split every run."""
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = {}
    for i, t in enumerate(targets):
        by_class.setdefault(t, []).append(i)
    train, val = [], []
    for label in sorted(by_class):
        idx = rng.permutation(by_class[label]).tolist()
        k = min(max(1, round(fraction * len(idx))), len(idx) - 1) if len(idx) > 1 else 0
        val += idx[:k]
        train += idx[k:]
    return sorted(train), sorted(val)


class Subset(Dataset):
    """Some samples of a dataset, keeping its ``classes`` and giving ``targets`` of those samples."""

    def __init__(self, base, indices: list[int], description: str):
        self.base, self.indices, self.description = base, list(indices), description
        self.classes = base.classes
        self.targets = [base.targets[i] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.base[self.indices[i]]


def has_own_val(data: str) -> bool:
    """Whether the data brings a validation split (a folder with val/); else one is held out of train."""
    return data not in BUILTIN_NAMES and (Path(data) / "val").is_dir()


def has_test(data: str) -> bool:
    """Whether the data has a test split, measured once at the end of a run."""
    return data in BUILTIN_NAMES or (Path(data) / "test").is_dir()


def class_names(data: str) -> list[str]:
    """The class names of the data, cheaply (no image files listed): for building the model first."""
    if data in PATHFINDER:
        from ..data.pathfinder import CLASSES

        return list(CLASSES)
    if data in BUILTIN_NAMES:
        return list(FASHION_MNIST_CLASSES)
    root = _folder_root(data) / "train"
    if not root.is_dir():
        return build_dataset(data, "train").classes  # raises the layout error
    return sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def _folder_root(data: str) -> Path:
    root = Path(data)
    if not root.is_dir():
        raise DataError(f"--data {data!r}: not a folder and not the built-in dataset {BUILTIN!r}")
    return root


def build_dataset(data: str, split: str, transform=None, strict: bool = False, val_fraction: float = 0.1):
    """The dataset for ``split`` ('train', 'val' or 'test'): the built-in name or an ImageFolder root.

    An ImageFolder root holds ``train/<class>/*`` and optionally ``val/`` and ``test/`` alike.
    When there is no ``val/`` (and always for the built-in set), 'val' is ``val_fraction`` of the
    training images held out per class with a fixed seed (:func:`holdout_indices`), and 'train'
    is the rest. 'test' is the built-in test set or ``test/``.
    """
    if split not in ("train", "val", "test"):
        raise DataError(f"split {split!r}: expected train, val or test")
    if data in PATHFINDER:  # generated from a seed: vmamba.data.pathfinder
        from ..data.pathfinder import CLASSES, load_pathfinder

        x, y = load_pathfinder(data)["test" if split == "test" else "train"]
        ds = ArrayDataset(x, y, CLASSES, transform)
        ds.description = f"Pathfinder {data} (generated)"
        return ds if split == "test" else _held_out(ds, split, val_fraction, ds.description)
    if data in BUILTIN_NAMES:
        full = {BUILTIN: None, f"{BUILTIN}-full": True, f"{BUILTIN}-subset": False}[data]
        splits, desc = load_fashion_mnist(full)
        x, y = splits["test" if split == "test" else "train"]
        ds = ArrayDataset(x, y, FASHION_MNIST_CLASSES, transform)
        ds.description = desc
        return ds if split == "test" else _held_out(ds, split, val_fraction, desc)
    root = _folder_root(data)
    folder = split if split == "test" or has_own_val(data) else "train"
    sub = root / folder
    if not sub.is_dir():
        found = sorted(d.name for d in root.iterdir() if d.is_dir())
        raise DataError(f"{root} has no '{folder}' folder (found: {found or 'nothing'}); expected the layout "
                        f"{root}/train/<class>/<images>, optionally {root}/val/... and {root}/test/...")
    ds = ImageFolder(sub, transform, strict)
    ds.description = f"ImageFolder {sub}"
    if split != "test" and not has_own_val(data):
        return _held_out(ds, split, val_fraction, ds.description)
    return ds


def _held_out(ds, split: str, fraction: float, desc: str) -> Subset:
    train, val = holdout_indices(ds.targets, fraction)
    if split == "val":
        return Subset(ds, val, f"{desc}: {len(val)} training images held out ({fraction:g} per class, seed {SPLIT_SEED})")
    return Subset(ds, train, f"{desc}: {len(train)} images (the held-out {len(val)} excluded)")
