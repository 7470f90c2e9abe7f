"""Small layers of the VMamba backbone: stems, downsamplers, MLP, drop path.

Activations between layers are channel-last (B, H, W, C). Convolutions take them through a
``Permute`` view, i.e. as NCHW tensors whose memory is channel-last, and keep their weights in
that layout too (:func:`channels_last_conv`): oneDNN's NHWC kernels then run without reordering
the activations, and the outputs are channel-last again, so the ``Permute`` after a conv is free.
The convolutions are :class:`vmamba.ops.Conv2d`, whose wide strided ones (the last
downsamplers) train with an im2col backward. The stems and downsamplers are ``nn.Sequential``
with the same child indices as the authors' release, so parameter names (``patch_embed.0``,
``downsample.1``, ...) match their checkpoints.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import Conv2d, LayerNorm, Linear, linear


class Permute(nn.Module):
    """``x.permute(*dims)`` as a module."""

    def __init__(self, *dims: int):
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H, W, C)."""
    return x.permute(0, 2, 3, 1)


def to_channels_first(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) -> (B, C, H, W)."""
    return x.permute(0, 3, 1, 2)


def check_arg(ok: bool, name: str, value, allowed: str) -> None:
    """Raise ``ValueError`` naming the constructor argument, its value and what is allowed."""
    if not ok:
        raise ValueError(f"{name}={value!r} is not allowed: {name} must be {allowed}")


def is_int(value) -> bool:
    """An int, not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def channels_last_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """``conv`` with its weight stored channel-last (the memory of an (O, kh, kw, I) tensor).

    With the weight in that layout a convolution always runs in NHWC (also on an NCHW input,
    which it converts once), so the channel-last activations are never reordered and the weight
    is not copied per call; its gradient comes back in the same layout as the weight, which is
    what DistributedDataParallel's gradient buckets expect (for a depthwise weight (C, 1, k, k)
    both layouts count as contiguous, and the gradient's strides would otherwise depend on the
    input's size). Values are unchanged.
    """
    w = conv.weight.data
    o, i, kh, kw = w.shape
    conv.weight.data = w.new_empty((o, kh, kw, i)).permute(0, 3, 1, 2).copy_(w)
    return conv


def hooked(module: nn.Module) -> bool:
    """Whether forward hooks watch ``module``'s output, which must then be its own (not fused with
    a neighbour's work, such as a residual add)."""
    return bool(module._forward_hooks or module._forward_pre_hooks or nn.modules.module._global_forward_hooks
                or nn.modules.module._global_forward_pre_hooks)


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample with probability ``p``."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        return x * self._scale(x)

    def add_to(self, residual: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``residual + self(x)`` in one pass over memory (``addcmul``) where samples are dropped."""
        if self.p == 0.0 or not self.training or hooked(self):
            return residual + self(x)
        return torch.addcmul(residual, x, self._scale(x))

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        """Per sample 0 (dropped) or 1 / keep, shaped (B, 1, ..., 1) to broadcast over x."""
        keep = 1.0 - self.p
        return x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep).div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    """fc1 -> GELU (exact) -> dropout -> fc2 -> dropout, on channel-last tensors.

    ``forward(x, residual)`` returns ``residual + mlp(x)``, the add fused into fc2's product at
    inference (``vmamba.ops.linear``); fc1 and its GELU are one product there too.
    """

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = Linear(dim, hidden)
        self.fc2 = Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        h = self.drop(linear(x, self.fc1.weight, self.fc1.bias, activation="gelu"))
        if residual is not None and is_identity(self.drop):
            return linear(h, self.fc2.weight, self.fc2.bias, residual=residual)
        y = self.drop(self.fc2(h))
        return y if residual is None else residual + y


def is_identity(dropout: nn.Module) -> bool:
    """Whether a dropout or drop-path module passes its input through unchanged right now."""
    return isinstance(dropout, nn.Identity) or not dropout.training or getattr(dropout, "p", 0.0) == 0.0


def _norm(dim: int, enabled: bool = True) -> nn.Module:
    return LayerNorm(dim, eps=1e-5) if enabled else nn.Identity()


class PatchEmbedV1(nn.Sequential):
    """v0 stem: Conv(k=s=patch) -> NHWC -> LayerNorm. Children 0 (conv) and 2 (norm)."""

    def __init__(self, in_chans: int, dim: int, patch_size: int = 4, norm: bool = True):
        super().__init__(
            channels_last_conv(Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size, bias=True)),
            Permute(0, 2, 3, 1),
            _norm(dim, norm),
        )


class PatchEmbedV2(nn.Sequential):
    """v2 stem: two Conv3x3 stride-2 (to C/2, then C), each followed by a LayerNorm, GELU between.

    Children 0 (conv), 2 (norm), 5 (conv), 7 (norm), as in the authors' release.
    """

    def __init__(self, in_chans: int, dim: int, patch_size: int = 4, norm: bool = True):
        stride = patch_size // 2
        k = stride + 1
        super().__init__(
            channels_last_conv(Conv2d(in_chans, dim // 2, kernel_size=k, stride=stride, padding=1)),
            Permute(0, 2, 3, 1),
            _norm(dim // 2, norm),
            Permute(0, 3, 1, 2),
            nn.GELU(),
            channels_last_conv(Conv2d(dim // 2, dim, kernel_size=k, stride=stride, padding=1)),
            Permute(0, 2, 3, 1),
            _norm(dim, norm),
        )


class PatchMerging2D(nn.Module):
    """v1 downsampler: 2x2 neighbours concatenated -> LayerNorm(4C) -> Linear(4C, 2C, no bias).

    Odd H or W is zero-padded first, so any input size works.
    """

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.reduction = Linear(4 * dim, out_dim, bias=False)
        self.norm = LayerNorm(4 * dim, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[1:3]
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class ConvDownsample(nn.Sequential):
    """v2/v3 downsampler: NCHW -> Conv (v2: 2x2 stride 2; v3: 3x3 stride 2 pad 1) -> NHWC -> LN.

    Children 1 (conv) and 3 (norm).
    """

    def __init__(self, dim: int, out_dim: int, version: str = "v3"):
        conv = (Conv2d(dim, out_dim, kernel_size=2, stride=2) if version == "v2"
                else Conv2d(dim, out_dim, kernel_size=3, stride=2, padding=1))
        super().__init__(Permute(0, 3, 1, 2), channels_last_conv(conv), Permute(0, 2, 3, 1),
                         LayerNorm(out_dim, eps=1e-5))


def make_patch_embed(version: str, in_chans: int, dim: int, patch_size: int, norm: bool) -> nn.Module:
    """The stem of ``version`` ('v1' or 'v2')."""
    if version == "v1":
        return PatchEmbedV1(in_chans, dim, patch_size, norm)
    if version == "v2":
        return PatchEmbedV2(in_chans, dim, patch_size, norm)
    raise ValueError(f"unknown patch embed version {version!r}; choose 'v1' or 'v2'")


def make_downsample(version: str, dim: int, out_dim: int) -> nn.Module:
    """The downsampler of ``version`` ('v1' patch merging, 'v2'/'v3' strided conv)."""
    if version == "v1":
        return PatchMerging2D(dim, out_dim)
    if version in ("v2", "v3"):
        return ConvDownsample(dim, out_dim, version)
    raise ValueError(f"unknown downsample version {version!r}; choose 'v1', 'v2' or 'v3'")
