"""The VMamba backbone as an OpenMMLab module (needs mmengine; registered by vmamba.mmdet/mmseg).

``VMambaBackbone`` *is* a :class:`vmamba.VSSMFeatures` (same parameter names as the authors'
``Backbone_VSSM``: ``patch_embed.*``, ``layers.i.blocks.j.*``, ``outnorm{i}.*``), so a detector's
``backbone.*`` weights of the authors' release load into it directly, through the OpenMMLab
tools as well as through :func:`vmamba.dense.load_dense_checkpoint`. On top it adds what the
toolkits expect of a backbone: ``init_cfg`` (a classification checkpoint of this project or of
the authors, optionally their EMA weights), ``frozen_stages`` and ``train()`` that keeps frozen
stages in eval mode.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import torch.nn as nn
from mmengine.model import BaseModule

from ..checkpoint import CheckpointError, _fit_linear_shapes, convert_official_state_dict, extract_state_dict, load_checkpoint
from ..models.vmamba import ZOO, VSSMFeatures

__all__ = ["VMambaBackbone", "load_backbone_weights", "register_backbones", "zoo_backbone_config"]


def zoo_backbone_config(arch: str, **overrides) -> dict:
    """The VSSM keyword arguments of zoo model ``arch`` with ``overrides`` applied."""
    if arch not in ZOO:
        raise ValueError(f"unknown VMamba arch {arch!r}; choose from {sorted(ZOO)}")
    return {**ZOO[arch], **overrides}


def load_backbone_weights(backbone: VSSMFeatures, source, use_ema: bool = False) -> None:
    """Initialise a backbone from a classification or dense checkpoint, strictly.

    ``source`` is a path, a URL, a published tag (``'vmamba_tiny_s1l8.in1k'``, downloaded once into
    torch hub's cache) or a loaded dict: this project's checkpoints and safetensors files,
    the authors' classification checkpoints (``use_ema=True`` takes their 'model_ema'), or a
    detection/segmentation checkpoint (its ``backbone.*`` part). The classifier is ignored;
    the per-stage norms ``outnorm{i}`` are taken when the file has them (a dense checkpoint)
    and keep their fresh initialisation otherwise (a classification checkpoint). Every other
    weight must be there with the right shape, or a :class:`vmamba.CheckpointError` lists
    what does not fit.
    """
    from . import PREFIX, with_checkpoint
    from ..models import registry
    from ..models.weights import get_weights, split_tag

    text = str(source).removeprefix(PREFIX) if isinstance(source, (str, Path)) else None
    if text is not None and not Path(text).exists() and registry.is_model(split_tag(text)[0]):
        use_ema = use_ema or get_weights(text).weights == "model_ema"  # the published tag says which
    return with_checkpoint(source, lambda contents, name: _load_backbone(backbone, contents, name, use_ema))


def _load_backbone(backbone: VSSMFeatures, contents: Mapping, name: str, use_ema: bool) -> None:
    state = convert_official_state_dict(extract_state_dict(contents, use_ema=use_ema, source=name), backbone)
    keep = {f"outnorm{i}." for i in backbone.out_indices}
    state = {k: v for k, v in state.items()
             if not (k.startswith("outnorm") and k[: k.index(".") + 1] not in keep)}
    exclude = ["classifier."]
    if not any(k.startswith("outnorm") for k in state):
        exclude.append("outnorm")
    try:
        load_checkpoint(backbone, state, strict=True, exclude=exclude)
    except CheckpointError as e:
        raise CheckpointError(f"{name}: cannot initialise {type(backbone).__name__} "
                              f"({getattr(backbone, 'arch', '?')}) from it\n{e}") from None


class VMambaBackbone(VSSMFeatures, BaseModule):
    """A zoo VMamba as a multi-scale backbone: a list of NCHW maps at strides 4, 8, 16, 32.

    Args:
        arch: zoo model name (``vmamba.list_models()``), e.g. ``'vmamba_tiny_s1l8'``.
        out_indices: stages whose (normed) outputs are returned.
        frozen_stages: -1 trains everything; k >= 0 freezes the stem and the first k stages
            (their blocks, downsamplers and output norms), kept in eval mode.
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH, use_ema=False)`` loads a
            classification (or dense) checkpoint through :func:`load_backbone_weights`; other
            mmengine init configs are passed on to mmengine.
        pretrained: shorthand for ``init_cfg=dict(type='Pretrained', checkpoint=pretrained)``
            (the authors' configs use it).
        with_cp: recompute each block in the backward pass (saves activation memory).
        **overrides: VSSM settings, e.g. ``drop_path_rate``, ``dims``, ``depths``, ``scan_backend``.
    """

    def __init__(self, arch: str = "vmamba_tiny_s1l8", out_indices: Sequence[int] = (0, 1, 2, 3),
                 frozen_stages: int = -1, init_cfg: dict | list | None = None,
                 pretrained: str | None = None, with_cp: bool = False, **overrides):
        if pretrained is not None:
            if init_cfg is not None:
                raise ValueError("give either pretrained or init_cfg, not both")
            init_cfg = dict(type="Pretrained", checkpoint=pretrained)
        super().__init__(out_indices=out_indices, **zoo_backbone_config(arch, **overrides))
        self.init_cfg = init_cfg
        self.arch = arch
        self.config["architecture"] = arch
        if not -1 <= frozen_stages <= len(self.layers):
            raise ValueError(f"frozen_stages={frozen_stages}: must be in [-1, {len(self.layers)}]")
        self.frozen_stages = frozen_stages
        self._freeze_stages()
        self.set_grad_checkpointing(with_cp)

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        mods = [self.patch_embed] + list(self.layers[: self.frozen_stages])
        mods += [getattr(self, f"outnorm{i}") for i in self.out_indices if i < self.frozen_stages]
        return mods

    def _freeze_stages(self) -> None:
        for m in self._frozen_modules():
            m.eval()
            for p in m.parameters():
                p.requires_grad = False

    def train(self, mode: bool = True):
        """Train mode for everything but the frozen stages."""
        super().train(mode)
        self._freeze_stages()
        return self

    def init_weights(self) -> None:
        """Load ``init_cfg``'s checkpoint (type 'Pretrained'), else let mmengine initialise."""
        cfgs = self.init_cfg if isinstance(self.init_cfg, (list, tuple)) else [self.init_cfg]
        pretrained = [c for c in cfgs if c and c.get("type") == "Pretrained"]
        if len(pretrained) > 1:
            raise ValueError(f"more than one Pretrained init_cfg: {pretrained}")
        others = [c for c in cfgs if c and c.get("type") != "Pretrained"]
        if others:  # e.g. a custom initialiser; the constructor already set the paper's init
            self.init_cfg = others
            BaseModule.init_weights(self)
        if pretrained:
            cfg = pretrained[0]
            unknown = set(cfg) - {"type", "checkpoint", "use_ema"}
            if unknown:
                raise ValueError(f"init_cfg keys {sorted(unknown)} are not supported by "
                                 f"{type(self).__name__} (use type, checkpoint, use_ema)")
            load_backbone_weights(self, cfg["checkpoint"], use_ema=bool(cfg.get("use_ema", False)))
        self.init_cfg = cfgs if len(cfgs) > 1 else cfgs[0]
        self._is_init = True

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Lets every loader (mmengine's load_from / tools/test.py included) read the authors'
        # older key names and their (O, I, 1, 1) weights of linear layers.
        keys = [k for k in state_dict if k.startswith(prefix)]
        if keys:
            mine = {k[len(prefix):]: state_dict.pop(k) for k in keys}
            mine = _fit_linear_shapes(convert_official_state_dict(mine, self), self.state_dict())
            state_dict.update({prefix + k: v for k, v in mine.items()})
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, out_indices={self.out_indices}, frozen_stages={self.frozen_stages}"


def _zoo_class(arch: str) -> type:
    """A subclass of VMambaBackbone fixed to ``arch`` (registered under the zoo name)."""

    def __init__(self, **kwargs):
        if kwargs.pop("arch", arch) != arch:
            raise ValueError(f"backbone type {arch!r} fixes arch={arch!r}")
        VMambaBackbone.__init__(self, arch=arch, **kwargs)

    return type(arch, (VMambaBackbone,), {
        "__init__": __init__, "__module__": __name__,
        "__doc__": f"VMambaBackbone with arch={arch!r} (see VMambaBackbone for the arguments)."})


ZOO_BACKBONES = {name: _zoo_class(name) for name in ZOO}


def register_backbones(registry) -> list[str]:
    """Register ``VMambaBackbone`` as 'VMamba' and each zoo model under its own name (and the
    ``vmamba://`` checkpoint scheme with mmengine)."""
    from . import register_checkpoint_scheme

    register_checkpoint_scheme()  # load_from='vmamba://NAME.TAG' (the authors' published checkpoints)
    registry.register_module(name="VMamba", module=VMambaBackbone, force=True)
    for name, cls in ZOO_BACKBONES.items():
        registry.register_module(name=name, module=cls, force=True)
    return ["VMamba", *ZOO_BACKBONES]
