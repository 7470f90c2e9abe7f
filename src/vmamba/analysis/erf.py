"""Effective receptive field (ERF), computed as in the paper (after RepLKNet).

For each image: take the last stage's feature map, ReLU it, sum the channels at the centre
position, differentiate with respect to the input image, ReLU the gradient and sum it over the
colour channels. The ERF is the mean of these maps over images. A model whose ERF reaches the
image border sees the whole image from its centre (VMamba); a CNN's ERF is local.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models import VSSM, VSSMFeatures
from ..models.vmamba import IMAGENET_MEAN, IMAGENET_STD
from ..utils import IMAGE_EXTENSIONS, progress_bar, pyplot


def last_feature_map(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's last-stage feature map as (B, C, h, w): zoo models and timm peers."""
    if isinstance(model, VSSMFeatures):
        return model(x)[-1]
    if isinstance(model, VSSM):
        return model.forward_intermediates(x, indices=[-1], intermediates_only=True)[0]
    if not hasattr(model, "forward_features"):  # any backbone returning a map or a list of maps
        out = model(x)
        return out[-1] if isinstance(out, (list, tuple)) else out
    out = model.forward_features(x)
    if out.dim() == 3:  # ViT tokens: drop class/register tokens, back to a grid
        tokens = out[:, getattr(model, "num_prefix_tokens", 1):]
        rows = x.shape[2] // model.patch_embed.patch_size[0]
        return tokens.transpose(1, 2).reshape(out.shape[0], out.shape[2], rows, -1)
    if out.shape[1] != model.num_features and out.shape[-1] == model.num_features:
        out = out.permute(0, 3, 1, 2)  # NHWC (Swin)
    return out


def erf_map(model: nn.Module, images: Iterable[torch.Tensor], progress: bool = False) -> np.ndarray:
    """Mean ReLU'd input gradient of the ReLU'd centre of the last feature map; (H, W) array.

    ``images``: tensors (C, H, W) or (B, C, H, W), already normalised, all the same size;
    RGB images are averaged to grey for a one-channel model.
    """
    model.eval()
    total, count = None, 0
    device = next(model.parameters()).device
    bar = progress_bar(len(images) if hasattr(images, "__len__") else None, "erf", progress)
    for img in images:
        x = img if img.dim() == 4 else img[None]
        if getattr(model, "in_chans", x.shape[1]) == 1 and x.shape[1] != 1:
            x = x.mean(dim=1, keepdim=True)
        x = x.to(device).requires_grad_(True)
        feats = last_feature_map(model, x)
        h, w = feats.shape[2:]
        centre = F.relu(feats[:, :, h // 2, w // 2]).sum()
        (grad,) = torch.autograd.grad(centre, x)
        contribution = F.relu(grad).sum(dim=(0, 1)).detach().double().cpu()
        total = contribution if total is None else total + contribution
        count += x.shape[0]
        bar.update(1)
    bar.close()
    if total is None:
        raise ValueError("erf_map: no images given")
    return (total / count).numpy()


def mass_outside(erf: np.ndarray, radius: int) -> float:
    """Share of the ERF's mass at pixels more than ``radius`` (Chebyshev) away from the centre."""
    h, w = erf.shape
    cy, cx = h // 2, w // 2
    inside = erf[max(0, cy - radius): cy + radius + 1, max(0, cx - radius): cx + radius + 1].sum()
    total = erf.sum()
    return float((total - inside) / total) if total > 0 else 0.0


def area_ratio(erf: np.ndarray, threshold: float) -> float:
    """RepLKNet's high-contribution area ratio: the smallest centred square holding
    ``threshold`` of the mass, as a fraction of the image area."""
    h, w = erf.shape
    total = erf.sum()
    if total <= 0:
        return 0.0
    cy, cx = h // 2, w // 2
    for r in range(max(h, w)):
        box = erf[max(0, cy - r): cy + r + 1, max(0, cx - r): cx + r + 1]
        if box.sum() >= threshold * total:
            return box.size / erf.size
    return 1.0


def erf_summary(erf: np.ndarray) -> dict:
    """Numbers that check the paper's claims: mass beyond the central 1/4 and 1/2 of the image
    (as squares around the centre) and area ratios at 20/30/50/99% of the mass."""
    side = min(erf.shape)
    return {
        "mass_outside_central_quarter": mass_outside(erf, side // 8),
        "mass_outside_central_half": mass_outside(erf, side // 4),
        **{f"area_ratio_{int(t * 100)}": area_ratio(erf, t) for t in (0.2, 0.3, 0.5, 0.99)},
    }


def load_images(folder: str | Path | None, size: int, count: int = 16) -> list[torch.Tensor]:
    """``count`` normalised RGB images at ``size``x``size``: from ``folder`` (any common format,
    resized) or, by default, test images of the bundled Fashion-MNIST subset (upsampled)."""
    if folder is None:
        data = np.load(Path(__file__).resolve().parents[1] / "data" / "fashion_mnist_subset.npz")
        raw = [torch.from_numpy(a.astype(np.float32) / 255.0)[None].expand(3, -1, -1) for a in data["x_test"][:count]]
    else:
        from PIL import Image

        files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)[:count]
        if not files:
            raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {folder}")
        raw = [torch.from_numpy(np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
               for f in files]
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return [(F.interpolate(r[None], size=(size, size), mode="bilinear", align_corners=False)[0] - mean) / std
            for r in raw]


def plot_erfs(maps: dict[str, np.ndarray], path: str | Path, title: str = "Effective receptive field") -> Path | None:
    """Heat maps side by side, log-scaled and normalised per model as in RepLKNet's figures."""
    plt = pyplot()
    if plt is None:
        return None
    fig, axes = plt.subplots(1, len(maps), figsize=(3.2 * len(maps), 3.4), squeeze=False)
    for ax, (name, erf) in zip(axes[0], maps.items()):
        shown = np.log10(erf + 1)
        shown = shown / shown.max() if shown.max() > 0 else shown
        ax.imshow(shown, cmap="RdYlGn", vmin=0, vmax=1)
        ax.set_title(f"{name}\nmass outside centre/2: {mass_outside(erf, min(erf.shape) // 4):.0%}", fontsize=8)
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
