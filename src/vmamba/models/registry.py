"""Model registry: ``register_model``, ``list_models`` and ``create_model`` (timm-style)."""
from __future__ import annotations

import fnmatch
import os
from typing import Callable

import torch.nn as nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register a model builder under its function name."""
    _MODELS[fn.__name__] = fn
    return fn


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, sorted; only those matching the shell-style ``pattern`` if given."""
    names = sorted(_MODELS)
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


def is_model(name: str) -> bool:
    """Whether ``name`` is a registered model."""
    return name in _MODELS


def create_model(
    name: str,
    pretrained: bool = False,
    checkpoint_path: str | None = None,
    **kwargs,
) -> nn.Module:
    """Build the registered model ``name``.

    Args:
        name: one of ``list_models()``, or a folder written by ``vmamba.save_pretrained`` (also
            as ``"local-dir:FOLDER"``, timm's spelling) or a file written by ``save_weights``.
        pretrained: not supported (nothing is ever downloaded); pass ``checkpoint_path``.
        checkpoint_path: weights to load strictly after building (the authors' checkpoints,
            this project's, or safetensors); see :func:`vmamba.load_checkpoint`.
        **kwargs: overrides of the model's configuration, e.g. ``num_classes``,
            ``drop_path_rate``, ``scan_backend``, or ``features_only=True, out_indices=(...)``
            for the multi-scale backbone.
    """
    if name not in _MODELS and (name.startswith("local-dir:") or os.path.exists(name)):
        from ..pretrained import from_pretrained  # a folder from save_pretrained, or a saved file

        if pretrained or checkpoint_path is not None:
            raise ValueError(f"create_model({name!r}): a saved model brings its own weights; "
                             f"pretrained/checkpoint_path do not apply")
        return from_pretrained(name, **kwargs)
    if name not in _MODELS:
        close = [n for n in _MODELS if name.split("_")[0] in n]
        raise ValueError(f"unknown model {name!r}; registered models: {close or sorted(_MODELS)}")
    if pretrained:
        raise ValueError(
            "pretrained=True: vmamba never downloads weights. Download a checkpoint yourself "
            "and pass checkpoint_path=... (or call vmamba.load_checkpoint)."
        )
    model = _MODELS[name](**kwargs)
    if checkpoint_path is not None:
        from ..checkpoint import load_checkpoint

        load_checkpoint(model, checkpoint_path)
    return model
