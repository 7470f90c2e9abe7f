"""A model as a folder that vmamba and timm both rebuild exactly (timm's Hugging Face Hub layout).

::

    folder/
      model.safetensors   the weights (its metadata also holds the model config)
      config.json         {"architecture", "num_classes", "num_features", "global_pool",
                           "pretrained_cfg": {input_size, crop_pct, interpolation, mean, std, ...},
                           "model_args": {every constructor argument}}

``vmamba.create_model("path/to/folder")`` or ``from_pretrained`` rebuilds it here;
``timm.create_model("local-dir:path/to/folder", pretrained=True)`` rebuilds it through timm.
``pretrained_cfg`` is what evaluation and prediction read for preprocessing.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch.nn as nn

from .checkpoint import CheckpointError, atomic_save, load_checkpoint, model_from_config, save_weights

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
# pretrained_cfg fields a user may set when saving (the preprocessing a model expects).
DATA_FIELDS = ("input_size", "crop_pct", "interpolation", "mean", "std", "label_names")


def pretrained_cfg_of(model: nn.Module) -> dict:
    """The model's ``pretrained_cfg`` (timm's preprocessing and head description), made current:
    ``num_classes`` follows the head, tuples become lists (JSON)."""
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    cfg["num_classes"] = getattr(model, "num_classes", cfg.get("num_classes", 0))
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}


def save_pretrained(model: nn.Module, directory: str | os.PathLike, **pretrained_cfg) -> Path:
    """Write ``model`` to ``directory`` as ``model.safetensors`` + ``config.json``; returns the folder.

    Keyword arguments update the stored ``pretrained_cfg`` (only :data:`DATA_FIELDS`), e.g.
    ``mean=..., std=..., input_size=(3, 64, 64), label_names=[...]`` for a model trained on your
    own data, so that evaluation and prediction preprocess images as in training.
    """
    unknown = sorted(set(pretrained_cfg) - set(DATA_FIELDS))
    if unknown:
        raise ValueError(f"save_pretrained: unknown pretrained_cfg field(s) {unknown}; allowed: {list(DATA_FIELDS)}")
    config = dict(getattr(model, "config", None) or {})
    if "depths" not in config:
        raise TypeError(f"save_pretrained: {type(model).__name__} is not a vmamba model (no .config)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    architecture = config.pop("architecture", None) or "vssm"
    cfg = {**pretrained_cfg_of(model), **pretrained_cfg, "architecture": architecture}
    if "input_size" in pretrained_cfg:  # the head's feature map at that size (timm's pool_size)
        cfg["pool_size"] = [-(-pretrained_cfg["input_size"][-2] // 32), -(-pretrained_cfg["input_size"][-1] // 32)]
    cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}
    doc = dict(architecture=architecture, num_classes=cfg["num_classes"],
               num_features=getattr(model, "num_features", None), global_pool=config.get("global_pool"),
               pretrained_cfg=cfg, model_args=config)
    save_weights(model, directory / WEIGHTS_NAME)
    atomic_save(lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=2) + "\n"), directory / CONFIG_NAME)
    return directory


def read_pretrained_config(directory: str | os.PathLike) -> dict:
    """The parsed ``config.json`` of a folder written by :func:`save_pretrained` (clear errors)."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{directory}: no {CONFIG_NAME} (not a folder written by save_pretrained)")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt JSON ({e})") from None
    if not isinstance(doc, dict) or "model_args" not in doc or "architecture" not in doc:
        raise CheckpointError(f"{path}: missing 'architecture' or 'model_args'")
    return doc


def from_pretrained(source: str | os.PathLike, **overrides) -> nn.Module:
    """Rebuild a model saved by :func:`save_pretrained` (a folder) or by ``save_weights`` (a file).

    ``overrides`` change constructor arguments (e.g. ``scan_backend="torch"``, ``drop_path_rate``);
    changing ``num_classes`` drops the stored head (the other weights still load strictly).
    """
    from .checkpoint import load_model

    source = Path(str(source).removeprefix("local-dir:"))
    if source.is_file():
        return load_model(source, **overrides)
    doc = read_pretrained_config(source)
    args = dict(doc["model_args"])
    if doc["architecture"] != "vssm":
        args["architecture"] = doc["architecture"]
    new_head = "num_classes" in overrides and overrides["num_classes"] != args.get("num_classes")
    model = model_from_config(args, **overrides)
    weights = source / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{source}: no {WEIGHTS_NAME}")
    load_checkpoint(model, weights, exclude=("classifier.head.",) if new_head else ())
    cfg = dict(doc.get("pretrained_cfg") or {})
    cfg.pop("file", None), cfg.pop("source", None)
    model.pretrained_cfg = model.default_cfg = {**getattr(model, "pretrained_cfg", {}), **cfg,
                                                "num_classes": model.num_classes}
    return model
