"""2D convolutions of the models: ``torch.nn.Conv2d`` with faster CPU paths where oneDNN is slow.

* Depthwise 3x3 convolutions (stride 1, padding 1: SS2D's) of channel-last maps with at most
  ``DEPTHWISE_MAX_PIXELS`` pixels in the batch run on vmamba's CPU kernel (forward and backward,
  ``cpu/depthwise_conv.cpp``): oneDNN spends tens of microseconds per call whatever the map, and
  its backward several times its forward: 1.2-3.5x the kernel's forward and 1.1-1.7x its
  forward + backward on the maps of a batch-1 VMamba (docs/cpu.md, "Depthwise convolutions").
* Training calls of wide strided convolutions on a small output (the last downsamplers, see
  :func:`im2col_wins`) compute the backward as two MKL products on the im2col matrix: oneDNN's
  backward, with the copy of its weight gradient into the weight's layout, was 1.2-1.7x slower
  for those shapes. The wider ones with at most ``IM2COL_FORWARD_MAX_PIXELS`` output pixels and
  a channel-last weight also run their forward as one product on that matrix (inference too,
  see :func:`im2col_forward_wins`): oneDNN reorders the weight, which comes from memory, on
  every call. docs/cpu.md, "Strided convolutions' backward" and "... forward"; whole batch-1 model 1.03x.

Results equal ``nn.Conv2d``'s to float rounding. Everything else (other shapes and layouts,
non-float32 or non-CPU tensors, traced and compiled calls, ``linear_backend("aten")``, a CPU
kernel that cannot be built or is disabled with ``VMAMBA_CPU_KERNEL=0``) runs ``nn.Conv2d`` as
it is.

Inference does not keep a oneDNN-packed copy of the weight between calls (it did until
2026-12-07, for 2-3% at batch 1): nothing tells a module reliably that its weight changed, since
fused optimizers (``torch.optim.AdamW(fused=True)``) and in-place writes through ``.data`` leave
the version counter alone, and a stale copy gives wrong outputs without an error.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .dense import _plain_call, _setting
from .kernel_common import needs_grad, traced
from .scan_cpu import load_extension

# Largest batch x height x width a depthwise call sends to the CPU kernel. Interleaved against
# oneDNN (benchmarks/bench_depthwise_conv.py), the kernel won at every map of a batch-1 224-px
# VMamba and at batch 8 on 14 x 14 and 7 x 7 (AVX-512 and AVX2 builds); on larger maps it tied or
# lost (AVX-512 forward 0.87x at 128 x 128; AVX2 forward + backward 0.8x there and at 8 x 56 x 56).
DEPTHWISE_MAX_PIXELS = 4096

# Thresholds of the im2col backward, from an interleaved micro-benchmark of oneDNN's backward
# against it on AVX-512 (and with oneDNN / MKL held to AVX2) over the zoo's 3x3 stride-2 shapes
# (benchmarks/bench_conv_backward.py): it won wherever K = C_in * 9 >= 2304 and the batch's output
# pixels were <= 1024, and lost or tied elsewhere (C_in = 192 at every batch, 1568+ output pixels).
IM2COL_MIN_K = 2304
IM2COL_MAX_PIXELS = 1024
# The forward alone won on fewer of those shapes, the same ones on both ISAs: K >= 3456 with at
# most 512 output pixels (1.03-1.54x), and lost or tied elsewhere (0.83-0.99x at K = 2304 and
# 0.90-0.93x at 1024-2048 output pixels).
IM2COL_FORWARD_MIN_K = 3456
IM2COL_FORWARD_MAX_PIXELS = 512


def _out_size(size, kernel, stride, padding) -> tuple[int, int]:
    """(H_out, W_out) of a convolution of an (H, W) map."""
    return tuple((n + 2 * p - k) // s + 1 for n, k, s, p in zip(size, kernel, stride, padding))


def im2col_wins(x_shape, weight_shape, stride, padding, dilation, groups: int) -> bool:
    """Whether a training call of this 3x3 stride-2 convolution takes the im2col backward:
    x (B, C_in, H, W), weight (C_out, C_in, 3, 3), no groups or dilation, K = C_in * 9 at least
    ``IM2COL_MIN_K`` and at most ``IM2COL_MAX_PIXELS`` output pixels in the batch."""
    b, cin, h, w = x_shape
    kh, kw = weight_shape[-2:]
    if (kh, kw) != (3, 3) or tuple(stride) != (2, 2) or tuple(dilation) != (1, 1) or groups != 1:
        return False
    ho, wo = _out_size((h, w), (kh, kw), stride, padding)
    return cin * kh * kw >= IM2COL_MIN_K and 0 < b * ho * wo <= IM2COL_MAX_PIXELS


def im2col_forward_wins(x_shape, weight_shape, stride, padding, dilation, groups: int) -> bool:
    """Whether the forward of such a convolution (see :func:`im2col_wins`) is the im2col product
    too: K at least ``IM2COL_FORWARD_MIN_K`` and at most ``IM2COL_FORWARD_MAX_PIXELS`` output
    pixels in the batch (and, checked by the caller, a channel-last weight)."""
    if not im2col_wins(x_shape, weight_shape, stride, padding, dilation, groups):
        return False
    b, cin, h, w = x_shape
    ho, wo = _out_size((h, w), (3, 3), stride, padding)
    return cin * 9 >= IM2COL_FORWARD_MIN_K and b * ho * wo <= IM2COL_FORWARD_MAX_PIXELS


def depthwise_kernel_wins(x_shape, weight_shape, stride, padding, dilation, groups: int) -> bool:
    """Whether this convolution goes to the CPU depthwise kernel: x (B, C, H, W), weight (C, 1, 3, 3),
    groups C, stride 1, padding 1, no dilation, at most ``DEPTHWISE_MAX_PIXELS`` pixels in the batch."""
    b, c, h, w = x_shape
    return (tuple(weight_shape) == (c, 1, 3, 3) and groups == c and tuple(stride) == (1, 1)
            and tuple(padding) == (1, 1) and tuple(dilation) == (1, 1) and 0 < b * h * w <= DEPTHWISE_MAX_PIXELS)


def _depthwise_forward(ext, x: Tensor, taps: Tensor, bias: Optional[Tensor]) -> Tensor:
    """x (B, C, H, W) channel-last in memory, taps (9, C) -> (B, C, H, W), channel-last in memory."""
    return ext.depthwise3x3(x.permute(0, 2, 3, 1), taps, bias).permute(0, 3, 1, 2)


def _taps(weight: Tensor) -> Tensor:
    """A depthwise weight (C, 1, 3, 3) as the kernel's (9, C) taps."""
    return weight.reshape(weight.shape[0], 9).t().contiguous()


class _DepthwiseConv3x3(torch.autograd.Function):
    """The CPU kernel's depthwise 3x3 convolution, with its backward (see :func:`depthwise_kernel_wins`)."""

    @staticmethod
    def forward(ctx, x, weight, bias, ext):
        taps = _taps(weight)
        ctx.save_for_backward(x, taps)
        ctx.ext, ctx.weight_shape, ctx.has_bias = ext, weight.shape, bias is not None
        return _depthwise_forward(ext, x, taps, bias)

    @staticmethod
    def backward(ctx, gy):
        x, taps = ctx.saved_tensors
        ext = ctx.ext
        g = gy.permute(0, 2, 3, 1).contiguous()  # no copy for a channel-last gy
        dx = dw = db = None
        if ctx.needs_input_grad[0]:  # the same convolution of gy with the taps flipped
            dx = ext.depthwise3x3(g, taps.flip(0), None).permute(0, 3, 1, 2)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            need_db = ctx.has_bias and ctx.needs_input_grad[2]
            dtaps, dbias = ext.depthwise3x3_weight_grad(g, x.permute(0, 2, 3, 1), need_db)
            if ctx.needs_input_grad[1]:
                dw = dtaps.t().reshape(ctx.weight_shape)
            db = dbias if need_db else None
        return dx, dw, db, None


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


def _weight_rows(weight: Tensor) -> Tensor:
    """A conv weight (C_out, C_in, kh, kw) as the (C_out, kh * kw * C_in) matrix matching
    :func:`_im2col`'s columns: a view of a channel-last weight, else a copy."""
    cout, cin, kh, kw = weight.shape
    return weight.permute(0, 2, 3, 1).reshape(cout, kh * kw * cin)


def _im2col_conv(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride, padding) -> Tensor:
    """``F.conv2d(x, weight, bias, stride, padding)`` as one product on the patch matrix:
    x (B, C_in, H, W), weight (C_out, C_in, kh, kw) -> (B, C_out, H_out, W_out), channel-last
    in memory (as oneDNN's output with a channel-last weight)."""
    kernel = tuple(weight.shape[-2:])
    cols = _im2col(x.permute(0, 2, 3, 1), kernel, stride, padding)  # (B * H_out * W_out, K)
    w_cols = _weight_rows(weight).t()
    y = cols @ w_cols if bias is None else torch.addmm(bias, cols, w_cols)
    b, ho, wo = x.shape[0], *_out_size(x.shape[-2:], kernel, stride, padding)
    return y.view(b, ho, wo, weight.shape[0]).permute(0, 3, 1, 2)


class _Im2colConv(torch.autograd.Function):
    """A convolution whose backward is im2col products (see :func:`im2col_wins`); its forward is
    the im2col product with ``im2col_forward``, else oneDNN's."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, im2col_forward):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding, ctx.has_bias = stride, padding, bias is not None
        if im2col_forward:
            return _im2col_conv(x, weight, bias, stride, padding)
        return F.conv2d(x, weight, bias, stride, padding)

    @staticmethod
    def backward(ctx, gy):
        x, weight = ctx.saved_tensors
        cout, cin, kh, kw = weight.shape
        kernel, stride, padding = (kh, kw), ctx.stride, ctx.padding
        g = gy.permute(0, 2, 3, 1).reshape(-1, cout)  # (B * H_out * W_out, C_out), a view for NHWC gy
        w_rows = _weight_rows(weight)
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dcols = (g @ w_rows).view(gy.shape[0], gy.shape[2], gy.shape[3], kh, kw, cin)
            dx = _col2im(dcols, x.shape, kernel, stride, padding).permute(0, 3, 1, 2)
            if not x.is_contiguous(memory_format=torch.channels_last):
                dx = dx.contiguous()
        if ctx.needs_input_grad[1]:
            cols = _im2col(x.permute(0, 2, 3, 1), kernel, stride, padding)
            dw = (g.t() @ cols).view(cout, kh, kw, cin).permute(0, 3, 1, 2)  # channel-last memory
            if not weight.is_contiguous(memory_format=torch.channels_last):
                dw = dw.contiguous()
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = g.sum(0)
        return dx, dw, db, None, None, None


def _channel_last_weight(weight: Tensor) -> bool:
    return weight.permute(0, 2, 3, 1).is_contiguous()


class Conv2d(nn.Conv2d):
    """``torch.nn.Conv2d`` whose eager CPU float32 calls of SS2D's depthwise convolutions and of
    wide 3x3 stride-2 convolutions on small outputs take faster paths (see the module's
    docstring); same parameters, state-dict keys and values.

    forward: x (B, C_in, H, W) -> (B, C_out, H_out, W_out), as ``nn.Conv2d``."""

    def forward(self, x: Tensor) -> Tensor:
        ext = self._depthwise_kernel(x)
        if ext is not None:
            w, b = self.weight, self.bias
            if needs_grad(x, w, b):
                return _DepthwiseConv3x3.apply(x, w, b, ext)
            return _depthwise_forward(ext, x, _taps(w), b)
        if self._takes_im2col(x):
            w, b = self.weight, self.bias
            im2col_forward = _channel_last_weight(w) and im2col_forward_wins(
                x.shape, w.shape, self.stride, self.padding, self.dilation, self.groups)
            if needs_grad(x, w, b):
                return _Im2colConv.apply(x, w, b, self.stride, self.padding, im2col_forward)
            if im2col_forward:
                return _im2col_conv(x, w, b, self.stride, self.padding)
        return super().forward(x)

    def _depthwise_kernel(self, x: Tensor):
        """The CPU kernels' module if this call runs on their depthwise convolution, else None."""
        w, b = self.weight, self.bias
        # compiled, exported and traced calls first: the size test would put a guard on a symbolic shape
        if not (not _plain_call() and self.groups > 1 and self.groups == self.in_channels and type(x) is torch.Tensor
                and x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4
                and depthwise_kernel_wins(x.shape, w.shape, self.stride, self.padding, self.dilation, self.groups)
                and x.permute(0, 2, 3, 1).is_contiguous() and w.dtype == torch.float32 and w.device.type == "cpu"
                and w.is_contiguous() and (b is None or (b.dtype == torch.float32 and b.device.type == "cpu"))
                and self.padding_mode == "zeros" and not torch.is_autocast_enabled("cpu")
                and not traced(x, w, b) and _setting() != "aten"):
            return None
        return load_extension()  # built on first use; None where it cannot be built

    def _takes_im2col(self, x: Tensor) -> bool:
        w, b = self.weight, self.bias
        # the cheap layer-constant tests first: they settle every other convolution at once
        return (self.groups == 1 and self.stride == (2, 2) and self.kernel_size == (3, 3)
                and type(x) is torch.Tensor and x.device.type == "cpu"
                and x.dtype == torch.float32 and x.dim() == 4 and w.dtype == torch.float32 and w.device.type == "cpu"
                and (b is None or (b.dtype == torch.float32 and b.device.type == "cpu"))
                and self.padding_mode == "zeros" and not isinstance(self.padding, str)
                and not torch.is_autocast_enabled("cpu")
                and not _plain_call() and not traced(x, w, b) and _setting() != "aten"
                and im2col_wins(x.shape, w.shape, self.stride, self.padding, self.dilation, self.groups))
