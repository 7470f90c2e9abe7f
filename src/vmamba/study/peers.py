"""timm's ResNet, ConvNeXt, DeiT and Swin as small peers of VMamba, built at equal FLOPs.

The ``peers``, ``resolution`` and ``erf`` plans need timm importable (``pip install timm``);
without it they stop with :class:`PeerUnavailable`. Importing this module registers the
builders ``study_resnet``, ``study_convnext``, ``study_deit`` and ``study_swin`` with vmamba's
model registry, so that each peer trains as an ordinary ``vmamba train`` run. One ``width``
sets each peer's size; :func:`peer_config` picks the width whose FLOPs at the training size
come closest to a VMamba's (within 10%, else an error).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..models.registry import register_model

FLOP_TOLERANCE = 0.10
PEERS = {"ResNet": "study_resnet", "ConvNeXt": "study_convnext", "DeiT": "study_deit", "Swin": "study_swin"}
WIDTHS = {  # candidate widths per peer (ViT/Swin: multiples of the head size 8)
    "study_resnet": range(4, 97), "study_convnext": range(4, 97),
    "study_deit": range(8, 257, 8), "study_swin": range(8, 129, 8),
}


class PeerUnavailable(RuntimeError):
    """timm is missing or fails to import."""


def _timm():
    try:
        import timm  # noqa: F401
        from timm.models import convnext, resnet, swin_transformer, vision_transformer
    except Exception as e:  # timm raises whatever its torchvision import raises
        raise PeerUnavailable(f"the peers, resolution and erf plans need timm importable (pip install timm); "
                              f"importing it failed: {type(e).__name__}: {e}") from e
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
        net = resnet.ResNet(resnet.BasicBlock, (1, 1, 2, 1), channels=dims, stem_width=width, **common)
    elif kind == "study_convnext":
        net = convnext.ConvNeXt(depths=(1, 1, 2, 1), dims=dims, **common)
    elif kind == "study_deit":
        net = vit.VisionTransformer(img_size=img_size, patch_size=4, embed_dim=width, depth=4, num_heads=width // 8,
                                    mlp_ratio=4.0, dynamic_img_size=True, **common)
    elif kind == "study_swin":
        net = swin.SwinTransformer(img_size=img_size, patch_size=4, embed_dim=width, depths=(1, 1, 2, 1),
                                   num_heads=tuple(d // 8 for d in dims), window_size=4, strict_img_size=False,
                                   dynamic_img_size=True, **common)
    else:
        raise ValueError(f"unknown peer {kind!r}; choose one of {list(PEERS.values())}")
    return PeerModel(kind, net, dict(architecture=kind, width=width, num_classes=num_classes, in_chans=in_chans,
                                     img_size=img_size, drop_path_rate=drop_path_rate))


def _register(kind: str) -> None:
    def builder(pretrained: bool = False, **kwargs) -> PeerModel:
        if pretrained:
            raise ValueError(f"{kind}: no pretrained weights")
        return build_peer(kind, **kwargs)

    builder.__name__ = builder.__qualname__ = kind
    builder.__doc__ = f"timm peer for vmamba.study ({kind[6:]}), built at a given width."
    register_model(builder)


for _kind in PEERS.values():
    _register(_kind)


def model_flops(model: str, model_args: dict, img_size: int, in_chans: int, num_classes: int = 2) -> float:
    """FLOPs (paper convention) of a registered model at ``img_size``."""
    from ..analysis.flops import count_flops
    from ..models.registry import create_model

    net = create_model(model, **model_args, num_classes=num_classes, in_chans=in_chans)
    return count_flops(net, (img_size, img_size)).flops


def peer_config(name: str, target: dict) -> dict:
    """Training options (``model``, ``model_args``) of peer ``name`` at the FLOPs of ``target``
    (``model``, ``model_args``, ``img_size``, ``in_chans``), within :data:`FLOP_TOLERANCE`."""
    kind = PEERS[name]
    size, chans = target["img_size"], target["in_chans"]
    goal = model_flops(target["model"], target["model_args"], size, chans)
    best = None
    for width in WIDTHS[kind]:
        flops = model_flops(kind, dict(width=width, img_size=size), size, chans)
        if best is None or abs(flops - goal) < abs(best[1] - goal):
            best = (width, flops)
        if flops > goal * (1 + FLOP_TOLERANCE):
            break
    width, flops = best
    if abs(flops - goal) > FLOP_TOLERANCE * goal:
        raise ValueError(f"no {name} width gives {goal / 1e6:.2f} MFLOPs within {FLOP_TOLERANCE:.0%} "
                         f"(closest: width {width}, {flops / 1e6:.2f} MFLOPs)")
    return dict(model=kind, model_args=dict(width=width, img_size=size))
