"""The authors' published weights, as data: one entry per timm-style tag ``model_name.tag``.

Every file is a release asset of the authors' repository (MzeroMiko/VMamba) under
:data:`RELEASES`. Classification tags name which weights of the training checkpoint to take:
``'model'`` (the raw weights) or ``'model_ema'`` (their exponential moving average). The
authors state that all models but vanilla_vmamba_tiny were trained with EMA; their log files
name the EMA evaluation for the small and base v0 models, so those default to ``in1k_ema``.
For the v2 models they do not say which of the two gave the reported top-1, so ``in1k`` (the
raw weights, what their loader reads by default) comes first and ``in1k_ema`` is offered too.

This module is plain data: downloading and loading live in :mod:`vmamba.pretrained`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

RELEASES = "https://github.com/MzeroMiko/VMamba/releases/download/"
PAPER = "arXiv:2401.10166"
LICENSE = "mit"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The authors' (Swin's) evaluation: resize to 256 (bicubic), centre crop 224, ImageNet mean/std.
IMAGENET_PREPROCESSING = dict(input_size=(3, 224, 224), crop_pct=224 / 256, interpolation="bicubic",
                              mean=IMAGENET_MEAN, std=IMAGENET_STD)


@dataclass(frozen=True)
class PretrainedWeights:
    """One published file, as a model will load it.

    Attributes:
        model: the zoo architecture (``vmamba.list_models()``).
        tag: the pretrained tag; ``f"{model}.{tag}"`` names these weights.
        url: where the authors publish the file (``RELEASES`` + ``<release tag>/<file>``).
        task: 'classification' (ImageNet-1k), 'detection' (COCO Mask R-CNN, mmdet) or
            'segmentation' (ADE20K UperNet, mmseg); dense files hold the backbone under 'backbone.'.
        weights: the entry of the checkpoint to take: 'model' or 'model_ema' ('state_dict' for
            mmengine files).
        metrics: what the authors report, e.g. {'top1': 82.6} or {'box_ap': 47.3, 'mask_ap': 42.7}.
        num_classes: classes of the file's head (1000 for ImageNet-1k).
        preprocessing: timm ``pretrained_cfg`` fields for inference (input_size, crop_pct, ...).
        notes: anything a user should know about the file.
    """

    model: str
    tag: str
    url: str
    task: str = "classification"
    weights: str = "model"
    metrics: dict = field(default_factory=dict)
    num_classes: int = 1000
    preprocessing: dict = field(default_factory=lambda: dict(IMAGENET_PREPROCESSING))
    license: str = LICENSE
    paper: str = PAPER
    notes: str = ""

    @property
    def name(self) -> str:
        """``model.tag``."""
        return f"{self.model}.{self.tag}"

    @property
    def file(self) -> str:
        """The file name (the last part of the URL): its name in torch hub's cache."""
        return self.url.rsplit("/", 1)[-1]

    @property
    def release_path(self) -> str:
        """``<release tag>/<file>`` below :data:`RELEASES` (what a mirror serves)."""
        return self.url[len(RELEASES):]


def _in1k(model: str, path: str, top1: float, ema: str, notes: str = "") -> list[PretrainedWeights]:
    """The tags of one ImageNet-1k file: ema is 'none' (one tag), 'default' or 'also'."""
    url = RELEASES + path
    raw = PretrainedWeights(model, "in1k", url, weights="model", notes=notes,
                            metrics={"top1": top1} if ema != "default" else {})
    if ema == "none":
        return [raw]
    smoothed = PretrainedWeights(model, "in1k_ema", url, weights="model_ema", notes=notes,
                                 metrics={"top1": top1} if ema == "default" else {})
    return [smoothed, raw] if ema == "default" else [raw, smoothed]


_V2_NOTE = "trained with EMA; the authors do not say whether the reported top-1 is of 'model' or 'model_ema'"

# Classification tags first: the first tag of a model is its default (``model`` alone).
_ALL = [
    *_in1k("vanilla_vmamba_tiny", "%23v0cls/vssmtiny_dp01_ckpt_epoch_292.pth", 82.2, "none",
           "trained without EMA"),
    *_in1k("vanilla_vmamba_small", "%23v0cls/vssmsmall_dp03_ckpt_epoch_238.pth", 83.5, "default",
           "the authors' log names the EMA evaluation"),
    *_in1k("vanilla_vmamba_base", "%23v0cls/vssmbase_dp06_ckpt_epoch_241.pth", 83.7, "default",
           "the authors' log names the EMA evaluation"),
    *_in1k("vmamba_tiny_s2l5", "%23v2cls/vssm_tiny_0230_ckpt_epoch_262.pth", 82.5, "also", _V2_NOTE),
    *_in1k("vmamba_small_s2l15", "%23v2cls/vssm_small_0229_ckpt_epoch_222.pth", 83.6, "also", _V2_NOTE),
    *_in1k("vmamba_base_s2l15", "%23v2cls/vssm_base_0229_ckpt_epoch_237.pth", 83.9, "also", _V2_NOTE),
    *_in1k("vmamba_tiny_s1l8", "%23v2cls/vssm1_tiny_0230s_ckpt_epoch_264.pth", 82.6, "also", _V2_NOTE),
    *_in1k("vmamba_small_s1l20", "%23v2cls/vssm1_small_0229s_ckpt_epoch_240.pth", 83.3, "also", _V2_NOTE),
    *_in1k("vmamba_base_s1l20", "%23v2cls/vssm1_base_0229s_ckpt_epoch_225.pth", 83.8, "also", _V2_NOTE),
]


def _dense(model: str, tag: str, path: str, task: str, **metrics) -> PretrainedWeights:
    size = (3, 800, 1333) if task == "detection" else (3, 512, 512)
    return PretrainedWeights(model, tag, RELEASES + path, task=task, weights="state_dict", metrics=metrics,
                             num_classes=80 if task == "detection" else 150,
                             preprocessing=dict(input_size=size, mean=IMAGENET_MEAN, std=IMAGENET_STD))


_DET, _SEG = "detection", "segmentation"
_ALL += [
    _dense("vanilla_vmamba_tiny", "coco_mask_rcnn_1x", "%23v0det/vssmtiny_mask_rcnn_swin_fpn_coco_epoch_12.pth",
           _DET, box_ap=46.5, mask_ap=42.1),
    _dense("vanilla_vmamba_small", "coco_mask_rcnn_1x", "%23v0det/vssmsmall_mask_rcnn_swin_fpn_coco_epoch_12.pth",
           _DET, box_ap=48.2, mask_ap=43.0),
    _dense("vanilla_vmamba_base", "coco_mask_rcnn_1x", "%23v0det/vssmbase_mask_rcnn_swin_fpn_coco_epoch_12.pth",
           _DET, box_ap=48.6, mask_ap=43.3),
    _dense("vanilla_vmamba_tiny", "coco_mask_rcnn_3x", "%23v0det/vssmtiny_mask_rcnn_swin_fpn_coco_ms_3x_epoch_34.pth",
           _DET, box_ap=48.5, mask_ap=43.2),
    _dense("vanilla_vmamba_small", "coco_mask_rcnn_3x",
           "%23v0det/vssmsmall_mask_rcnn_swin_fpn_coco_ms_3x_epoch_34.pth", _DET, box_ap=49.7, mask_ap=44.0),
    _dense("vmamba_tiny_s2l5", "coco_mask_rcnn_1x", "%23v2det/mask_rcnn_vssm_fpn_coco_tiny_epoch_12.pth",
           _DET, box_ap=47.4, mask_ap=42.7),
    _dense("vmamba_small_s2l15", "coco_mask_rcnn_1x", "%23v2det/mask_rcnn_vssm_fpn_coco_small_epoch_11.pth",
           _DET, box_ap=48.7, mask_ap=43.7),
    _dense("vmamba_base_s2l15", "coco_mask_rcnn_1x", "%23v2det/mask_rcnn_vssm_fpn_coco_base_epoch_11.pth",
           _DET, box_ap=49.2, mask_ap=44.1),
    _dense("vmamba_tiny_s1l8", "coco_mask_rcnn_1x", "%23v2det/mask_rcnn_vssm_fpn_coco_tiny_s_epoch_12.pth",
           _DET, box_ap=47.3, mask_ap=42.7),
    _dense("vmamba_tiny_s2l5", "coco_mask_rcnn_3x", "%23v2det/mask_rcnn_vssm_fpn_coco_tiny_ms_3x_epoch_36.pth",
           _DET, box_ap=48.9, mask_ap=43.7),
    _dense("vmamba_small_s2l15", "coco_mask_rcnn_3x", "%23v2det/mask_rcnn_vssm_fpn_coco_small_ms_3x_epoch_32.pth",
           _DET, box_ap=49.9, mask_ap=44.2),
    _dense("vmamba_tiny_s1l8", "coco_mask_rcnn_3x", "%23v2det/mask_rcnn_vssm_fpn_coco_tiny_ms_3x_s_epoch_31.pth",
           _DET, box_ap=48.8, mask_ap=43.7),
    _dense("vanilla_vmamba_tiny", "ade20k_upernet",
           "%23v0seg/vssmtiny_upernet_4xb4-160k_ade20k-512x512_iter_160000.pth", _SEG, miou_ss=47.3, miou_ms=48.3),
    _dense("vanilla_vmamba_small", "ade20k_upernet",
           "%23v0seg/vssmsmall_upernet_4xb4-160k_ade20k-512x512_iter_160000.pth", _SEG, miou_ss=49.5, miou_ms=50.5),
    _dense("vanilla_vmamba_base", "ade20k_upernet",
           "%23v0seg/vssmbase_upernet_4xb4-160k_ade20k-512x512_iter_128000.pth", _SEG, miou_ss=50.0, miou_ms=51.3),
    _dense("vmamba_tiny_s2l5", "ade20k_upernet",
           "%23v2seg/upernet_vssm_4xb4-160k_ade20k-512x512_tiny_iter_160000.pth", _SEG, miou_ss=48.3, miou_ms=48.6),
    _dense("vmamba_small_s2l15", "ade20k_upernet",
           "%23v2seg/upernet_vssm_4xb4-160k_ade20k-512x512_small_iter_144000.pth", _SEG, miou_ss=50.6, miou_ms=51.2),
    _dense("vmamba_base_s2l15", "ade20k_upernet",
           "%23v2seg/upernet_vssm_4xb4-160k_ade20k-512x512_base_iter_160000.pth", _SEG, miou_ss=51.0, miou_ms=51.6),
    _dense("vmamba_tiny_s1l8", "ade20k_upernet",
           "%23v2seg/upernet_vssm_4xb4-160k_ade20k-512x512_tiny_s_iter_160000.pth", _SEG, miou_ss=47.9, miou_ms=48.8),
]

# "model.tag" -> weights, in the order above (a model's first classification tag is its default).
PRETRAINED: dict[str, PretrainedWeights] = {w.name: w for w in _ALL}


def split_tag(name: str) -> tuple[str, str | None]:
    """``'vmamba_tiny_s1l8.in1k'`` -> ``('vmamba_tiny_s1l8', 'in1k')``; no tag -> (name, None)."""
    model, _, tag = name.partition(".")
    return model, (tag or None)


def pretrained_tags(model: str, task: str | None = "classification") -> list[str]:
    """The published tags of ``model`` (of one ``task``; all with None), default first."""
    return [w.tag for w in PRETRAINED.values() if w.model == model and (task is None or w.task == task)]


def get_weights(name: str) -> PretrainedWeights:
    """The weights called ``model.tag`` (or ``model`` alone: its default classification tag).

    Raises a ValueError naming what is published when there is no such entry.
    """
    model, tag = split_tag(name)
    tags = pretrained_tags(model, task=None)
    if tag is None:
        classification = pretrained_tags(model)
        tag = classification[0] if classification else None
    if tag is None or f"{model}.{tag}" not in PRETRAINED:
        have = ", ".join(f"{model}.{t}" for t in tags) if tags else "none for this model"
        raise ValueError(f"no published weights {name!r} (published: {have}; "
                         f"see vmamba.list_models(pretrained=True))")
    return PRETRAINED[f"{model}.{tag}"]
