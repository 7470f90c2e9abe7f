"""Build a model from the authors' VSSM constructor keyword arguments."""
from __future__ import annotations

from typing import Any, Mapping

from .vmamba import VSSM

# Authors' keyword -> ours, for the keywords that map one to one.
_RENAMED = {
    "patch_size": "patch_size", "in_chans": "in_chans", "num_classes": "num_classes",
    "depths": "depths", "dims": "dims", "ssm_d_state": "d_state", "ssm_ratio": "ssm_ratio",
    "ssm_dt_rank": "dt_rank", "ssm_conv": "d_conv", "ssm_conv_bias": "conv_bias",
    "ssm_drop_rate": "ssm_drop_rate", "mlp_ratio": "mlp_ratio", "mlp_drop_rate": "mlp_drop_rate",
    "drop_path_rate": "drop_path_rate", "patch_norm": "patch_norm",
    "downsample_version": "downsample_version", "patchembed_version": "patch_embed_version",
}
# Keywords with a fixed set of supported values (what this implementation computes).
_SUPPORTED_VALUES = {
    "ssm_act_layer": ("silu",),
    "ssm_init": ("v0",),
    "mlp_act_layer": ("gelu",),
    "gmlp": (False,),
    "posembed": (False,),
    "norm_layer": ("ln", "ln2d"),   # layout only: both are LayerNorm over channels
    "downsample_version": ("v1", "v2", "v3"),
    "patchembed_version": ("v1", "v2"),
}
# forward_type -> whether SS2D gates its output with silu(z).
_FORWARD_TYPES = {"v0": True, "v2": True, "v05": True, "v05_noz": False}
# The authors' constructor defaults, used for keywords the dict leaves out.
_AUTHOR_DEFAULTS = dict(
    patch_size=4, in_chans=3, num_classes=1000, depths=[2, 2, 9, 2], dims=96, ssm_d_state=16,
    ssm_ratio=2.0, ssm_dt_rank="auto", ssm_conv=3, ssm_conv_bias=True, ssm_drop_rate=0.0,
    forward_type="v2", mlp_ratio=4.0, mlp_drop_rate=0.0, drop_path_rate=0.1, patch_norm=True,
    downsample_version="v2", patchembed_version="v1",
)
_IGNORED = {"imgsize"}  # only used by the positional embedding, which is unsupported


def from_official_config(kwargs: Mapping[str, Any], **overrides) -> VSSM:
    """The network described by the authors' ``VSSM(**kwargs)`` (e.g. a golden file's 'config').

    Keywords left out take the authors' defaults. Supported: forward_type in {v0, v2, v05, v05_noz}, norm_layer in {ln, ln2d}, downsample v1-v3,
    patch embed v1-v2, ssm_init v0, SiLU/GELU activations. Anything else raises a ValueError
    that names the keyword and value. ``overrides`` are passed to :class:`VSSM` (e.g.
    ``scan_backend``).
    """
    kwargs = {**_AUTHOR_DEFAULTS, **kwargs}
    problems = []
    for key, allowed in _SUPPORTED_VALUES.items():
        if key in kwargs:
            value = kwargs[key].lower() if isinstance(kwargs[key], str) else kwargs[key]
            if value not in allowed:
                problems.append(f"{key}={kwargs[key]!r} (supported: {list(allowed)})")
    forward_type = kwargs.pop("forward_type")
    if forward_type not in _FORWARD_TYPES:
        problems.append(f"forward_type={forward_type!r} (supported: {list(_FORWARD_TYPES)})")
    rank_ratio = kwargs.pop("ssm_rank_ratio", None)  # older releases; a no-op when equal to ssm_ratio
    if rank_ratio is not None and rank_ratio != kwargs["ssm_ratio"]:
        problems.append(f"ssm_rank_ratio={rank_ratio!r} (supported: equal to ssm_ratio)")
    unknown = sorted(set(kwargs) - set(_RENAMED) - set(_SUPPORTED_VALUES) - _IGNORED - {"use_checkpoint"})
    problems += [f"{k}={kwargs[k]!r} (unknown keyword)" for k in unknown]
    if problems:
        raise ValueError("unsupported official VSSM configuration: " + "; ".join(problems))

    config = {ours: kwargs[theirs] for theirs, ours in _RENAMED.items() if theirs in kwargs}
    if "dims" in config and not isinstance(config["dims"], int):
        config["dims"] = list(config["dims"])
    config["z_gate"] = _FORWARD_TYPES[forward_type]
    config.update(overrides)
    model = VSSM(**config)
    if kwargs.get("use_checkpoint"):
        model.set_grad_checkpointing(True)
    return model
