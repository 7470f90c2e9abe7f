"""2D convolutions whose eager CPU inference reuses a oneDNN-packed copy of the weight.

ATen runs a float32 CPU convolution on oneDNN, which reorders the weight into its own blocked
layout on every call. At batch 1 that reorder, a full read and write of the weight, is a large
part of a strided convolution: the last downsampler of ``vmamba_tiny_s1l8`` (384 -> 768
channels, 3x3, 10.6 MB of weight) took 2.4 ms in the model and 1.3 ms with the packed weight
(docs/cpu.md, "Packed convolution weights"). :class:`Conv2d` keeps the reordered weight, made on
its first call without gradients, and makes it again when the weight changes (a new tensor, or
an in-place update such as an optimizer step or ``load_state_dict``) or the input's shape does
(oneDNN picks the blocked layout for an input size).

Only eager calls that need no gradient take that path, and only while the dense-layer setting
(:func:`vmamba.ops.dense.linear_backend`) is not ``"aten"``, so ``linear_backend("aten")`` gives a
plain-ATen baseline for A/B runs. Training, ``torch.compile``, export, tracing, FLOP counting,
non-float32 inputs and non-CPU tensors call ``nn.Conv2d`` as it is. Values are identical: the
same oneDNN convolution runs either way. The packed copy costs the weight's size in memory
while the model runs inference, and is never saved (not a parameter or buffer, dropped when
the module is pickled or deep-copied).

Training calls of a wide strided convolution on a small output (the last downsamplers, see
:func:`im2col_grad_wins`) keep oneDNN's forward but compute the backward as two MKL products on
the im2col matrix: oneDNN's backward for those shapes is 1.2-1.7x slower (docs/cpu.md, "Strided
convolutions' backward"). Gradients equal the plain ones to float rounding.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .dense import _plain_call, _setting
from .kernel_common import needs_grad, traced

_packed_ok: Optional[bool] = None  # whether the packed path exists here and passed its self-check


def packed_available() -> bool:
    """Whether this PyTorch has oneDNN's packed convolution and it agrees with ``F.conv2d``
    (checked once, on a small strided and a small depthwise convolution)."""
    global _packed_ok
    if _packed_ok is None:
        _packed_ok = _probe()
    return _packed_ok


def _probe() -> bool:
    if not torch.backends.mkldnn.is_available():
        return False
    if getattr(torch.ops.mkldnn, "_convolution_pointwise", None) is None or \
            not hasattr(torch._C._nn, "mkldnn_reorder_conv2d_weight"):
        return False
    try:
        g = torch.Generator().manual_seed(0)
        for cin, cout, groups, stride, bias in ((6, 10, 1, 2, True), (8, 8, 8, 1, False)):
            x = torch.randn(2, cin, 9, 7, generator=g)
            w = torch.randn(cout, cin // groups, 3, 3, generator=g)
            b = torch.randn(cout, generator=g) if bias else None
            ref = F.conv2d(x, w, b, stride, 1, 1, groups)
            y = _packed_conv(x, _pack(w, x.shape, (1, 1), (stride, stride), (1, 1), groups), b,
                             (1, 1), (stride, stride), (1, 1), groups)
            if not torch.allclose(y, ref, rtol=1e-4, atol=1e-4):
                return False
    except Exception:  # an op that exists but fails here: the plain convolution still works
        return False
    return True


def _pack(weight: Tensor, input_shape, padding, stride, dilation, groups: int) -> Tensor:
    """``weight`` reordered by oneDNN for inputs of ``input_shape`` (an opaque oneDNN tensor)."""
    return torch._C._nn.mkldnn_reorder_conv2d_weight(
        weight.detach().to_mkldnn(), list(padding), list(stride), list(dilation), groups, list(input_shape))


def _packed_conv(x: Tensor, packed: Tensor, bias: Optional[Tensor], padding, stride, dilation, groups: int) -> Tensor:
    return torch.ops.mkldnn._convolution_pointwise(
        x, packed, bias, list(padding), list(stride), list(dilation), groups, "none", [], "")


# Thresholds of the im2col backward, from an interleaved micro-benchmark of oneDNN's backward
# against it on AVX-512 (and with oneDNN / MKL held to AVX2) over the zoo's 3x3 stride-2 shapes:
# it won wherever K = C_in * 9 >= 2304 and the batch's output pixels were <= 1024, and lost or
# tied elsewhere (C_in = 192 at every batch, 1568+ output pixels).
IM2COL_MIN_K = 2304
IM2COL_MAX_PIXELS = 1024


def im2col_grad_wins(x_shape, weight_shape, stride, padding, dilation, groups: int) -> bool:
    """Whether a training call of this 3x3 stride-2 convolution takes the im2col backward:
    x (B, C_in, H, W), weight (C_out, C_in, 3, 3), no groups or dilation, K = C_in * 9 at least
    ``IM2COL_MIN_K`` and at most ``IM2COL_MAX_PIXELS`` output pixels in the batch."""
    b, cin, h, w = x_shape
    kh, kw = weight_shape[-2:]
    if (kh, kw) != (3, 3) or tuple(stride) != (2, 2) or tuple(dilation) != (1, 1) or groups != 1:
        return False
    ho = (h + 2 * padding[0] - kh) // stride[0] + 1
    wo = (w + 2 * padding[1] - kw) // stride[1] + 1
    return cin * kh * kw >= IM2COL_MIN_K and 0 < b * ho * wo <= IM2COL_MAX_PIXELS


def _im2col(x_nhwc: Tensor, kernel, stride, padding) -> Tensor:
    """The patch matrix (B * H_out * W_out, kh * kw * C) of a channel-last map x (B, H, W, C),
    columns in (kh, kw, C) order, the memory order of a channel-last weight (C_out, kh, kw, C)."""
    b, _, _, c = x_nhwc.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    xp = F.pad(x_nhwc, (0, 0, pw, pw, ph, ph))
    ho, wo = (xp.shape[1] - kh) // sh + 1, (xp.shape[2] - kw) // sw + 1
    s0, s1, s2, s3 = xp.stride()
    patches = xp.as_strided((b, ho, wo, kh, kw, c), (s0, s1 * sh, s2 * sw, s1, s2, s3))
    return patches.reshape(b * ho * wo, kh * kw * c)


def _col2im(cols: Tensor, x_shape, kernel, stride, padding) -> Tensor:
    """The adjoint of :func:`_im2col`: cols (B, H_out, W_out, kh, kw, C) summed back into a
    channel-last map (B, H, W, C)."""
    b, ho, wo, kh, kw, c = cols.shape
    h, w = x_shape[-2:]
    (sh, sw), (ph, pw) = stride, padding
    out = cols.new_zeros(b, h + 2 * ph, w + 2 * pw, c)
    for i in range(kh):
        for j in range(kw):
            out[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw] += cols[:, :, :, i, j]
    return out[:, ph:ph + h, pw:pw + w]


class _Im2colGradConv(torch.autograd.Function):
    """oneDNN's forward, backward as im2col products (see :func:`im2col_grad_wins`)."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding, ctx.has_bias = stride, padding, bias is not None
        return F.conv2d(x, weight, bias, stride, padding)

    @staticmethod
    def backward(ctx, gy):
        x, weight = ctx.saved_tensors
        cout, cin, kh, kw = weight.shape
        kernel, stride, padding = (kh, kw), ctx.stride, ctx.padding
        g = gy.permute(0, 2, 3, 1).reshape(-1, cout)  # (B * H_out * W_out, C_out), a view for NHWC gy
        w_rows = weight.permute(0, 2, 3, 1).reshape(cout, kh * kw * cin)  # a view for a channel-last weight
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            cols = (g @ w_rows).view(gy.shape[0], gy.shape[2], gy.shape[3], kh, kw, cin)
            dx = _col2im(cols, x.shape, kernel, stride, padding).permute(0, 3, 1, 2)
            if not x.is_contiguous(memory_format=torch.channels_last):
                dx = dx.contiguous()
        if ctx.needs_input_grad[1]:
            cols = _im2col(x.permute(0, 2, 3, 1), kernel, stride, padding)
            dw = (g.t() @ cols).view(cout, kh, kw, cin).permute(0, 3, 1, 2)  # channel-last memory
            if not weight.is_contiguous(memory_format=torch.channels_last):
                dw = dw.contiguous()
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = g.sum(0)
        return dx, dw, db, None, None


class Conv2d(nn.Conv2d):
    """``torch.nn.Conv2d`` whose eager CPU float32 inference runs on a cached oneDNN-packed weight
    (see the module's docstring); same parameters, state-dict keys and values.

    forward: x (B, C_in, H, W) -> (B, C_out, H_out, W_out), as ``nn.Conv2d``."""

    def forward(self, x: Tensor) -> Tensor:
        if not self._takes_packed(x):
            if self._takes_im2col_grad(x):
                return _Im2colGradConv.apply(x, self.weight, self.bias, self.stride, self.padding)
            return super().forward(x)
        w = self.weight
        key = (w.data_ptr(), w._version, w.shape, tuple(x.shape))
        cache = self.__dict__.get("_packed")
        if cache is None or cache[0] != key:
            cache = (key, _pack(w, x.shape, self.padding, self.stride, self.dilation, self.groups))
            self.__dict__["_packed"] = cache  # one assignment: key and packed weight stay paired
        return _packed_conv(x, cache[1], self.bias, self.padding, self.stride, self.dilation, self.groups)

    def _takes_packed(self, x: Tensor) -> bool:
        w, b = self.weight, self.bias
        return (type(x) is torch.Tensor and x.device.type == "cpu" and x.dtype == torch.float32
                and x.dim() == 4 and x.numel() > 0 and w.dtype == torch.float32 and w.device.type == "cpu"
                and (b is None or (b.dtype == torch.float32 and b.device.type == "cpu"))
                and self.padding_mode == "zeros" and not isinstance(self.padding, str)
                and not needs_grad(x, w, b) and not torch.is_autocast_enabled("cpu")
                and not _plain_call() and not traced(x, w, b)
                and _setting() != "aten" and packed_available())

    def _takes_im2col_grad(self, x: Tensor) -> bool:
        w, b = self.weight, self.bias
        return (type(x) is torch.Tensor and x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4
                and w.dtype == torch.float32 and w.device.type == "cpu"
                and (b is None or (b.dtype == torch.float32 and b.device.type == "cpu"))
                and self.padding_mode == "zeros" and not isinstance(self.padding, str)
                and needs_grad(x, w, b) and not torch.is_autocast_enabled("cpu")
                and not _plain_call() and not traced(x, w, b) and _setting() != "aten"
                and im2col_grad_wins(x.shape, w.shape, self.stride, self.padding, self.dilation, self.groups))

    def __getstate__(self):
        state = dict(super().__getstate__())
        state.pop("_packed", None)  # an opaque oneDNN tensor: made again on the next call
        return state
