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

__all__ = ["CONFIG_DIR", "config_path", "list_configs", "load_dense_checkpoint", "with_checkpoint", "PREFIX"]

PREFIX = "vmamba://"  # mmengine's load_from / init_cfg spelling of a published tag: 'vmamba://NAME.TAG'


def with_checkpoint(source, load):
    """``load(contents, name)`` for a checkpoint source, returning its result.

    ``source`` is a loaded dict, a file, an http(s) URL or a published tag (``NAME.TAG``, also as
    ``vmamba://NAME.TAG``; ``vmamba.models.PRETRAINED`` lists them). URLs and tags are fetched
    into torch hub's cache through :mod:`vmamba.hub`, and kept only when ``load`` (a strict load
    into the model) accepted the file.
    """
    from .. import hub
    from ..models import registry
    from ..models.weights import get_weights, split_tag

    if isinstance(source, Mapping):
        return load(source, "state dict")
    text = str(source).removeprefix(PREFIX)
    if hub.is_url(text):
        return hub.fetch(text, hub.url_file_name(text), lambda path: load(read_checkpoint(path)[0], text))
    if not os.path.exists(text) and (str(source).startswith(PREFIX) or registry.is_model(split_tag(text)[0])):
        weights = get_weights(text)
        return hub.fetch_published(weights, lambda path: load(read_checkpoint(path)[0], weights.name))
    return load(read_checkpoint(text)[0], text)

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
    """Load a detection/segmentation checkpoint (a file, a URL, a dict, or one of the authors'
    published ones by tag, e.g. ``'vmamba_tiny_s1l8.coco_mask_rcnn_1x'``; downloads are kept only
    once they loaded) (keys 'backbone.*', 'neck.*', 'decode_head.*',
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

    def load(contents, name):
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

    return with_checkpoint(source, load)


def read_dense_checkpoint(source: str | os.PathLike) -> dict:
    """The contents of a detection/segmentation checkpoint source (file, URL, ``NAME.TAG`` or
    ``vmamba://NAME.TAG``), for mmengine's ``load_from``. A published one is checked first: its
    ``backbone.*`` weights must load strictly into the named architecture (the file is kept in
    torch hub's cache only then)."""
    from ..models import registry
    from ..models.vmamba import build_vssm
    from ..models.weights import get_weights, split_tag

    text = str(source).removeprefix(PREFIX)
    weights = get_weights(text) if not os.path.exists(text) and registry.is_model(split_tag(text)[0]) else None

    def check(contents, name):
        if weights is not None:
            state = extract_state_dict(contents, source=name)
            backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
            if not backbone:
                raise CheckpointError(f"{name}: no 'backbone.*' weights, so not a detection/segmentation checkpoint")
            load_checkpoint(build_vssm(weights.model, features_only=True), backbone, name=name)
        return dict(contents)

    return with_checkpoint(source, check)


def register_checkpoint_scheme() -> None:
    """Let mmengine's loaders (``load_from``, ``init_cfg``, ``tools/test.py``) read ``vmamba://NAME.TAG``."""
    from mmengine.runner.checkpoint import CheckpointLoader

    CheckpointLoader.register_scheme(PREFIX, lambda filename, map_location=None: read_dense_checkpoint(filename),
                                     force=True)
