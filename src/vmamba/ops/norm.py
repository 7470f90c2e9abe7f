"""LayerNorm over the last dimension, on vmamba's CPU kernel for CPU float32 eager calls.

The models normalise channel-last rows of C = 48 .. 1536 values; ATen's CPU LayerNorm spends
most of its time around such rows, and the kernel (``cpu/layer_norm.cpp``) runs its forward
1.3-1.9x and its backward mostly 1.3-2x faster on them (docs/cpu.md, "LayerNorm"). Same values up to
float32 rounding (the kernel sums in another order), same autograd, and the same saved mean and
1 / std as ``torch.nn.functional.layer_norm``.

Everything else runs ``F.layer_norm``: inputs under ``MIN_ELEMENTS`` values (where the kernel
saves less than the checks before it cost), other dtypes and devices, non-contiguous inputs,
normalisation over more than the last dimension, autocast, ``torch.compile`` / export / tracing,
FLOP counting and other dispatch modes, ``linear_backend("aten")`` (the plain-ATen baseline), and
a kernel that cannot be built here or is disabled (``VMAMBA_CPU_KERNEL=0``).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .dense import _plain_call, _setting
from .kernel_common import needs_grad, traced
from .scan_cpu import load_extension


# Smallest input (elements) the kernel takes: below it the calls are a few microseconds either way
# and the checks before the kernel cost more than it saves (ATen's 10-18 us against the kernel's
# 8-13 at 49 x 768 and 196 x 384 rows, 39 against 22 at 784 x 192; benchmarks/bench_layer_norm.py).
MIN_ELEMENTS = 100_000


def _is_f32_cpu(t: Optional[Tensor]) -> bool:
    return t is None or (t.dtype is torch.float32 and t.device.type == "cpu" and t.is_contiguous())


class _LayerNorm(torch.autograd.Function):
    """The kernel's LayerNorm of x (..., C) with its backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, ext):
        y, mean, rstd = ext.layer_norm(x, weight, bias, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.ext = ext
        return y

    @staticmethod
    def backward(ctx, gy):
        x, weight, mean, rstd = ctx.saved_tensors
        need_dx, need_dw, need_db = ctx.needs_input_grad[:3]
        dx, dw, db = ctx.ext.layer_norm_backward(gy.contiguous(), x, mean, rstd, weight, need_dx, need_dw, need_db)
        return (dx if need_dx else None), (dw if need_dw else None), (db if need_db else None), None, None


def layer_norm(x: Tensor, normalized_shape: Sequence[int], weight: Optional[Tensor] = None,
               bias: Optional[Tensor] = None, eps: float = 1e-5) -> Tensor:
    """``F.layer_norm(x, normalized_shape, weight, bias, eps)``: x (..., *normalized_shape),
    weight and bias of ``normalized_shape`` or None -> like x.

    CPU float32 eager calls normalising the last dimension of a contiguous x of at least
    ``MIN_ELEMENTS`` values run on the CPU kernel (see the module's docstring); everything else
    is ``F.layer_norm``."""
    # compiled, exported and traced calls first: the size test would put a guard on a symbolic shape
    if (not _plain_call() and x.numel() >= MIN_ELEMENTS and type(x) is Tensor and x.dtype is torch.float32
            and x.device.type == "cpu" and len(normalized_shape) == 1 and x.dim() >= 1
            and x.shape[-1] == normalized_shape[0] and x.is_contiguous() and _is_f32_cpu(weight) and _is_f32_cpu(bias)
            and not torch.is_autocast_enabled("cpu") and not traced(x, weight, bias) and _setting() != "aten"):
        ext = load_extension()  # built on first use; None where it cannot be built
        if ext is not None:
            if needs_grad(x, weight, bias):
                return _LayerNorm.apply(x, weight, bias, float(eps), ext)
            return ext.layer_norm(x, weight, bias, float(eps))[0]
    return F.layer_norm(x, normalized_shape, weight, bias, eps)


class LayerNorm(nn.LayerNorm):
    """``torch.nn.LayerNorm`` whose CPU float32 calls over the last dimension run on the CPU
    kernel (:func:`layer_norm`); the same parameters, initialisation and state-dict keys.

    forward: x (..., *normalized_shape) -> like x."""

    def forward(self, x: Tensor) -> Tensor:
        return layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
