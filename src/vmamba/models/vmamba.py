"""VMamba (VSSM): the hierarchical visual state-space backbone and its model zoo.

Both families of the authors' release are built here:

* v0, the paper's "vanilla" VMamba: VSS block = x + DropPath(SS2D(LN(x))), v1 stem and
  patch-merging downsampler, d_state 16, ssm_ratio 2, gated SS2D;
* v2 ("v05_noz"): an MLP branch in every block, the two-conv stem and conv downsampler,
  d_state 1, no gate.

Activations are channel-last inside the network; every public output is NCHW. Parameter names
follow the authors' release, so their checkpoints load with :func:`vmamba.load_checkpoint`.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from ..ops import LayerNorm, Linear

from .layers import (DropPath, Mlp, check_arg, hooked, is_identity, is_int, make_downsample, make_patch_embed,
                     to_channels_first)
from .registry import register_model
from .ss2d import SS2D, check_ss2d_args
from .weights import IMAGENET_MEAN, IMAGENET_STD, IMAGENET_PREPROCESSING, LICENSE, PAPER  # noqa: F401

__all__ = ["VSSM", "VSSMFeatures", "FeatureInfo", "VSSBlock", "VSSStage", "ClassifierHead", "ZOO", "build_vssm",
           "IMAGENET_MEAN", "IMAGENET_STD"]



class FeatureInfo(list):
    """Per-stage feature descriptions (dicts of num_chs, reduction, module), timm-style."""

    def channels(self, idx: int | None = None):
        return self._get("num_chs", idx)

    def reduction(self, idx: int | None = None):
        return self._get("reduction", idx)

    def module_name(self, idx: int | None = None):
        return self._get("module", idx)

    def _get(self, key: str, idx: int | None):
        return [f[key] for f in self] if idx is None else self[idx][key]


class VSSBlock(nn.Module):
    """x = x + DropPath(SS2D(LN(x))), then x = x + DropPath(Mlp(LN2(x))) when mlp_ratio > 0."""

    def __init__(self, dim: int, drop_path: float = 0.0, mlp_ratio: float = 0.0,
                 mlp_drop_rate: float = 0.0, **ss2d_kwargs):
        super().__init__()
        self.norm = LayerNorm(dim, eps=1e-5)
        self.op = SS2D(dim, **ss2d_kwargs)
        self.drop_path = DropPath(drop_path)
        if mlp_ratio > 0:
            self.norm2 = LayerNorm(dim, eps=1e-5)
            self.mlp = Mlp(dim, int(dim * mlp_ratio), mlp_drop_rate)
        else:
            self.norm2 = self.mlp = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        no_drop = is_identity(self.drop_path)
        if no_drop and not hooked(self.op):
            x = self.op(self.norm(x), residual=x)  # the add is fused into out_proj at inference
        else:
            x = self.drop_path.add_to(x, self.op(self.norm(x)))
        if self.mlp is not None:
            if no_drop and not hooked(self.mlp):
                x = self.mlp(self.norm2(x), residual=x)
            else:
                x = self.drop_path.add_to(x, self.mlp(self.norm2(x)))
        return x


class VSSStage(nn.Module):
    """A stage: ``blocks`` at one resolution, then ``downsample`` (Identity after the last)."""

    def __init__(self, blocks: Sequence[nn.Module], downsample: nn.Module):
        super().__init__()
        self.blocks = nn.Sequential(*blocks)
        self.downsample = downsample
        self.grad_checkpointing = False

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """The stage's blocks only (its output before downsampling), channel-last."""
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(self.forward_blocks(x))


class ClassifierHead(nn.Module):
    """Final LayerNorm (``norm``, applied by ``forward_features``), pooling, dropout, ``head``."""

    def __init__(self, dim: int, num_classes: int, global_pool: str = "avg", drop_rate: float = 0.0):
        super().__init__()
        if global_pool not in ("avg", "max", ""):
            raise ValueError(f"global_pool must be 'avg', 'max' or '', got {global_pool!r}")
        self.global_pool = global_pool
        self.norm = LayerNorm(dim, eps=1e-5)
        self.drop = nn.Dropout(drop_rate)
        self.head = Linear(dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, C, H, W) normed features -> (B, num_classes) (or pooled features)."""
        if self.global_pool == "avg":
            x = x.mean(dim=(2, 3))
        elif self.global_pool == "max":
            x = x.amax(dim=(2, 3))
        else:  # no pooling: per-position features, channel-last for the head
            x = x.permute(0, 2, 3, 1)
        x = self.drop(x)
        if pre_logits:
            return x if self.global_pool else to_channels_first(x)
        x = self.head(x)
        return x if self.global_pool else to_channels_first(x)


class VSSM(nn.Module):
    """The VMamba classifier: stem, 4 stages of VSS blocks, LayerNorm, pooling, linear head.

    Args:
        depths: blocks per stage.
        dims: channels of the first stage (doubled per stage) or one value per stage.
        in_chans, num_classes: input channels and classes (0: no head).
        d_state, ssm_ratio, dt_rank, d_conv, conv_bias, z_gate, ssm_drop_rate, scan_mode,
            scan_backend: SS2D settings (see :class:`vmamba.models.ss2d.SS2D`).
        mlp_ratio, mlp_drop_rate: MLP branch of each block (0 = none, as in v0).
        drop_path_rate: stochastic depth, growing linearly from 0 over all blocks.
        drop_rate: dropout before the head.
        patch_size, patch_embed_version ('v1'|'v2'), patch_norm: the stem.
        downsample_version: 'v1' (patch merging), 'v2' or 'v3' (strided conv).
        global_pool: 'avg', 'max' or '' (none).
    """

    def __init__(
        self,
        depths: Sequence[int] = (2, 2, 9, 2),
        dims: int | Sequence[int] = 96,
        in_chans: int = 3,
        num_classes: int = 1000,
        d_state: int = 16,
        ssm_ratio: float = 2.0,
        dt_rank: int | str = "auto",
        d_conv: int = 3,
        conv_bias: bool = True,
        z_gate: bool = True,
        ssm_drop_rate: float = 0.0,
        mlp_ratio: float = 0.0,
        mlp_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        drop_rate: float = 0.0,
        patch_size: int = 4,
        patch_embed_version: str = "v1",
        patch_norm: bool = True,
        downsample_version: str = "v1",
        scan_mode: str = "cross2d",
        scan_backend: str = "auto",
        global_pool: str = "avg",
    ):
        super().__init__()
        check_arg(isinstance(depths, Sequence) and len(depths) > 0 and all(is_int(d) and d > 0 for d in depths),
                  "depths", depths, "a non-empty sequence of positive ints (blocks per stage)")
        depths = list(depths)
        if is_int(dims):
            check_arg(dims > 0, "dims", dims, "a positive int (first-stage channels) or one positive int per stage")
            dims = [dims * 2 ** i for i in range(len(depths))]
        check_arg(isinstance(dims, Sequence) and len(dims) == len(depths) and all(is_int(d) and d > 0 for d in dims),
                  "dims", dims, f"a positive int or {len(depths)} positive ints (one per stage of depths)")
        dims = list(dims)
        check_arg(is_int(in_chans) and in_chans > 0, "in_chans", in_chans, "a positive int")
        check_arg(is_int(num_classes) and num_classes >= 0, "num_classes", num_classes, "an int >= 0 (0: no head)")
        check_arg(is_int(patch_size) and patch_size > 0 and (patch_embed_version != "v2" or patch_size % 2 == 0),
                  "patch_size", patch_size,
                  "a positive int" + (" and even (the v2 stem is two stride-patch_size/2 convs)"
                                      if patch_embed_version == "v2" else ""))
        for arg, value in (("drop_path_rate", drop_path_rate), ("drop_rate", drop_rate),
                           ("mlp_drop_rate", mlp_drop_rate), ("ssm_drop_rate", ssm_drop_rate)):
            check_arg(isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1,
                      arg, value, "in [0, 1) (a probability; 1 would drop everything)")
        check_arg(isinstance(mlp_ratio, (int, float)) and not isinstance(mlp_ratio, bool) and mlp_ratio >= 0,
                  "mlp_ratio", mlp_ratio, "a number >= 0 (0: no MLP branch)")
        for i, dim in enumerate(dims):
            check_ss2d_args(d_model=dim, d_state=d_state, ssm_ratio=ssm_ratio, dt_rank=dt_rank, d_conv=d_conv,
                            dropout=ssm_drop_rate, scan_mode=scan_mode, scan_backend=scan_backend)
        self.config = dict(
            depths=depths, dims=dims, in_chans=in_chans, num_classes=num_classes, d_state=d_state,
            ssm_ratio=ssm_ratio, dt_rank=dt_rank, d_conv=d_conv, conv_bias=conv_bias, z_gate=z_gate,
            ssm_drop_rate=ssm_drop_rate, mlp_ratio=mlp_ratio, mlp_drop_rate=mlp_drop_rate,
            drop_path_rate=drop_path_rate, drop_rate=drop_rate, patch_size=patch_size,
            patch_embed_version=patch_embed_version, patch_norm=patch_norm,
            downsample_version=downsample_version, scan_mode=scan_mode, scan_backend=scan_backend,
            global_pool=global_pool,
        )
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.dims = dims
        self.num_features = self.head_hidden_size = dims[-1]
        self.patch_embed = make_patch_embed(patch_embed_version, in_chans, dims[0], patch_size, patch_norm)

        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        ss2d_kwargs = dict(d_state=d_state, ssm_ratio=ssm_ratio, dt_rank=dt_rank, d_conv=d_conv,
                           conv_bias=conv_bias, z_gate=z_gate, dropout=ssm_drop_rate,
                           scan_mode=scan_mode, scan_backend=scan_backend)
        self.layers = nn.ModuleList()
        self.feature_info = FeatureInfo()
        for i, depth in enumerate(depths):
            start = sum(depths[:i])
            blocks = [VSSBlock(dims[i], dpr[start + j], mlp_ratio, mlp_drop_rate, **ss2d_kwargs)
                      for j in range(depth)]
            last = i == len(depths) - 1
            downsample = nn.Identity() if last else make_downsample(downsample_version, dims[i], dims[i + 1])
            self.layers.append(VSSStage(blocks, downsample))
            self.feature_info.append(dict(num_chs=dims[i], reduction=patch_size * 2 ** i, module=f"layers.{i}"))
        self.classifier = ClassifierHead(dims[-1], num_classes, global_pool, drop_rate)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    # --- timm-style API -------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Names of parameters that take no weight decay besides 1-D ones (A_logs, Ds)."""
        return {n for n, p in self.named_parameters() if getattr(p, "_no_weight_decay", False)}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for layer-wise learning-rate decay (timm convention)."""
        return dict(
            stem=r"^patch_embed",
            blocks=r"^layers\.(\d+)" if coarse else [
                (r"^layers\.(\d+)\.downsample", (0,)),
                (r"^layers\.(\d+)\.blocks\.(\d+)", None),
                (r"^classifier\.norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward instead of storing its activations."""
        for stage in self.layers:
            stage.grad_checkpointing = enable

    def set_scan_backend(self, backend: str) -> None:
        """Use selective-scan ``backend`` (a name or 'auto') in every SS2D of the model."""
        for m in self.modules():
            if isinstance(m, SS2D):
                m.scan_backend = backend
        self.config["scan_backend"] = backend

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.classifier.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head with a fresh one for ``num_classes`` (0: none)."""
        self.num_classes = self.config["num_classes"] = num_classes
        if global_pool is not None:
            if global_pool not in ("avg", "max", ""):
                raise ValueError(f"global_pool must be 'avg', 'max' or '', got {global_pool!r}")
            self.classifier.global_pool = self.config["global_pool"] = global_pool
        self.classifier.head = Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.classifier.head.apply(self._init_weights)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"{type(self).__name__} expects input of shape (B, {self.in_chans}, H, W), "
                             f"got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"{type(self).__name__} expects a floating-point image tensor, got {x.dtype}")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> final normed feature map (B, num_features, H/32, W/32)."""
        self._check_input(x)
        x = self.patch_embed(x)
        for stage in self.layers:
            x = stage.downsample(stage.forward_blocks(x))
        return to_channels_first(self.classifier.norm(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Normed feature map (B, C, h, w) -> logits (or pooled features if ``pre_logits``)."""
        return self.classifier(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def _stage_indices(self, indices: int | Sequence[int] | None) -> list[int]:
        n = len(self.layers)
        if indices is None:
            return list(range(n))
        if isinstance(indices, int):
            if not 0 < indices <= n:
                raise ValueError(f"indices={indices}: must take the last 1..{n} stages")
            return list(range(n - indices, n))
        out = sorted({i % n for i in indices})
        if any(not -n <= i < n for i in indices):
            raise ValueError(f"stage indices {list(indices)} out of range for {n} stages")
        return out

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        """Stage outputs (before each downsample), timm's ``forward_intermediates`` contract.

        Args:
            indices: the last n stages (int) or stage indices (negative allowed); all if None.
            norm: pass the last stage's intermediate through the final norm.
            stop_early: stop after the last requested stage (only with intermediates_only).
            output_fmt: 'NCHW' or 'NHWC'.
            intermediates_only: return only the list of intermediates.

        Returns:
            list of feature maps, or (final normed features NCHW, list) unless intermediates_only.
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        self._check_input(x)
        take = self._stage_indices(indices)
        last = len(self.layers) - 1
        stages = self.layers[: take[-1] + 1] if (stop_early or intermediates_only) else self.layers
        intermediates = []
        x = self.patch_embed(x)
        for i, stage in enumerate(stages):
            x = stage.forward_blocks(x)
            if i in take:
                y = self.classifier.norm(x) if (norm and i == last) else x
                intermediates.append(to_channels_first(y) if output_fmt == "NCHW" else y)
            x = stage.downsample(x)
        if intermediates_only:
            return intermediates
        return to_channels_first(self.classifier.norm(x)), intermediates

    def prune_intermediate_layers(self, indices: int | Sequence[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the stages after the last of ``indices`` (and the head/norm); return kept indices."""
        take = self._stage_indices(indices)
        del self.layers[take[-1] + 1:]
        self.layers[-1].downsample = nn.Identity()
        if prune_norm:
            self.classifier.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take


class VSSMFeatures(nn.Module):
    """Backbone mode: per-stage NCHW feature maps, each through its own LayerNorm (``outnorm{i}``).

    This is the authors' detection/segmentation backbone (their parameter names: ``patch_embed``,
    ``layers``, ``outnorm{i}``); ``forward`` returns a list with one map per entry of
    ``out_indices`` (strides 4, 8, 16, 32). It holds the stem and stages of a :class:`VSSM`
    (composition, as timm's feature wrappers do); the classifier's norm and head are not part of it.

    Args:
        out_indices: stages whose outputs are returned (negative counts from the end).
        model: a built classifier to take the stem and stages from (e.g. one with pretrained
            weights); when None, one is built from ``**kwargs`` (the :class:`VSSM` arguments).
    """

    def __init__(self, out_indices: Sequence[int] = (0, 1, 2, 3), model: VSSM | None = None, **kwargs):
        super().__init__()
        if model is None:
            model = VSSM(**{**kwargs, "num_classes": 0})
        elif kwargs:
            raise TypeError(f"VSSMFeatures: give either a built model or VSSM arguments, not both ({sorted(kwargs)})")
        if isinstance(out_indices, (str, bytes)) or not isinstance(out_indices, Sequence) or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in out_indices):
            raise TypeError(f"out_indices must be a sequence of stage indices (ints), got {out_indices!r}")
        n = len(model.layers)
        if not out_indices or any(not -n <= i < n for i in out_indices):
            raise ValueError(f"out_indices {tuple(out_indices)} must be stage indices in [0, {n})")
        self.out_indices = tuple(sorted({i % n for i in out_indices}))
        self.patch_embed = model.patch_embed
        self.layers = model.layers
        self.in_chans, self.dims = model.in_chans, model.dims
        for i in self.out_indices:
            self.add_module(f"outnorm{i}", LayerNorm(self.dims[i], eps=1e-5))
        self.feature_info = FeatureInfo(model.feature_info[i] for i in self.out_indices)
        self.config = {**model.config, "num_classes": 0, "features_only": True, "out_indices": list(self.out_indices)}
        for attr in ("pretrained_cfg", "default_cfg", "model_name"):
            if hasattr(model, attr):
                setattr(self, attr, getattr(model, attr))

    no_weight_decay = VSSM.no_weight_decay
    set_grad_checkpointing = VSSM.set_grad_checkpointing
    set_scan_backend = VSSM.set_scan_backend
    _check_input = VSSM._check_input

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, in_chans, H, W) -> [(B, dims[i], H / 2^(i+2), W / 2^(i+2)) for i in out_indices]."""
        self._check_input(x)
        x = self.patch_embed(x)
        outs = []
        for i, stage in enumerate(self.layers[: self.out_indices[-1] + 1]):
            x = stage.forward_blocks(x)
            if i in self.out_indices:
                outs.append(to_channels_first(getattr(self, f"outnorm{i}")(x)).contiguous())
            x = stage.downsample(x)
        return outs

    def prune_intermediate_layers(self, indices: int | Sequence[int] | None = None, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Keep only the stages up to the last of ``indices`` (default: of ``out_indices``) and
        return the kept output indices. ``prune_norm`` and ``prune_head`` are accepted for timm's
        signature; a features model has neither a final norm nor a head."""
        take = self.out_indices if indices is None else VSSM._stage_indices(self, indices)
        if not set(take) <= set(self.out_indices):
            raise ValueError(f"indices {list(take)} are not all among out_indices {list(self.out_indices)}")
        for i in set(self.out_indices) - set(take):
            delattr(self, f"outnorm{i}")
        del self.layers[take[-1] + 1:]
        self.layers[-1].downsample = nn.Identity()
        self.feature_info = FeatureInfo(f for f, i in zip(self.feature_info, self.out_indices) if i in take)
        self.out_indices = tuple(take)
        self.config.update(out_indices=list(take), depths=self.config["depths"][: take[-1] + 1],
                           dims=self.config["dims"][: take[-1] + 1])
        return list(take)


# --- the model zoo --------------------------------------------------------------------------
# Each model is a configuration (data) and a builder function of the same name (registered, so
# ``create_model(name)`` and timm find it). Depths, widths and drop-path rates: the paper's
# table (v0) and the authors' v2 release.

V0 = dict(d_state=16, ssm_ratio=2.0, conv_bias=True, z_gate=True, mlp_ratio=0.0,
          patch_embed_version="v1", downsample_version="v1")
V2 = dict(d_state=1, conv_bias=False, z_gate=False, mlp_ratio=4.0,
          patch_embed_version="v2", downsample_version="v3")

ZOO: dict[str, dict] = {
    "vanilla_vmamba_tiny": dict(V0, depths=(2, 2, 9, 2), dims=96, drop_path_rate=0.2),
    "vanilla_vmamba_small": dict(V0, depths=(2, 2, 27, 2), dims=96, drop_path_rate=0.3),
    "vanilla_vmamba_base": dict(V0, depths=(2, 2, 27, 2), dims=128, drop_path_rate=0.5),
    "vmamba_tiny_s1l8": dict(V2, depths=(2, 2, 8, 2), dims=96, ssm_ratio=1.0, drop_path_rate=0.2),
    "vmamba_small_s1l20": dict(V2, depths=(2, 2, 20, 2), dims=96, ssm_ratio=1.0, drop_path_rate=0.3),
    "vmamba_base_s1l20": dict(V2, depths=(2, 2, 20, 2), dims=128, ssm_ratio=1.0, drop_path_rate=0.5),
    "vmamba_tiny_s2l5": dict(V2, depths=(2, 2, 5, 2), dims=96, ssm_ratio=2.0, drop_path_rate=0.2),
    "vmamba_small_s2l15": dict(V2, depths=(2, 2, 15, 2), dims=96, ssm_ratio=2.0, drop_path_rate=0.3),
    "vmamba_base_s2l15": dict(V2, depths=(2, 2, 15, 2), dims=128, ssm_ratio=2.0, drop_path_rate=0.6),
}


def default_pretrained_cfg(name: str, num_classes: int = 1000) -> dict:
    """timm's ``pretrained_cfg`` of zoo model ``name``: its ImageNet preprocessing and head."""
    return dict(architecture=name, tag=None, num_classes=num_classes, **IMAGENET_PREPROCESSING,
                pool_size=(7, 7), first_conv="patch_embed.0", classifier="classifier.head",
                license=LICENSE, paper_ids=PAPER)


def build_vssm(name: str, features_only: bool = False, **overrides) -> VSSM | VSSMFeatures:
    """Build zoo model ``name`` with ``overrides`` of its configuration (see :class:`VSSM`).

    ``features_only=True`` (with ``out_indices``) gives the multi-scale :class:`VSSMFeatures`.
    """
    if name not in ZOO:
        raise ValueError(f"unknown zoo model {name!r}; choose from {sorted(ZOO)}")
    if not features_only and "out_indices" in overrides:
        raise ValueError("out_indices is only meaningful with features_only=True")
    out_indices = overrides.pop("out_indices", (0, 1, 2, 3))
    model = VSSM(**{**ZOO[name], **overrides})
    model.pretrained_cfg = model.default_cfg = default_pretrained_cfg(name, model.num_classes)
    model.model_name = model.config["architecture"] = name
    return VSSMFeatures(out_indices, model=model) if features_only else model


@register_model
def vanilla_vmamba_tiny(**kwargs) -> VSSM:
    """VMamba v0 (the paper's) tiny: depths (2, 2, 9, 2), dims 96, d_state 16."""
    return build_vssm("vanilla_vmamba_tiny", **kwargs)


@register_model
def vanilla_vmamba_small(**kwargs) -> VSSM:
    """VMamba v0 (the paper's) small: depths (2, 2, 27, 2), dims 96, d_state 16."""
    return build_vssm("vanilla_vmamba_small", **kwargs)


@register_model
def vanilla_vmamba_base(**kwargs) -> VSSM:
    """VMamba v0 (the paper's) base: depths (2, 2, 27, 2), dims 128, d_state 16."""
    return build_vssm("vanilla_vmamba_base", **kwargs)


@register_model
def vmamba_tiny_s1l8(**kwargs) -> VSSM:
    """VMamba v2 tiny [s1l8]: depths (2, 2, 8, 2), dims 96, ssm_ratio 1."""
    return build_vssm("vmamba_tiny_s1l8", **kwargs)


@register_model
def vmamba_small_s1l20(**kwargs) -> VSSM:
    """VMamba v2 small [s1l20]: depths (2, 2, 20, 2), dims 96, ssm_ratio 1."""
    return build_vssm("vmamba_small_s1l20", **kwargs)


@register_model
def vmamba_base_s1l20(**kwargs) -> VSSM:
    """VMamba v2 base [s1l20]: depths (2, 2, 20, 2), dims 128, ssm_ratio 1."""
    return build_vssm("vmamba_base_s1l20", **kwargs)


@register_model
def vmamba_tiny_s2l5(**kwargs) -> VSSM:
    """VMamba v2 tiny [s2l5]: depths (2, 2, 5, 2), dims 96, ssm_ratio 2."""
    return build_vssm("vmamba_tiny_s2l5", **kwargs)


@register_model
def vmamba_small_s2l15(**kwargs) -> VSSM:
    """VMamba v2 small [s2l15]: depths (2, 2, 15, 2), dims 96, ssm_ratio 2."""
    return build_vssm("vmamba_small_s2l15", **kwargs)


@register_model
def vmamba_base_s2l15(**kwargs) -> VSSM:
    """VMamba v2 base [s2l15]: depths (2, 2, 15, 2), dims 128, ssm_ratio 2."""
    return build_vssm("vmamba_base_s2l15", **kwargs)
