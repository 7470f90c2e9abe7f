"""Evaluate and predict with a saved model: this project's checkpoints (training ``.pt`` or
``.safetensors``), ``save_pretrained`` folders, or the authors' (give the model name; ImageNet preprocessing is assumed)."""
from __future__ import annotations

import json
import os

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from .. import create_model
from ..checkpoint import load_checkpoint, model_from_config, read_checkpoint, stored_config
from ..pretrained import from_pretrained
from .datasets import DataError, build_dataset
from .engine import collate_skipping, evaluate
from .transforms import EvalTransform, normalize


def load_for_inference(path: str | os.PathLike, model: str | None = None, num_classes: int | None = None,
                       use_ema: bool | None = None) -> tuple[nn.Module, list[str] | None, dict]:
    """Rebuild a model from a checkpoint: returns (model in eval mode, class names or None, data config).

    ``model`` names the architecture when the file stores no config (the authors' checkpoints);
    ``use_ema=None`` takes the EMA weights of a training checkpoint when it has them.
    """
    if os.path.isdir(path):  # a folder from vmamba.save_pretrained: preprocessing from its pretrained_cfg
        net = from_pretrained(path, **({"num_classes": num_classes} if num_classes else {}))
        return net.eval(), net.pretrained_cfg.get("label_names"), _data_config(net)
    contents, metadata = read_checkpoint(path)
    config = stored_config(contents, metadata)
    if model is not None or config is None:
        if model is None:
            raise DataError(f"{path} stores no model config: name the architecture with --model (see `vmamba models`)")
        net = create_model(model, **({"num_classes": num_classes} if num_classes else {}))
    else:
        net = model_from_config(config, **({"num_classes": num_classes} if num_classes else {}))
    ema = ("model_ema" in contents) if use_ema is None else use_ema
    load_checkpoint(net, contents, use_ema=ema)
    if "class_names" in metadata:
        classes = json.loads(metadata["class_names"])
        data_cfg = json.loads(metadata["data_config"])
    else:
        classes = contents.get("class_names")
        data_cfg = contents.get("data_config")
    if data_cfg is None:  # the authors' ImageNet checkpoints
        data_cfg = _data_config(net)
    return net.eval(), classes, dict(data_cfg)


def _data_config(net: nn.Module) -> dict:
    """The preprocessing a model's ``pretrained_cfg`` describes, as a training data config."""
    pc = net.pretrained_cfg
    return dict(img_size=pc["input_size"][-1], in_chans=net.in_chans, mean=list(pc["mean"]),
                std=list(pc["std"]), crop_pct=pc["crop_pct"], interpolation=pc["interpolation"])


def evaluate_checkpoint(path: str | os.PathLike, data: str = "fashion-mnist", split: str = "val",
                        img_size: int | None = None, batch_size: int = 100, workers: int = 0,
                        model: str | None = None, use_ema: bool | None = None, device: str = "cpu",
                        crop_pct: float | None = None, strict_data: bool = False) -> dict:
    """Top-1/top-5 and per-class accuracy of a checkpoint on a dataset split, at any resolution.

    The dataset's class folders are matched to the checkpoint's class names when it has them,
    otherwise they are taken in sorted order (as ImageNet's synset folders are).
    """
    net, classes, dc = load_for_inference(path, model=model, use_ema=use_ema)
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
    res.update(img_size=size, data=getattr(ds, "description", data))
    return res


@torch.no_grad()
def predict(path: str | os.PathLike, images: list[str | os.PathLike], topk: int = 5, model: str | None = None,
            img_size: int | None = None, use_ema: bool | None = None, device: str = "cpu") -> list[list[tuple]]:
    """Top-k (class name, probability) for each image file, best first."""
    from PIL import Image

    net, classes, dc = load_for_inference(path, model=model, use_ema=use_ema)
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
    names = classes or [str(i) for i in range(probs.shape[1])]
    return [[(names[j], float(q)) for q, j in zip(pr.tolist(), ix.tolist())] for pr, ix in zip(p, idx)]
