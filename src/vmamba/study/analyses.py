"""Analyses of a trained run: FLOPs, effective receptive field (trained and at initialisation),
accuracy at larger input sizes. Each returns plain numbers for the run's ``study.json``; ERF maps are
also saved as ``.npy`` next to the run for the report's plots."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..analysis.erf import erf_map, erf_summary
from ..analysis.flops import count_flops
from ..train.config import TrainConfig

ERF_SCALE = 4  # ERFs are measured at about 4x the training size (see erf_size)
RESOLUTION_SCALES = (1, 2, 3, 4)


RING_MASS_MIN = 1e-4  # share of an ERF's mass on the ring below which its cross ratio is undefined


def cross_ratio(erf: np.ndarray, sector_deg: float = 7.5) -> float:
    """How cross-shaped an ERF is: its mean near the centre row and column over its mean near
    the diagonals, at the same distances from the centre (a ring from side/8 to side/2; sectors
    of +-``sector_deg``). 1: no preferred direction; > 1: a cross, as the paper shows for VMamba;
    nan for a local ERF: less than ``RING_MASS_MIN`` of its mass on the ring (floating-point dust
    there would give a ratio of 0 or of thousands), or none on the diagonals' sectors."""
    h, w = erf.shape
    yy, xx = np.mgrid[:h, :w]
    dy, dx = yy - h // 2, xx - w // 2
    r = np.hypot(dy, dx)
    ring = (r >= min(h, w) / 8) & (r <= min(h, w) / 2)
    angle = np.degrees(np.arctan2(np.abs(dy), np.abs(dx)))  # 0..90
    axes = ring & ((angle <= sector_deg) | (angle >= 90 - sector_deg))
    diagonals = ring & (np.abs(angle - 45) <= sector_deg)
    total = erf.sum()
    if not total > 0 or erf[ring].sum() < RING_MASS_MIN * total:
        return float("nan")  # no mass that far out
    off = erf[diagonals].mean()
    return float(erf[axes].mean() / off) if off > 0 else float("nan")


def erf_size(img_size: int, stride: int = 32) -> int:
    """The ERF's input side: about ``ERF_SCALE`` x the training size, rounded so that the last
    feature map (``stride``) has an odd side and so a true centre position (160 for 32)."""
    cells = max(1, round(ERF_SCALE * img_size / stride))
    return stride * (cells if cells % 2 else cells + 1)


def num_classes(run_dir: Path) -> int:
    """Classes of a finished run, from its weights' metadata."""
    import json

    from safetensors import safe_open

    with safe_open(str(run_dir / "model.safetensors"), "pt") as f:
        return len(json.loads(f.metadata()["class_names"]))


def build(cfg: TrainConfig, classes: int, seed: int | None = None) -> torch.nn.Module:
    """The run's network, freshly initialised (from ``seed`` when given), in eval mode on CPU."""
    from .peers import build_model

    if seed is not None:
        torch.manual_seed(seed)
    return build_model(cfg, classes).eval()


def load_trained(run_dir: Path, cfg: TrainConfig) -> torch.nn.Module:
    """The run's final weights (``model.safetensors``) in a network built from its configuration."""
    from safetensors.torch import load_file

    model = build(cfg, num_classes(run_dir))
    model.load_state_dict(load_file(str(run_dir / "model.safetensors")))
    return model


def val_loader(cfg: TrainConfig, size: int, batch_size: int = 200):
    """The test images (else the validation images) at ``size``, prepared as the run's evaluation does."""
    from torch.utils.data import DataLoader

    from ..train.datasets import build_dataset, has_test
    from ..train.engine import collate_skipping
    from ..train.transforms import EvalTransform

    split = "test" if has_test(cfg.data) else "val"
    ds = build_dataset(cfg.data, split, EvalTransform(size, cfg.in_chans, cfg.crop_pct, cfg.interpolation),
                       val_fraction=cfg.val_fraction)
    return DataLoader(ds, batch_size, shuffle=False, collate_fn=collate_skipping)


def erf_images(cfg: TrainConfig, size: int, count: int) -> list[torch.Tensor]:
    """``count`` normalised validation images at ``size`` (the ERF's inputs)."""
    from ..train.transforms import normalize

    images = []
    for x, _, _ in val_loader(cfg, size, batch_size=count):
        images = list(normalize(x, cfg.mean, cfg.std))
        break
    return images[:count]


def _erf(model, cfg: TrainConfig, run_dir: Path, name: str, count: int) -> dict:
    size = erf_size(cfg.img_size)
    erf = erf_map(model, erf_images(cfg, size, count))
    np.save(run_dir / f"{name}.npy", erf)
    return dict(erf_summary(erf), cross_ratio=cross_ratio(erf), size=size, images=count)


def resolution(model, cfg: TrainConfig, scales=RESOLUTION_SCALES) -> list[dict]:
    """Top-1 accuracy and GFLOPs at each multiple of the training size."""
    from ..train.engine import evaluate

    rows = []
    for s in scales:
        size = s * cfg.img_size
        res = evaluate(model, val_loader(cfg, size), torch.device("cpu"), model.num_classes, cfg.mean, cfg.std)
        rows.append(dict(scale=s, size=size, top1=res["acc1"], gflops=count_flops(model, (size, size)).flops / 1e9))
    return rows


def run(name: str, run_dir: Path, cfg: TrainConfig, plan) -> dict | list:
    """Analysis ``name`` ('flops', 'erf', 'erf_init', 'resolution') of the finished run in ``run_dir``."""
    from .plans import SIZES

    count = SIZES[plan.budget]["erf_images"]
    if name == "erf_init":
        return _erf(build(cfg, num_classes(run_dir), seed=cfg.seed), cfg, run_dir, "erf_init", count)
    model = load_trained(run_dir, cfg)
    if name == "flops":
        report = count_flops(model, (cfg.img_size, cfg.img_size))
        return dict(params=report.params, gflops=report.flops / 1e9)
    if name == "erf":
        return _erf(model, cfg, run_dir, "erf", count)
    if name == "resolution":
        return resolution(model, cfg)
    raise ValueError(f"unknown analysis {name!r}")
