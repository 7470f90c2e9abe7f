"""Small generated datasets for the dense-prediction demo (nothing is downloaded).

Images of non-overlapping shapes (rectangles, ellipses, triangles) in random colours on a noisy
gradient; the class is the shape, never the colour. Made from a fixed seed, so every run writes
the same files:

* :func:`make_instance_dataset`: COCO-format instance segmentation (boxes and polygon masks),
  for MMDetection's ``CocoDataset``;
* :func:`make_semantic_dataset`: PNG label maps (0 = background, 1..3 = the shapes), for
  MMSegmentation's ``BaseSegDataset``.

Needs numpy and Pillow only.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

__all__ = ["CLASSES", "SEG_CLASSES", "make_instance_dataset", "make_semantic_dataset", "random_scene"]

CLASSES = ("rectangle", "ellipse", "triangle")
SEG_CLASSES = ("background",) + CLASSES
SEG_PALETTE = [[0, 0, 0], [220, 20, 60], [0, 128, 255], [255, 200, 0]]


def _polygon(kind: int, x0: float, y0: float, w: float, h: float, rng: np.random.Generator) -> list[tuple]:
    """Vertices of shape ``kind`` filling the box (x0, y0, w, h)."""
    x1, y1 = x0 + w, y0 + h
    if kind == 0:  # rectangle
        return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    if kind == 1:  # ellipse, as a 32-gon
        cx, cy = x0 + w / 2, y0 + h / 2
        return [(cx + w / 2 * math.cos(t), cy + h / 2 * math.sin(t))
                for t in np.linspace(0, 2 * math.pi, 32, endpoint=False)]
    apex = x0 + rng.uniform(0.2, 0.8) * w  # triangle, apex up or down
    return [(x0, y1), (x1, y1), (apex, y0)] if rng.random() < 0.5 else [(x0, y0), (x1, y0), (apex, y1)]


def random_scene(rng: np.random.Generator, height: int, width: int, max_objects: int = 4,
                 min_size: int = 20, max_size: int = 64):
    """One image with 1..max_objects non-overlapping shapes.

    Returns (image uint8 (H, W, 3), label map uint8 (H, W) with 0 = background and 1 + class
    index under each shape, list of (class index, polygon vertices, (x, y, w, h) box)).
    """
    from PIL import Image, ImageDraw

    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    base = rng.uniform(40, 200, 3)
    slope = rng.uniform(-60, 60, (2, 3))
    bg = base + xx[..., None] * slope[0] + yy[..., None] * slope[1] + rng.normal(0, 8, (height, width, 3))
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    label = Image.new("L", (width, height), 0)
    draw, draw_label = ImageDraw.Draw(img), ImageDraw.Draw(label)
    objects, boxes = [], []
    target = int(rng.integers(1, max_objects + 1))
    for _ in range(200):  # rejection sampling of non-overlapping boxes
        if len(objects) >= target:
            break
        w, h = rng.integers(min_size, max_size + 1, 2)
        if w >= width - 2 or h >= height - 2:
            continue
        x0, y0 = rng.integers(1, width - w), rng.integers(1, height - h)
        if any(x0 < bx + bw + 2 and bx < x0 + w + 2 and y0 < by + bh + 2 and by < y0 + h + 2
               for bx, by, bw, bh in boxes):
            continue
        kind = int(rng.integers(len(CLASSES)))
        poly = _polygon(kind, float(x0), float(y0), float(w), float(h), rng)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.polygon(poly, fill=colour)
        draw_label.polygon(poly, fill=kind + 1)
        xs, ys = [p[0] for p in poly], [p[1] for p in poly]
        box = (min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys))
        boxes.append(box)
        objects.append((kind, poly, box))
    return np.asarray(img), np.asarray(label), objects


def _polygon_area(poly) -> float:
    xs, ys = np.array([p[0] for p in poly]), np.array([p[1] for p in poly])
    return float(abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))) / 2)


def make_instance_dataset(root: str | Path, n_train: int = 200, n_val: int = 50,
                          size: tuple[int, int] = (128, 160), seed: int = 0) -> dict:
    """Write a COCO-format instance-segmentation set under ``root``.

    Layout: ``train/*.png``, ``val/*.png``, ``annotations/instances_{train,val}.json``
    (category ids 1..3 named as :data:`CLASSES`, polygon masks, ``iscrowd`` 0).

    Returns:
        dict with 'root', 'classes', and per split the image folder and annotation file.
    """
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    out = {"root": str(root), "classes": CLASSES}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    ann_id = 1
    for split, count in (("train", n_train), ("val", n_val)):
        (root / split).mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            img, _, objects = random_scene(rng, *size)
            name = f"{split}_{i:05d}.png"
            Image.fromarray(img).save(root / split / name)
            images.append(dict(id=i + 1, file_name=name, height=size[0], width=size[1]))
            for kind, poly, box in objects:
                annotations.append(dict(
                    id=ann_id, image_id=i + 1, category_id=kind + 1, iscrowd=0,
                    bbox=[round(v, 2) for v in box], area=round(_polygon_area(poly), 2),
                    segmentation=[[round(c, 2) for p in poly for c in p]]))
                ann_id += 1
        coco = dict(images=images, annotations=annotations,
                    categories=[dict(id=k + 1, name=n, supercategory="shape") for k, n in enumerate(CLASSES)])
        ann_file = root / "annotations" / f"instances_{split}.json"
        ann_file.write_text(json.dumps(coco))
        out[split] = dict(img_dir=str(root / split), ann_file=str(ann_file), images=count,
                          instances=len(annotations))
    return out


def make_semantic_dataset(root: str | Path, n_train: int = 200, n_val: int = 50,
                          size: tuple[int, int] = (128, 160), seed: int = 1) -> dict:
    """Write a semantic-segmentation set under ``root`` (MMSegmentation's folder layout).

    Layout: ``img_dir/{train,val}/*.png`` and ``ann_dir/{train,val}/*.png`` (uint8 label maps,
    0 = background, 1..3 = :data:`CLASSES`; classes listed in :data:`SEG_CLASSES`).
    """
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    out = {"root": str(root), "classes": SEG_CLASSES}
    for split, count in (("train", n_train), ("val", n_val)):
        (root / "img_dir" / split).mkdir(parents=True, exist_ok=True)
        (root / "ann_dir" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            img, label, _ = random_scene(rng, *size)
            Image.fromarray(img).save(root / "img_dir" / split / f"{i:05d}.png")
            Image.fromarray(label).save(root / "ann_dir" / split / f"{i:05d}.png")
        out[split] = dict(img_dir=str(root / "img_dir" / split), ann_dir=str(root / "ann_dir" / split),
                          images=count)
    return out
