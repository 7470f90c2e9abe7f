"""timm's ResNet, ConvNeXt, DeiT and Swin as small peers of VMamba, built at equal FLOPs.

The ``peers``, ``resolution`` and ``erf`` plans need timm importable (``pip install timm``);
without it they stop with :class:`PeerUnavailable`. The peers ``study_resnet``,
``study_convnext``, ``study_deit`` and ``study_swin`` live in this module's own
:data:`BUILDERS`, not in vmamba's model registry (``vmamba.list_models()`` does not change);
each trains as an ordinary training run whose network :func:`build_model` builds. One
``width`` sets each peer's size; :func:`peer_config` picks the width whose FLOPs at the
training size come closest to a VMamba's (within 10%, else an error).
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn

FLOP_TOLERANCE = 0.10
PEERS = {"ResNet": "study_resnet", "ConvNeXt": "study_convnext", "DeiT": "study_deit", "Swin": "study_swin"}
WIDTHS = {  # candidate widths per peer (FLOPs grow with the width)
    "study_resnet": range(4, 129), "study_convnext": range(4, 129),
    "study_deit": range(8, 257), "study_swin": range(8, 129),
}


def _heads(dim: int) -> int:
    """Attention heads for ``dim`` channels: about 8 channels a head, dividing ``dim``."""
    h = max(1, dim // 8)
    while dim % h:
        h -= 1
    return h


class PeerUnavailable(RuntimeError):
    """timm is missing or fails to import."""


def _timm():
    try:
        import timm  # noqa: F401
        from timm.models import convnext, resnet, swin_transformer, vision_transformer
    except Exception as e:  # timm raises whatever its torchvision import raises
        raise PeerUnavailable(f"the peers, resolution and erf plans need timm importable (pip install timm; "
                              f"--preload FILE runs a fix-up first); importing it failed: {type(e).__name__}: {e}") from e
    return resnet, convnext, vision_transformer, swin_transformer


class PeerModel(nn.Module):
    """A timm network with what vmamba's training and analyses expect: ``config``,
    ``num_classes``, ``in_chans`` and ``forward_features`` returning a (B, C, h, w) map."""

    def __init__(self, kind: str, net: nn.Module, config: dict):
        super().__init__()
        self.kind, self.net, self.config = kind, net, config
        self.num_classes, self.in_chans = config["num_classes"], config["in_chans"]
        self.num_features = net.num_features
        self.model_name = f"{kind}(width={config['width']})"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net.forward_features(x)
        if self.kind == "study_deit":  # tokens -> grid
            tokens = out[:, self.net.num_prefix_tokens:]
            rows = x.shape[2] // self.net.patch_embed.patch_size[0]
            return tokens.transpose(1, 2).reshape(out.shape[0], out.shape[2], rows, -1)
        if self.kind == "study_swin":  # NHWC -> NCHW
            return out.permute(0, 3, 1, 2)
        return out

    def no_weight_decay(self) -> set[str]:
        names = self.net.no_weight_decay() if hasattr(self.net, "no_weight_decay") else set()
        return {f"net.{n}" for n in names}


def build_peer(kind: str, width: int = 16, num_classes: int = 2, in_chans: int = 1, img_size: int = 32,
               drop_path_rate: float = 0.0) -> PeerModel:
    """One peer: ``kind`` in :data:`PEERS`' values, four stages (ResNet, ConvNeXt, Swin) of widths
    ``width * (1, 2, 4, 8)``, or a 4-block DeiT of embedding ``width``; patch/stem stride 4."""
    resnet, convnext, vit, swin = _timm()
    common = dict(num_classes=num_classes, in_chans=in_chans, drop_path_rate=drop_path_rate)
    dims = tuple(width * 2 ** i for i in range(4))
    if kind == "study_resnet":
        net = resnet.ResNet(resnet.BasicBlock, (1, 1, 2, 1), channels=dims, stem_type="deep",
                            stem_width=width // 2, **common)  # deep stem: 3x3 convs ending at `width`
    elif kind == "study_convnext":
        net = convnext.ConvNeXt(depths=(1, 1, 2, 1), dims=dims, **common)
    elif kind == "study_deit":
        net = vit.VisionTransformer(img_size=img_size, patch_size=4, embed_dim=width, depth=4, num_heads=_heads(width),
                                    mlp_ratio=4.0, dynamic_img_size=True, **common)
    elif kind == "study_swin":
        net = swin.SwinTransformer(img_size=img_size, patch_size=4, embed_dim=width, depths=(1, 1, 2, 1),
                                   num_heads=tuple(_heads(d) for d in dims), window_size=4, strict_img_size=False,
                                   dynamic_img_size=True, **common)
    else:
        raise ValueError(f"unknown peer {kind!r}; choose one of {list(PEERS.values())}")
    return PeerModel(kind, net, dict(architecture=kind, width=width, num_classes=num_classes, in_chans=in_chans,
                                     img_size=img_size, drop_path_rate=drop_path_rate))


BUILDERS = {kind: partial(build_peer, kind) for kind in PEERS.values()}  # name -> builder(**model_args)


def build_model(cfg, num_classes: int) -> nn.Module:
    """The network of a study run (a :class:`vmamba.train.TrainConfig`): a peer of
    :data:`BUILDERS`, else the registered vmamba model (:func:`vmamba.train.engine.build_model`)."""
    if cfg.model not in BUILDERS:
        from ..train.engine import build_model as build_registered

        return build_registered(cfg, num_classes)
    kwargs = dict(cfg.model_args, num_classes=num_classes, in_chans=cfg.in_chans)
    if cfg.drop_path >= 0:
        kwargs["drop_path_rate"] = cfg.drop_path
    return BUILDERS[cfg.model](**kwargs)


def model_flops(model: str, model_args: dict, img_size: int, in_chans: int, num_classes: int = 2) -> float:
    """FLOPs (paper convention) of a peer or a registered model at ``img_size``."""
    from ..analysis.flops import count_flops
    from ..models.registry import create_model

    build = BUILDERS.get(model) or (lambda **kw: create_model(model, **kw))
    net = build(**model_args, num_classes=num_classes, in_chans=in_chans)
    return count_flops(net, (img_size, img_size)).flops


def peer_config(name: str, target: dict) -> dict:
    """Training options (``model``, ``model_args``) of peer ``name`` at the FLOPs of ``target``
    (``model``, ``model_args``, ``img_size``, ``in_chans``), within :data:`FLOP_TOLERANCE`."""
    kind = PEERS[name]
    size, chans = target["img_size"], target["in_chans"]
    goal = model_flops(target["model"], target["model_args"], size, chans)
    widths = WIDTHS[kind]
    flops_at = lambda w: model_flops(kind, dict(width=w, img_size=size), size, chans)  # noqa: E731
    lo, hi = 0, len(widths) - 1  # binary search: the first width at or above the goal
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if flops_at(widths[mid]) < goal else (lo, mid)
    candidates = [(widths[i], flops_at(widths[i])) for i in {max(lo - 1, 0), lo}]
    best = min(candidates, key=lambda wf: abs(wf[1] - goal))
    width, flops = best
    if abs(flops - goal) > FLOP_TOLERANCE * goal:
        raise ValueError(f"no {name} width gives {goal / 1e6:.2f} MFLOPs within {FLOP_TOLERANCE:.0%} "
                         f"(closest: width {width}, {flops / 1e6:.2f} MFLOPs)")
    return dict(model=kind, model_args=dict(width=width, img_size=size))
