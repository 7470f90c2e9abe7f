"""Make the model zoo reachable through ``timm.create_model`` (timm stays optional).

``import vmamba`` calls :func:`register_timm_models` by itself when timm is already imported;
otherwise call it once after importing timm::

    import timm, vmamba
    model = timm.create_model("vmamba_tiny_s1l8", num_classes=10)
    model = timm.create_model("local-dir:FOLDER", pretrained=True)  # a vmamba.save_pretrained folder
"""
from __future__ import annotations

from pathlib import Path

from .models.registry import create_model, list_models
from .pretrained import from_pretrained

_REGISTERED = False


def _entrypoint(name: str):
    def entrypoint(pretrained: bool = False, pretrained_cfg=None, pretrained_cfg_overlay=None,
                   cache_dir=None, device=None, dtype=None, **kwargs):
        kwargs.pop("pretrained_model_args", None)  # timm's copy of model_args, already in kwargs
        cfg = _cfg_dict(pretrained_cfg)
        cfg.update(pretrained_cfg_overlay or {})
        source = cfg.get("file")
        if pretrained and not source:
            raise ValueError(f"{name}: vmamba never downloads weights; use timm.create_model("
                             f"'local-dir:FOLDER', pretrained=True) with a folder from vmamba.save_pretrained, "
                             f"or pretrained_cfg_overlay=dict(file=PATH)")
        if pretrained:
            model = from_pretrained(source, **kwargs) if Path(source).is_dir() else create_model(
                name, checkpoint_path=source, **kwargs)
        else:
            model = create_model(name, **kwargs)
        if device is not None or dtype is not None:
            model = model.to(device=device, dtype=dtype)
        return model

    entrypoint.__name__ = entrypoint.__qualname__ = name
    # timm files a model under the last part of its module name: "vmamba".
    entrypoint.__module__ = "vmamba.models.vmamba"
    entrypoint.__doc__ = f"VMamba {name} (from the vmamba package)."
    return entrypoint


def _cfg_dict(cfg) -> dict:
    """timm passes a PretrainedCfg dataclass, a dict, a tag string or None."""
    if cfg is None or isinstance(cfg, str):
        return {}
    if isinstance(cfg, dict):
        return dict(cfg)
    return {k: v for k, v in vars(cfg).items() if v is not None}


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
