"""Dense prediction with VMamba backbones: Mask R-CNN (MMDetection) and UperNet (MMSegmentation).

This package itself needs only torch: the OpenMMLab parts are imported by ``vmamba.mmdet`` and
``vmamba.mmseg`` (which register the backbones), never by ``import vmamba``.

* :func:`load_dense_checkpoint`: the authors' (or any) detection/segmentation checkpoint into a
  built detector/segmentor, strictly for the backbone, with :class:`vmamba.CheckpointError`'s
  listings on any mismatch.
* :func:`config_path`, :func:`list_configs`: the paper's configs shipped with the package.
* :mod:`vmamba.dense.data`: the generated demo datasets; :mod:`vmamba.dense.demo`: the CPU demo.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping

import torch.nn as nn

from ..checkpoint import CheckpointError, LoadReport, extract_state_dict, load_checkpoint, read_checkpoint

__all__ = ["CONFIG_DIR", "config_path", "list_configs", "load_dense_checkpoint"]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def list_configs(toolkit: str | None = None) -> list[str]:
    """Names ('mmdet/NAME' or 'mmseg/NAME', no '.py') of the shipped configs, sorted."""
    kits = [toolkit] if toolkit else ["mmdet", "mmseg"]
    return sorted(f"{kit}/{p.stem}" for kit in kits for p in (CONFIG_DIR / kit).glob("*.py"))


def config_path(name: str) -> Path:
    """Path of a shipped config: 'mmdet/NAME', 'mmseg/NAME' or a unique bare NAME ('.py' optional)."""
    stem = name[:-3] if name.endswith(".py") else name
    matches = [c for c in list_configs() if c == stem or c.split("/", 1)[1] == stem]
    if len(matches) != 1:
        close = [c for c in list_configs() if stem.split("/")[-1] in c]
        raise ValueError(f"no unique shipped config {name!r}" + (f"; close: {close}" if close else
                         f"; see list_configs() ({len(list_configs())} configs)"))
    return CONFIG_DIR / f"{matches[0]}.py"


def load_dense_checkpoint(
    model: nn.Module,
    source: str | os.PathLike | Mapping,
    strict: bool = True,
    exclude: Iterable[str] = (),
) -> LoadReport:
    """Load a detection/segmentation checkpoint (keys 'backbone.*', 'neck.*', 'decode_head.*',
    ...) into ``model``, a built MMDetection detector or MMSegmentation segmentor (anything
    with a ``backbone`` attribute).

    The backbone part is always loaded strictly through :func:`vmamba.load_checkpoint` (the
    authors' older key names and 1x1-conv weights of linear layers are understood); the rest
    is checked the same way with ``strict`` and ``exclude`` (key prefixes to skip on both
    sides, e.g. ``['roi_head.bbox_head.fc_cls']`` to fine-tune on other classes).

    Returns:
        LoadReport of what the non-backbone part left out (empty when strict).

    Raises:
        CheckpointError naming the file and listing missing, unexpected and wrongly shaped
        keys; FileNotFoundError.
    """
    if not isinstance(getattr(model, "backbone", None), nn.Module):
        raise TypeError(f"{type(model).__name__} has no backbone module; for a bare backbone use "
                        f"vmamba.load_checkpoint or vmamba.dense.backbone.load_backbone_weights")
    name = "state dict" if isinstance(source, Mapping) else str(source)
    contents = source if isinstance(source, Mapping) else read_checkpoint(source)[0]
    state = extract_state_dict(contents, source=name)
    backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    if not backbone:
        raise CheckpointError(f"{name}: no 'backbone.*' weights, so not a detection/segmentation "
                              f"checkpoint (first keys: {list(state)[:5]}); initialise the backbone "
                              f"from a classification checkpoint with init_cfg instead")
    try:
        load_checkpoint(model.backbone, backbone, strict=True)
    except CheckpointError as e:
        raise CheckpointError(f"{name}: its backbone.* weights do not fit the model's backbone "
                              f"({getattr(model.backbone, 'arch', type(model.backbone).__name__)})"
                              f"\n{e}") from None
    loaded = {f"backbone.{k}": v for k, v in model.backbone.state_dict().items()}
    rest = {k: v for k, v in state.items() if not k.startswith("backbone.")}
    try:
        return load_checkpoint(model, {**loaded, **rest}, strict=strict, exclude=exclude)
    except CheckpointError as e:
        raise CheckpointError(f"{name}: its non-backbone weights do not fit "
                              f"{type(model).__name__}\n{e}") from None
