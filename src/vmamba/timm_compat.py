"""Make the model zoo reachable through ``timm.create_model`` (timm stays optional).

``import vmamba`` calls :func:`register_timm_models` by itself when timm is already imported;
otherwise call it once after importing timm::

    import timm, vmamba
    model = timm.create_model("vmamba_tiny_s1l8", num_classes=10)
"""
from __future__ import annotations

from .models.registry import create_model, list_models

_REGISTERED = False


def _entrypoint(name: str):
    def entrypoint(pretrained: bool = False, pretrained_cfg=None, pretrained_cfg_overlay=None,
                   cache_dir=None, device=None, dtype=None, **kwargs):
        model = create_model(name, pretrained=pretrained, **kwargs)
        if device is not None or dtype is not None:
            model = model.to(device=device, dtype=dtype)
        return model

    entrypoint.__name__ = entrypoint.__qualname__ = name
    # timm files a model under the last part of its module name: "vmamba".
    entrypoint.__module__ = "vmamba.models.vmamba"
    entrypoint.__doc__ = f"VMamba {name} (from the vmamba package)."
    return entrypoint


def register_timm_models() -> list[str]:
    """Register every zoo model in timm's registry; returns the names. Needs timm installed."""
    global _REGISTERED
    try:
        from timm.models import register_model
    except ImportError as e:
        raise ImportError("register_timm_models needs timm: pip install 'vmamba[timm]'") from e
    names = list_models()
    if not _REGISTERED:
        for name in names:
            register_model(_entrypoint(name))
        _REGISTERED = True
    return names
