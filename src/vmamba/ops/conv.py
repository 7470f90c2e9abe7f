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


class Conv2d(nn.Conv2d):
    """``torch.nn.Conv2d`` whose eager CPU float32 inference runs on a cached oneDNN-packed weight
    (see the module's docstring); same parameters, state-dict keys and values.

    forward: x (B, C_in, H, W) -> (B, C_out, H_out, W_out), as ``nn.Conv2d``."""

    def forward(self, x: Tensor) -> Tensor:
        if not self._takes_packed(x):
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

    def __getstate__(self):
        state = dict(super().__getstate__())
        state.pop("_packed", None)  # an opaque oneDNN tensor: made again on the next call
        return state
