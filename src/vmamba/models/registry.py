"""Model registry: ``register_model``, ``list_models`` and ``create_model`` (timm-style).

This module only builds architectures. Loading weights (the authors' published files, your
checkpoints, folders, URLs) is :func:`vmamba.create_model` / :func:`vmamba.load`, which build
through here.
"""
from __future__ import annotations

import fnmatch
from typing import Callable

import torch.nn as nn

from .weights import PRETRAINED, split_tag

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register a model builder under its function name."""
    _MODELS[fn.__name__] = fn
    return fn


def list_models(pattern: str | None = None, pretrained: bool = False) -> list[str]:
    """Registered model names, sorted; only those matching the shell-style ``pattern`` if given.

    ``pretrained=True`` lists the published ImageNet weights instead, as ``model.tag`` names
    (timm's spelling); the detection/segmentation checkpoints are in ``vmamba.models.PRETRAINED``.
    """
    names = sorted(w.name for w in PRETRAINED.values() if w.model in _MODELS and w.task == "classification") \
        if pretrained else sorted(_MODELS)
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)
            or (pretrained and fnmatch.fnmatch(split_tag(n)[0], pattern))]


def is_model(name: str) -> bool:
    """Whether ``name`` is a registered model."""
    return name in _MODELS


def unknown_model_message(name: str) -> str:
    """'unknown model ...' with the registered names closest to ``name``."""
    close = [n for n in _MODELS if name.split("_")[0] in n]
    return f"unknown model {name!r}; registered models: {close or sorted(_MODELS)}"


def create_model(name: str, pretrained: bool = False, **kwargs) -> nn.Module:
    """Build the registered architecture ``name`` with random weights.

    Args:
        name: one of ``list_models()``.
        pretrained: must be False here; :func:`vmamba.create_model` loads published weights.
        **kwargs: overrides of the model's configuration, e.g. ``num_classes``,
            ``drop_path_rate``, ``scan_backend``, or ``features_only=True, out_indices=(...)``
            for the multi-scale backbone.
    """
    if name not in _MODELS:
        raise ValueError(unknown_model_message(name))
    if pretrained:
        raise ValueError("vmamba.models.create_model builds architectures only; "
                         "use vmamba.create_model(name, pretrained=True) for published weights")
    return _MODELS[name](**kwargs)
