"""vmamba.ops.Conv2d: nn.Conv2d whose CPU inference reuses oneDNN's packed weight, same values."""
from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import vmamba
from vmamba.models.layers import channels_last_conv
from vmamba.ops import Conv2d, linear_backend
from vmamba.ops.conv import packed_available

needs_packed = pytest.mark.skipif(not packed_available(), reason="oneDNN's packed convolution is not usable here")

# (in, out, kernel, stride, padding, groups, bias): the stem, downsampler and depthwise kinds
CONFIGS = [(6, 10, 3, 2, 1, 1, True), (8, 12, 2, 2, 0, 1, True), (8, 8, 3, 1, 1, 8, False), (3, 4, 4, 4, 0, 1, True)]


def _conv(cin, cout, k, stride, pad, groups, bias, channels_last=True, seed=0):
    torch.manual_seed(seed)
    conv = Conv2d(cin, cout, k, stride=stride, padding=pad, groups=groups, bias=bias)
    return channels_last_conv(conv) if channels_last else conv


def _reference(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)


@needs_packed
@pytest.mark.parametrize("cfg", CONFIGS, ids=["strided", "k2s2", "depthwise", "patch"])
@pytest.mark.parametrize("channels_last", [True, False], ids=["cl", "nchw"])
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_packed_inference_equals_conv2d(cfg, channels_last, mode):
    conv = _conv(*cfg, channels_last=channels_last)
    x = torch.randn(2, cfg[0], 13, 11)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad() if mode == "no_grad" else torch.inference_mode():
        y = conv(x)
        assert "_packed" in conv.__dict__, "the packed path was not taken"
        torch.testing.assert_close(y, _reference(conv, x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(conv(x), y, rtol=0, atol=0)  # the cached weight gives the same


@needs_packed
def test_packed_weight_follows_updates_and_input_shapes():
    conv = _conv(*CONFIGS[0])
    x = torch.randn(1, 6, 14, 14)
    with torch.no_grad():
        conv(x)
        conv.weight.mul_(-3.0)  # in place, as an optimizer step: the version counter moves
        torch.testing.assert_close(conv(x), _reference(conv, x), rtol=1e-5, atol=1e-5)
        other = _conv(*CONFIGS[0], seed=1)
        conv.load_state_dict(other.state_dict())
        torch.testing.assert_close(conv(x), _reference(other, x), rtol=1e-5, atol=1e-5)
        conv.weight = nn.Parameter(other.weight.detach() * 2)  # a new tensor
        torch.testing.assert_close(conv(x), _reference(conv, x), rtol=1e-5, atol=1e-5)
        x2 = torch.randn(3, 6, 9, 20)  # another input shape: packed again for it
        torch.testing.assert_close(conv(x2), _reference(conv, x2), rtol=1e-5, atol=1e-5)
        assert conv.__dict__["_packed"][0][-1] == tuple(x2.shape)


@pytest.mark.parametrize("case", ["grad", "aten", "float64", "flop_counter"])
def test_plain_path_where_packing_does_not_apply(case):
    conv = _conv(*CONFIGS[0])
    x = torch.randn(2, 6, 10, 10, requires_grad=case == "grad")
    if case == "float64":
        conv, x = conv.double(), x.double()
    if case == "grad":
        y = conv(x)
        y.square().sum().backward()
        xr = x.detach().clone().requires_grad_()
        wr = conv.weight.detach().clone().requires_grad_()
        F.conv2d(xr, wr, conv.bias.detach(), 2, 1).square().sum().backward()
        torch.testing.assert_close(x.grad, xr.grad)
        torch.testing.assert_close(conv.weight.grad, wr.grad)
    else:
        with torch.no_grad():
            if case == "aten":
                with linear_backend("aten"):
                    y = conv(x)
            elif case == "flop_counter":
                with FlopCounterMode(display=False) as counter:
                    y = conv(x)
                assert counter.get_total_flops() == 2 * 2 * 10 * 6 * 9 * 5 * 5  # 2 * B*Cout*Cin*k*k*Hout*Wout
            else:
                y = conv(x)
    assert "_packed" not in conv.__dict__
    torch.testing.assert_close(y, _reference(conv, x.detach()), rtol=1e-5, atol=1e-5)


@needs_packed
def test_packed_weight_is_never_saved():
    model = vmamba.create_model("vmamba_tiny_s1l8", num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        y = model(x)
        with linear_backend("aten"):
            torch.testing.assert_close(model(x), y, rtol=1e-4, atol=1e-4)
    convs = [m for m in model.modules() if isinstance(m, Conv2d)]
    assert convs and all("_packed" in m.__dict__ for m in convs)
    assert not any("packed" in k for k in model.state_dict())
    clone = copy.deepcopy(model)
    assert not any("_packed" in m.__dict__ for m in clone.modules())
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert not any("_packed" in m.__dict__ for m in loaded.modules())
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), y, rtol=0, atol=0)
