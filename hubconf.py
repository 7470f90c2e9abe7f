"""torch.hub entry points: ``torch.hub.load(REPO_OR_DIR, "vmamba_tiny_s1l8", pretrained=True)``.

Each zoo model is an entry point taking ``pretrained`` (the authors' published ImageNet weights,
downloaded once into torch hub's cache) and the keyword arguments of ``vmamba.create_model``
(``num_classes`` for a new head, ``features_only``, ``tag`` for another published tag, ...).
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))

dependencies = ["torch", "safetensors"]

from vmamba.pretrained import create_model as _create_model  # noqa: E402


def _entry(name):
    def entry(pretrained=False, tag=None, **kwargs):
        return _create_model(f"{name}.{tag}" if tag else name, pretrained=pretrained, **kwargs)

    entry.__name__ = name
    entry.__doc__ = f"VMamba {name}; pretrained=True loads its published ImageNet-1k weights (tag=... for another)."
    return entry


vanilla_vmamba_tiny = _entry("vanilla_vmamba_tiny")
vanilla_vmamba_small = _entry("vanilla_vmamba_small")
vanilla_vmamba_base = _entry("vanilla_vmamba_base")
vmamba_tiny_s1l8 = _entry("vmamba_tiny_s1l8")
vmamba_small_s1l20 = _entry("vmamba_small_s1l20")
vmamba_base_s1l20 = _entry("vmamba_base_s1l20")
vmamba_tiny_s2l5 = _entry("vmamba_tiny_s2l5")
vmamba_small_s2l15 = _entry("vmamba_small_s2l15")
vmamba_base_s2l15 = _entry("vmamba_base_s2l15")
