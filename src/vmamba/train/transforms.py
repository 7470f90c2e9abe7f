"""Augmentation: geometry per sample (Pillow, in the loader's workers), photometry per batch
(kornia, on the training device), then mixup/cutmix with soft targets.

Per sample: random-resized crop + horizontal flip (train) or resize + centre crop (eval), to a
uint8 tensor (C, H, W). Per batch: RandAugment (or colour jitter), normalisation, random erasing.
"""
from __future__ import annotations

import math
import random
import re
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn

_RESAMPLE = {"nearest": 0, "bilinear": 2, "bicubic": 3, "lanczos": 1}


def _to_tensor(img, in_chans: int) -> torch.Tensor:
    img = img.convert("L" if in_chans == 1 else "RGB")
    arr = np.asarray(img, dtype=np.uint8)
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


class TrainTransform:
    """Random-resized crop (scale, ratio as in torchvision/timm) and horizontal flip, to uint8 CHW."""

    def __init__(self, size: int, in_chans: int = 3, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                 hflip: float = 0.5, interpolation: str = "bicubic"):
        self.size, self.in_chans, self.scale, self.ratio, self.hflip = size, in_chans, scale, ratio, hflip
        self.resample = _RESAMPLE[interpolation]

    def crop_box(self, w: int, h: int) -> tuple[int, int, int, int]:
        """A random (left, top, right, bottom) box of the image (torchvision's get_params)."""
        area = w * h
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * random.uniform(*self.scale)
            aspect = math.exp(random.uniform(*log_ratio))
            cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < cw <= w and 0 < ch <= h:
                x, y = random.randint(0, w - cw), random.randint(0, h - ch)
                return x, y, x + cw, y + ch
        cw, ch = w, h  # fallback: centre crop at the clamped ratio
        if w / h < self.ratio[0]:
            ch = round(w / self.ratio[0])
        elif w / h > self.ratio[1]:
            cw = round(h * self.ratio[1])
        x, y = (w - cw) // 2, (h - ch) // 2
        return x, y, x + cw, y + ch

    def __call__(self, img) -> torch.Tensor:
        img = img.resize((self.size, self.size), self.resample, box=self.crop_box(*img.size))
        if random.random() < self.hflip:
            img = img.transpose(0)  # FLIP_LEFT_RIGHT
        return _to_tensor(img, self.in_chans)


class EvalTransform:
    """Resize the shorter side to ``size / crop_pct``, centre-crop ``size``, to uint8 CHW."""

    def __init__(self, size: int, in_chans: int = 3, crop_pct: float = 0.875, interpolation: str = "bicubic"):
        self.size, self.in_chans, self.crop_pct = size, in_chans, crop_pct
        self.resample = _RESAMPLE[interpolation]

    def __call__(self, img) -> torch.Tensor:
        w, h = img.size
        short = math.floor(self.size / self.crop_pct)
        if (w, h) != (self.size, self.size):
            nw, nh = (short, max(short, round(h * short / w))) if w <= h else (max(short, round(w * short / h)), short)
            img = img.resize((nw, nh), self.resample)
            left, top = (nw - self.size) // 2, (nh - self.size) // 2
            img = img.crop((left, top, left + self.size, top + self.size))
        return _to_tensor(img, self.in_chans)


class RandAugmentSpec(NamedTuple):
    """A parsed timm-style RandAugment string: ``n`` ops per image at magnitude ``m`` (0..10),
    drawn per batch from N(m, mstd) clipped to 0..10 when ``mstd`` > 0."""

    n: int
    m: float
    mstd: float


RANDAUGMENT_OPS = 15  # kornia's default policy: the most ops one image can get


def parse_randaugment(spec: str) -> RandAugmentSpec:
    """timm's 'rand-m9-n2-mstd0.5-inc0' -> RandAugmentSpec(n=2, m=9.0, mstd=0.5).

    Parts: ``m`` magnitude 0..10 (required), ``n`` ops per image (default 2), ``mstd`` magnitude
    noise (default 0), ``inc0``. ``inc1`` (timm's increasing-severity variants of solarize and the
    colour ops, in a random direction) has no counterpart in kornia's RandAugment and is refused,
    as is any other part.
    """
    parts = spec.split("-")
    if parts[0] != "rand":
        raise ValueError("expected a timm-style string starting with 'rand-', like 'rand-m9-mstd0.5'")
    found = {}
    for part in parts[1:]:
        match = re.fullmatch(r"(mstd|inc|m|n)(\d+(?:\.\d+)?)", part)
        if match is None:
            raise ValueError(f"unknown part {part!r}; expected m<magnitude>, n<ops>, mstd<std>, inc0")
        found[match.group(1)] = float(match.group(2))
    if "m" not in found or not 0 <= found["m"] <= 10:
        raise ValueError("needs a magnitude m0..m10, e.g. 'rand-m9'")
    n = found.get("n", 2)
    if n != int(n) or not 1 <= n <= RANDAUGMENT_OPS:
        raise ValueError(f"n (ops per image) must be an integer from 1 to {RANDAUGMENT_OPS}")
    if found.get("inc", 0) not in (0, 1):
        raise ValueError("inc must be 0 or 1")
    if found.get("inc", 0) == 1:
        raise ValueError("inc1 (timm's increasing-severity op variants) is not available with kornia's "
                         "RandAugment; use inc0 (or leave it out)")
    return RandAugmentSpec(int(n), found["m"], found.get("mstd", 0.0))


class BatchAugment(nn.Module):
    """Per-batch augmentation on uint8 (B, C, H, W): RandAugment or colour jitter, normalise,
    random erasing. Returns float images. Uses kornia; with everything off, only normalises."""

    def __init__(self, mean, std, randaugment: str = "", color_jitter: float = 0.0, reprob: float = 0.0):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.photometric = self.erase = self.randaugment = None
        if randaugment or color_jitter or reprob:
            try:
                import kornia.augmentation as K
                from kornia.augmentation.auto import RandAugment
            except ImportError as e:
                raise ImportError("randaugment/color_jitter/reprob need kornia: pip install 'vmamba[train]'") from e
            if randaugment:
                self.randaugment = parse_randaugment(randaugment)
                self.photometric = RandAugment(n=self.randaugment.n, m=_kornia_magnitude(self.randaugment.m))
            elif color_jitter:
                self.photometric = K.ColorJitter(color_jitter, color_jitter, color_jitter, p=1.0)
            if reprob:
                self.erase = K.RandomErasing(p=reprob, value=0.0)  # 0 after normalising = the mean

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().div_(255)
        if self.randaugment is not None and self.randaugment.mstd > 0:  # timm's magnitude noise, per batch
            m = torch.normal(torch.tensor(self.randaugment.m), torch.tensor(self.randaugment.mstd)).item()
            self.photometric.m = _kornia_magnitude(min(max(m, 0.0), 10.0))
        if self.photometric is not None:
            c = x.shape[1]
            x = self.photometric(x.expand(-1, 3, -1, -1) if c == 1 else x)[:, :c].clamp_(0, 1)
        x = (x - self.mean) / self.std
        if self.erase is not None:
            x = self.erase(x)
        return x.contiguous()


def _kornia_magnitude(m: float) -> float:
    """timm's magnitude scale 0..10 on kornia's, which is 0..30 with both ends excluded."""
    return min(max(m * 3, 0.1), 29.9)


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float, normalised by ``mean``/``std`` (per channel, 0..1 scale)."""
    mean = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    return (x.float() / 255 - mean) / std


class Mixup:
    """Mixup / CutMix on a batch, returning images and soft targets (label smoothing included).

    Per batch: with probability ``prob`` mix, choosing cutmix with probability ``switch_prob``
    when both are on (timm's batch mode). Lambda ~ Beta(alpha, alpha); cutmix corrects lambda to
    the pasted box's true area.
    """

    def __init__(self, num_classes: int, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0,
                 prob: float = 1.0, switch_prob: float = 0.5, label_smoothing: float = 0.1):
        self.num_classes, self.mixup_alpha, self.cutmix_alpha = num_classes, mixup_alpha, cutmix_alpha
        self.prob, self.switch_prob, self.smoothing = prob, switch_prob, label_smoothing

    def targets(self, y: torch.Tensor) -> torch.Tensor:
        off = self.smoothing / self.num_classes
        return torch.full((len(y), self.num_classes), off, device=y.device).scatter_(1, y[:, None], 1 - self.smoothing + off)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.targets(y)
        if random.random() >= self.prob or not (self.mixup_alpha > 0 or self.cutmix_alpha > 0):
            return x, t
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha <= 0 or random.random() < self.switch_prob)
        lam = float(np.random.beta(*(2 * [self.cutmix_alpha if use_cutmix else self.mixup_alpha])))
        xf = x.flip(0)
        if use_cutmix:
            h, w = x.shape[-2:]
            ch, cw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
            cy, cx = random.randrange(h), random.randrange(w)
            y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
            x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
            x = x.clone()
            x[..., y0:y1, x0:x1] = xf[..., y0:y1, x0:x1]
            lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
        else:
            x = x * lam + xf * (1 - lam)
        return x, t * lam + t.flip(0) * (1 - lam)

