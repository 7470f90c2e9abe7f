"""Evaluate and predict with any model source :func:`vmamba.load` takes: a published tag
(``vmamba_tiny_s1l8.in1k``), this project's checkpoints (training ``.pt`` or ``.safetensors``),
``save_pretrained`` folders, the authors' files (give the model name) or a URL."""
from __future__ import annotations

import os

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from ..pretrained import Loaded, load
from .datasets import DataError, build_dataset
from .engine import collate_skipping, evaluate
from .transforms import EvalTransform, normalize


def load_source(source: str | os.PathLike, model: str | None = None, num_classes: int | None = None,
                use_ema: bool | None = None) -> Loaded:
    """:func:`vmamba.load` for inference (a zoo name means its published weights), in eval mode."""
    loaded = load(source, model=model, num_classes=num_classes, use_ema=use_ema)
    loaded.model.eval()
    return loaded


def load_for_inference(path: str | os.PathLike, model: str | None = None, num_classes: int | None = None,
                       use_ema: bool | None = None) -> tuple[nn.Module, list[str] | None, dict]:
    """(model in eval mode, class names or None, data config) of any source (see :func:`load_source`)."""
    net, prep, _ = load_source(path, model=model, num_classes=num_classes, use_ema=use_ema)
    return net, list(prep.label_names) if prep.label_names else None, prep.data_config()


def evaluate_checkpoint(path: str | os.PathLike, data: str = "fashion-mnist", split: str = "val",
                        img_size: int | None = None, batch_size: int = 100, workers: int = 0,
                        model: str | None = None, use_ema: bool | None = None, device: str = "cpu",
                        crop_pct: float | None = None, strict_data: bool = False) -> dict:
    """Top-1/top-5 and per-class accuracy of a checkpoint on a dataset split, at any resolution.

    The dataset's class folders are matched to the checkpoint's class names when it has them,
    otherwise they are taken in sorted order (as ImageNet's synset folders are).
    """
    net, prep, weights = load_source(path, model=model, use_ema=use_ema)
    classes = list(prep.label_names) if prep.label_names else None
    dc = prep.data_config()
    size = img_size or dc["img_size"]
    transform = EvalTransform(size, dc["in_chans"], crop_pct or dc["crop_pct"], dc["interpolation"])
    ds = build_dataset(data, split, transform, strict_data)
    if classes is not None and ds.classes != classes:
        missing = [c for c in ds.classes if c not in classes]
        if missing:
            raise DataError(f"classes {missing[:5]} of {data} are not among the checkpoint's {len(classes)} classes")
        remap = [classes.index(c) for c in ds.classes]
        ds.targets = [remap[t] for t in ds.targets]
        if hasattr(ds, "samples"):
            ds.samples = [(p, remap[t]) for p, t in ds.samples]
    num_classes = net.num_classes
    if max(ds.targets) >= num_classes:
        raise DataError(f"{data} has {len(ds.classes)} classes but the model predicts {num_classes}")
    dev = torch.device(device)
    loader = DataLoader(ds, batch_size, num_workers=workers, collate_fn=collate_skipping)
    res = evaluate(net.to(dev), loader, dev, num_classes, dc["mean"], dc["std"])
    names = classes or [str(i) for i in range(num_classes)]
    present = sorted(set(ds.targets))
    res["per_class"] = {names[i]: res["per_class"][i] for i in present}
    res.update(img_size=size, data=getattr(ds, "description", data),
               reported=dict(weights.metrics, name=weights.name) if weights is not None else None)
    return res


@torch.no_grad()
def predict(path: str | os.PathLike, images: list[str | os.PathLike], topk: int = 5, model: str | None = None,
            img_size: int | None = None, use_ema: bool | None = None, device: str = "cpu") -> list[list[tuple]]:
    """Top-k (class name, probability) for each image file, best first."""
    from PIL import Image

    net, prep, _ = load_source(path, model=model, use_ema=use_ema)
    dc = prep.data_config()
    transform = EvalTransform(img_size or dc["img_size"], dc["in_chans"], dc["crop_pct"], dc["interpolation"])
    batch = []
    for f in images:
        try:
            with Image.open(f) as im:
                batch.append(transform(im.convert("RGB")))
        except Exception as e:
            raise DataError(f"cannot read image {f}: {e}") from e
    dev = torch.device(device)
    probs = net.to(dev)(normalize(torch.stack(batch).to(dev), dc["mean"], dc["std"])).softmax(-1)
    p, idx = probs.topk(min(topk, probs.shape[1]), dim=1)
    return [[(prep.class_name(j), float(q)) for q, j in zip(pr.tolist(), ix.tolist())] for pr, ix in zip(p, idx)]
