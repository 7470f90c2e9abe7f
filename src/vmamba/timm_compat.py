"""Make the model zoo and its published weights reachable through timm (timm stays optional).

``import vmamba`` calls :func:`register_timm_models` by itself when timm is already imported;
otherwise call it once after importing timm::

    import timm, vmamba
    vmamba.register_timm_models()
    model = timm.create_model("vmamba_tiny_s1l8", pretrained=True)       # default tag
    model = timm.create_model("vanilla_vmamba_small.in1k_ema", pretrained=True, num_classes=10)
    model = timm.create_model("local-dir:FOLDER", pretrained=True)       # a vmamba.save_pretrained folder

The entrypoints are defined here (timm lists them under this module, ``timm_compat``); the
published tags reach timm as this module's ``default_cfgs``, the way timm's own model files
declare theirs, and ``pretrained=True`` loads through :func:`vmamba.load`.
"""
from __future__ import annotations

from pathlib import Path

from .models.registry import list_models
from .models.weights import PRETRAINED
from .pretrained import create_model, load

_REGISTERED = False
default_cfgs: dict = {}  # filled by register_timm_models (timm's register_model reads it)


def _entrypoint(name: str):
    def entrypoint(pretrained: bool = False, pretrained_cfg=None, pretrained_cfg_overlay=None,
                   cache_dir=None, device=None, dtype=None, **kwargs):
        kwargs.pop("pretrained_model_args", None)  # timm's copy of model_args, already in kwargs
        cfg = _cfg_dict(pretrained_cfg)
        cfg.update(pretrained_cfg_overlay or {})
        file = cfg.get("file")
        tag = pretrained_cfg if isinstance(pretrained_cfg, str) else cfg.get("tag")
        if pretrained and file:  # a local-dir folder or a file named through pretrained_cfg_overlay
            model = load(file).model if Path(file).is_dir() else load(file, model=name, **kwargs).model
        elif pretrained:
            model = create_model(f"{name}.{tag}" if tag else name, pretrained=True, **kwargs)
        else:
            model = create_model(name, **kwargs)
        if device is not None or dtype is not None:
            model = model.to(device=device, dtype=dtype)
        return model

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__doc__ = f"VMamba {name} (from the vmamba package)."
    return entrypoint


def _cfg_dict(cfg) -> dict:
    """timm passes a PretrainedCfg dataclass, a dict, a tag string or None."""
    if cfg is None or isinstance(cfg, str):
        return {}
    if isinstance(cfg, dict):
        return dict(cfg)
    return {k: v for k, v in vars(cfg).items() if v is not None}


def _timm_cfgs() -> dict:
    """timm's pretrained cfgs of the published classification tags (``model.tag`` -> dict)."""
    from .models.vmamba import default_pretrained_cfg

    cfgs = {}
    for w in PRETRAINED.values():
        if w.task == "classification":
            base = default_pretrained_cfg(w.model, w.num_classes)
            base.pop("architecture"), base.pop("tag")
            cfgs[w.name] = {**base, **w.preprocessing, "url": w.url, "notes": w.notes or None}
    return cfgs


def register_timm_models() -> list[str]:
    """Register every zoo model (and its published tags) in timm's registry; returns the names.
    Needs timm installed."""
    global _REGISTERED
    try:
        from timm.models import generate_default_cfgs, register_model
    except ImportError as e:
        raise ImportError("register_timm_models needs timm: pip install 'vmamba[timm]'") from e
    names = list_models()
    if not _REGISTERED:
        default_cfgs.update(generate_default_cfgs(_timm_cfgs()))
        for name in names:
            register_model(_entrypoint(name))
        _REGISTERED = True
    return names
