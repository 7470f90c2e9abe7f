"""Pathfinder-style images, generated deterministically from a seed (no download).

As in the Long Range Arena's Pathfinder task: an image holds a few curves and two marked end
points (3x3-cell squares); the label says whether the two marks lie on the same curve (1,
"joined") or on two different curves (0). Every image has the same number of curves of the
same length whatever its label, and (with ``match``) both candidate mark pairs are about equally
far apart, so ink, curve counts and the marks' distance give nothing away; only following a
curve from one mark to the other answers the question.

Curves are drawn on a grid of cells (``scale`` pixels a side each) and keep a clear gap of at
least ``SEPARATION - 1`` cells from each other; dashes (where used) leave gaps of one cell. So
"joined" is exactly "the two marks are connected when pixels at most ``REACH * scale`` apart
(Chebyshev) count as neighbours": :func:`marks_connected` checks that, and the tests check
every label against it.

Image ``i`` of a split depends only on ``(seed, i)``, so a larger set starts with the smaller one.
"""
from __future__ import annotations

import math
import os
from collections import deque
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

SEPARATION = 3  # minimum Chebyshev distance between cells (marks included) of different curves
REACH = 2  # neighbourhood radius (cells) that bridges a dash gap but never the gap between curves
CLASSES = ["separate", "joined"]


@dataclass(frozen=True)
class PathfinderSpec:
    """How one size of the task is drawn."""

    size: int  # side of the drawing grid in cells (the image is ``size * scale`` pixels)
    length: int  # cells per curve (before dashing)
    curves: int  # curves per image: the two that carry the marks plus distractors
    dash: int  # visible cells per dash, each followed by a one-cell gap (dash >= length: solid)
    turn: float = 0.35  # standard deviation of the direction change per step (radians)
    match: float | None = None  # if set: both candidate mark pairs lie this close in distance (cells)
    scale: int = 1  # pixels per cell side: each cell becomes a scale x scale block

    @property
    def side(self) -> int:
        """The image side in pixels."""
        return self.size * self.scale


SPECS = {  # by image side
    # Two solid curves on a 16x16 grid drawn at 2x2 pixels a cell: learnable by small patch-4
    # models within minutes on a CPU (the 1-pixel dashed version kept them at chance).
    32: PathfinderSpec(size=16, length=10, curves=2, dash=10, match=1.0, scale=2),
    64: PathfinderSpec(size=64, length=44, curves=5, dash=4),
}
# Built-in dataset names: name -> (image side, training images, test images).
DATASETS = {"pathfinder32": (32, 16_000, 2_000), "pathfinder64": (64, 10_000, 2_000),
            "pathfinder32-mini": (32, 400, 100)}
TRAIN_SEED, TEST_SEED = 1000, 2000
VERSION = 2  # bump when the drawing changes, so cached sets are regenerated


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Boolean dilation by a (2r+1)x(2r+1) square (rows, then columns)."""
    out = mask.copy()
    for axis in (0, 1):
        src = out.copy()
        for d in range(1, radius + 1):
            if axis == 0:
                out[d:] |= src[:-d]
                out[:-d] |= src[d:]
            else:
                out[:, d:] |= src[:, :-d]
                out[:, :-d] |= src[:, d:]
    return out


def _grow_curve(rng: np.random.Generator, spec: PathfinderSpec, forbidden: np.ndarray, marked: bool,
                tries: int = 64, end_near=None) -> np.ndarray | None:
    """(spec.length, 2) pixels of a smooth random curve clear of ``forbidden`` and 2 px of border,
    never touching itself (and, when ``marked``, with room for a mark at each end), or None.
    ``end_near=(point, distance, tolerance)``: the last pixel must lie that far from ``point``.

    ``tries`` candidates are drawn at once and the first that fits is kept. Each step moves one
    pixel along the dominant axis, so consecutive pixels are 8-neighbours and never equal.
    """
    n, size = spec.length, spec.size
    angle = rng.uniform(0, 2 * math.pi, (tries, 1)) + np.cumsum(rng.normal(0.0, spec.turn, (tries, n - 1)), 1)
    step = np.stack([np.sin(angle), np.cos(angle)], -1)
    step /= np.abs(step).max(-1, keepdims=True)
    path = np.rint(np.concatenate([np.zeros((tries, 1, 2)), np.cumsum(step, 1)], 1)).astype(np.int64)
    low, high = 2 - path.min(1), size - 3 - path.max(1)  # offsets that keep the curve inside
    ok = (low <= high).all(1)
    path += (low + np.floor(rng.random((tries, 2)) * (high - low + 1)).astype(np.int64))[:, None]
    clipped = path.clip(0, size - 1)
    ok &= ~forbidden[clipped[..., 0], clipped[..., 1]].any(1)
    keys = np.sort(path[..., 0] * size + path[..., 1], 1)
    ok &= (keys[:, 1:] != keys[:, :-1]).all(1)
    if marked:  # no mark may come closer to another curve than the curves themselves
        near = _dilate(forbidden, 1)
        for end in (0, -1):
            ok &= ~near[clipped[:, end, 0], clipped[:, end, 1]]
    if end_near is not None:
        point, distance, tol = end_near
        ok &= np.abs(np.hypot(*(path[:, -1] - np.asarray(point)).T) - distance) <= tol
    good = np.flatnonzero(ok)
    return path[good[0]] if len(good) else None


def _mark(mask: np.ndarray, p) -> None:
    mask[p[0] - 1:p[0] + 2, p[1] - 1:p[1] + 2] = True


def draw_pathfinder(spec: PathfinderSpec, label: int, rng: np.random.Generator) -> tuple[np.ndarray, list]:
    """One image (uint8, ``spec.side`` squared) and the two mark centres (pixels); ``label`` 1 = joined."""
    while True:  # restart the image when a curve finds no room
        forbidden = np.zeros((spec.size, spec.size), bool)
        curves = []
        for c in range(spec.curves):
            near = None
            if c == 1 and spec.match is not None:  # the "separate" pair as far apart as the "joined" one
                near = (curves[0][0], float(np.hypot(*(curves[0][-1] - curves[0][0]))), spec.match)
            for _ in range(4):
                pixels = _grow_curve(rng, spec, forbidden, marked=c < 2, end_near=near)
                if pixels is not None:
                    break
            else:
                break
            own = np.zeros_like(forbidden)
            own[pixels[:, 0], pixels[:, 1]] = True
            if c < 2:  # the curves that may carry marks reserve room for them at both ends
                _mark(own, pixels[0]), _mark(own, pixels[-1])
            forbidden |= _dilate(own, SEPARATION - 1)
            curves.append(pixels)
        if len(curves) == spec.curves:
            break
    image = np.zeros((spec.size, spec.size), np.uint8)
    for pixels in curves:
        dashed = pixels[np.arange(len(pixels)) % (spec.dash + 1) < spec.dash]
        image[dashed[:, 0], dashed[:, 1]] = 255
    marks = [tuple(curves[0][0]), tuple(curves[0][-1] if label == 1 else curves[1][-1])]
    for p in marks:
        image[p[0] - 1:p[0] + 2, p[1] - 1:p[1] + 2] = 255
    if spec.scale > 1:
        image = np.kron(image, np.ones((spec.scale, spec.scale), np.uint8))
        marks = [(p[0] * spec.scale, p[1] * spec.scale) for p in marks]
    return image, marks


def generate_pathfinder(n: int, size: int = 32, seed: int = 0, return_marks: bool = False) -> tuple[np.ndarray, ...]:
    """``n`` images (uint8, (n, size, size)) and balanced labels (n // 2 joined, the rest separate).

    Deterministic in ``(seed, i)`` per image. With ``return_marks`` also the (n, 2, 2) mark
    centres as (row, column).
    """
    if size not in SPECS:
        raise ValueError(f"Pathfinder size {size} is not available; choose one of {sorted(SPECS)}")
    spec = SPECS[size]
    images = np.empty((n, spec.side, spec.side), np.uint8)
    labels = np.arange(n) % 2  # alternate: exactly balanced for even n
    marks = np.empty((n, 2, 2), np.int64)
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        images[i], m = draw_pathfinder(spec, int(labels[i]), rng)
        marks[i] = m
    return (images, labels, marks) if return_marks else (images, labels)


def marks_connected(image: np.ndarray, a, b, reach: int = REACH) -> bool:
    """Whether ink pixels lead from ``a`` to ``b`` in steps of at most ``reach`` (Chebyshev).
    For a set drawn at ``scale`` pixels a cell, ``REACH * scale`` is the reach that labels it."""
    ink = image > 0
    h, w = ink.shape
    seen = np.zeros_like(ink)
    queue = deque([tuple(a)])
    seen[tuple(a)] = True
    while queue:
        y, x = queue.popleft()
        if (y, x) == tuple(b):
            return True
        for ny in range(max(0, y - reach), min(h, y + reach + 1)):
            for nx in range(max(0, x - reach), min(w, x + reach + 1)):
                if ink[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
    return False


def cache_dir() -> Path:
    """Where generated sets are kept: ``$VMAMBA_CACHE/pathfinder`` or ``~/.cache/vmamba/pathfinder``."""
    root = os.environ.get("VMAMBA_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vmamba"
    return Path(root) / "pathfinder"


@lru_cache(maxsize=4)
def load_pathfinder(name: str) -> dict:
    """The built-in split pair ``{'train': (x, y), 'test': (x, y)}`` for ``name`` in :data:`DATASETS`.

    Generated on first use (about a minute for the larger sets on one core) and cached as an
    ``.npz`` file (see :func:`cache_dir`); the cache is only a speed-up, the images are the same.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown Pathfinder dataset {name!r}; choose one of {sorted(DATASETS)}")
    size, n_train, n_test = DATASETS[name]
    path = cache_dir() / f"{name}-{n_train}-{n_test}-v{VERSION}.npz"
    try:
        with np.load(path) as f:
            return {s: (f[f"x_{s}"], f[f"y_{s}"]) for s in ("train", "test")}
    except (OSError, KeyError, ValueError):
        pass
    splits = {"train": generate_pathfinder(n_train, size, TRAIN_SEED),
              "test": generate_pathfinder(n_test, size, TEST_SEED)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.savez(f, **{f"{k}_{s}": v for s, xy in splits.items() for k, v in zip("xy", xy)})
        os.replace(tmp, path)
    except OSError:  # a read-only home: generate again next time
        pass
    return splits
