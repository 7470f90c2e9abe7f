"""vmamba.ops.Conv2d: nn.Conv2d with the CPU kernel's depthwise 3x3 convolution and an im2col backward for
wide strided training calls; same values."""
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
from vmamba.ops import Conv2d, conv as conv_mod, linear_backend, scan_cpu

# (in, out, kernel, stride, padding, groups, bias): the stem, downsampler and depthwise kinds
CONFIGS = [(6, 10, 3, 2, 1, 1, True), (8, 12, 2, 2, 0, 1, True), (8, 8, 3, 1, 1, 8, False), (3, 4, 4, 4, 0, 1, True)]


def _conv(cin, cout, k, stride, pad, groups, bias, channels_last=True, seed=0):
    torch.manual_seed(seed)
    conv = Conv2d(cin, cout, k, stride=stride, padding=pad, groups=groups, bias=bias)
    return channels_last_conv(conv) if channels_last else conv


def _reference(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)


@pytest.mark.parametrize("cfg", CONFIGS, ids=["strided", "k2s2", "depthwise", "patch"])
@pytest.mark.parametrize("channels_last", [True, False], ids=["cl", "nchw"])
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "grad"])
def test_conv2d_equals_functional_conv(cfg, channels_last, mode):
    conv = _conv(*cfg, channels_last=channels_last)
    x = torch.randn(2, cfg[0], 13, 11)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad() if mode == "no_grad" else torch.inference_mode() if mode == "inference_mode" \
            else torch.enable_grad():
        y = conv(x)
    # the depthwise kernel sums the taps in another order than oneDNN: float rounding apart
    on_kernel = cfg[5] > 1 and channels_last and scan_cpu.is_available()
    tol = 1e-6 if on_kernel else 0
    torch.testing.assert_close(y, _reference(conv, x), rtol=tol, atol=tol)
    assert not any(isinstance(v, torch.Tensor) for v in conv.__dict__.values())  # nothing cached


@pytest.mark.parametrize("how", ["fused_adamw", "data_write"])
def test_inference_after_weight_updates_the_version_counter_misses(how):
    # Fused optimizers and writes through .data leave the weight's version counter as it was;
    # an inference call after them must still use the new weight (a cached copy keyed on the
    # counter gave the old one's outputs).
    model = vmamba.create_model("vmamba_tiny_s1l8", dims=8, depths=(1, 1), num_classes=3, drop_path_rate=0.0)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        model.eval()(x)
    if how == "fused_adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
        F.cross_entropy(model.train()(x), torch.tensor([0, 1])).backward()
        opt.step()
    else:
        for m in model.modules():
            if isinstance(m, Conv2d):
                m.weight.data.mul_(-2.0)
    fresh = copy.deepcopy(model).eval()
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), fresh(x), rtol=0, atol=0)


@pytest.mark.parametrize("case", ["aten", "float64", "flop_counter"])
def test_plain_path_cases(case):
    conv = _conv(*CONFIGS[0])
    x = torch.randn(2, 6, 10, 10)
    if case == "float64":
        conv, x = conv.double(), x.double()
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
    torch.testing.assert_close(y, _reference(conv, x), rtol=1e-5, atol=1e-5)


def test_conv_modules_pickle_and_copy():
    model = vmamba.create_model("vmamba_tiny_s1l8", num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        y = model(x)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), y, rtol=0, atol=0)
        torch.testing.assert_close(copy.deepcopy(model)(x), y, rtol=0, atol=0)


# (batch, C_in, C_out, H, W): K = C_in * 9 >= 2304 and few output pixels, the last downsamplers' kind
IM2COL_CASES = [(2, 256, 24, 9, 8), (1, 384, 16, 14, 14)]


@pytest.mark.parametrize("case", IM2COL_CASES, ids=["odd-map", "stage4"])
@pytest.mark.parametrize("channels_last", [True, False], ids=["cl", "nchw"])
@pytest.mark.parametrize("wants", ["all", "weight-only", "no-bias"])
def test_im2col_backward_equals_conv2d(case, channels_last, wants):
    b, cin, cout, h, w = case
    conv = _conv(cin, cout, 3, 2, 1, 1, wants != "no-bias", channels_last=channels_last)
    x = torch.randn(b, cin, h, w)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(wants != "weight-only")
    y = conv(x)
    assert type(y.grad_fn).__name__.startswith("_Im2colConv"), "the im2col path was not taken"
    gy = torch.randn_like(y)
    y.backward(gy)
    xr = x.detach().clone().requires_grad_()
    wr = conv.weight.detach().clone().requires_grad_()
    br = None if conv.bias is None else conv.bias.detach().clone().requires_grad_()
    yr = F.conv2d(xr, wr, br, 2, 1)
    yr.backward(gy)
    if channels_last and cin * 9 >= 3456:  # the forward is the im2col product, channel-last as oneDNN's
        torch.testing.assert_close(y, yr, rtol=1e-4, atol=1e-4)
        assert y.is_contiguous(memory_format=torch.channels_last)
    else:  # oneDNN's (K = 2304 is below the forward's threshold; a contiguous weight keeps oneDNN's)
        torch.testing.assert_close(y, yr, rtol=0, atol=0)
    torch.testing.assert_close(conv.weight.grad, wr.grad, rtol=1e-4, atol=1e-4)
    assert conv.weight.grad.stride() == conv.weight.stride()  # the gradient in the weight's layout
    if br is not None:
        torch.testing.assert_close(conv.bias.grad, br.grad, rtol=1e-4, atol=1e-4)
    if wants == "weight-only":
        assert x.grad is None
    else:
        torch.testing.assert_close(x.grad, xr.grad, rtol=1e-4, atol=1e-4)
        assert x.grad.stride() == x.stride()


@pytest.mark.parametrize("case", [(2, 512, 24, 9, 8), (1, 384, 16, 14, 14)], ids=["odd-map", "stage4"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_im2col_inference_equals_conv2d(case, bias, mode, monkeypatch):
    import vmamba.ops.conv as conv_mod

    b, cin, cout, h, w = case
    conv = _conv(cin, cout, 3, 2, 1, 1, bias)
    x = torch.randn(b, cin, h, w).contiguous(memory_format=torch.channels_last)
    calls = []
    product = conv_mod._im2col_conv
    monkeypatch.setattr(conv_mod, "_im2col_conv", lambda *a: calls.append(1) or product(*a))
    with getattr(torch, mode)():
        y = conv(x)
        yr = _reference(conv, x)
    assert calls, "the im2col product was not taken"
    torch.testing.assert_close(y, yr, rtol=1e-4, atol=1e-4)
    assert y.shape == yr.shape and y.is_contiguous(memory_format=torch.channels_last)
    calls.clear()
    nchw = _conv(cin, cout, 3, 2, 1, 1, bias, channels_last=False)  # a contiguous weight keeps oneDNN's forward
    with torch.no_grad():
        torch.testing.assert_close(nchw(x), _reference(nchw, x), rtol=0, atol=0)
    assert not calls


def test_im2col_only_where_it_wins():
    from vmamba.ops.conv import IM2COL_FORWARD_MAX_PIXELS, IM2COL_MAX_PIXELS, im2col_forward_wins, im2col_wins

    def wins(b, cin, h, k=3, stride=2, groups=1, dilation=1):
        return im2col_wins((b, cin, h, h), (2 * cin, cin // groups, k, k), (stride, stride), (1, 1),
                           (dilation, dilation), groups)

    assert wins(1, 384, 14) and wins(8, 384, 14) and wins(1, 512, 14) and wins(1, 256, 28)
    assert not wins(1, 192, 28)  # K = 1728: oneDNN is as fast
    assert not wins(8, 256, 28)  # 1568 output pixels
    assert wins(4, 256, 32) and not wins(5, 256, 32)  # 4 * 16 * 16 = 1024 = IM2COL_MAX_PIXELS
    assert IM2COL_MAX_PIXELS == 1024
    assert not wins(1, 384, 14, k=2) and not wins(1, 384, 14, stride=1)
    assert not wins(1, 384, 14, groups=2) and not wins(1, 384, 14, dilation=2)

    def forward_wins(b, cin, h):
        return im2col_forward_wins((b, cin, h, h), (2 * cin, cin, 3, 3), (2, 2), (1, 1), (1, 1), 1)

    assert forward_wins(1, 384, 14) and forward_wins(8, 384, 14) and forward_wins(1, 384, 32)
    assert not forward_wins(1, 256, 28)  # K = 2304: the backward's threshold only
    assert forward_wins(2, 384, 32) and not forward_wins(3, 384, 32)  # 2 * 16 * 16 = 512 output pixels
    assert IM2COL_FORWARD_MAX_PIXELS == 512
    assert not forward_wins(1, 192, 28)
    conv = _conv(384, 8, 3, 2, 1, 1, True)
    x = torch.randn(1, 384, 14, 14, requires_grad=True)
    with linear_backend("aten"):  # the plain-ATen baseline keeps oneDNN's convolution
        assert "Im2col" not in type(conv(x).grad_fn).__name__
    conv64 = copy.deepcopy(conv).double()  # float64 keeps the plain convolution
    assert "Im2col" not in type(conv64(x.detach().double().requires_grad_()).grad_fn).__name__


needs_kernel = pytest.mark.skipif(not scan_cpu.is_available(), reason="the CPU kernel cannot be built here")

# (batch, C, H, W, bias): whole and partial SIMD vectors of channels, maps down to 1 x 1
DEPTHWISE_CASES = [(1, 32, 14, 14, True), (2, 20, 5, 7, False), (1, 17, 1, 1, True), (3, 33, 2, 9, True),
                   (1, 48, 9, 1, False)]


def _depthwise_input(b, c, h, w, requires_grad=True):
    x = torch.randn(b, c, h, w).contiguous(memory_format=torch.channels_last)
    return x.requires_grad_(requires_grad)


@needs_kernel
@pytest.mark.parametrize("case", DEPTHWISE_CASES, ids=["stage", "odd-c", "1x1", "wide", "column"])
@pytest.mark.parametrize("wants", ["all", "weight-only", "input-only"])
def test_depthwise_kernel_equals_conv2d(case, wants):
    b, c, h, w, bias = case
    conv = _conv(c, c, 3, 1, 1, c, bias)
    x = _depthwise_input(b, c, h, w, requires_grad=wants != "weight-only")
    conv.requires_grad_(wants != "input-only")
    y = conv(x)
    assert type(y.grad_fn).__name__.startswith("_DepthwiseConv3x3"), "the kernel was not taken"
    assert y.is_contiguous(memory_format=torch.channels_last)
    gy = torch.randn_like(y)
    y.backward(gy)
    xr = x.detach().clone().requires_grad_()
    wr = conv.weight.detach().clone().requires_grad_()
    br = None if conv.bias is None else conv.bias.detach().clone().requires_grad_()
    yr = F.conv2d(xr, wr, br, 1, 1, 1, c)
    yr.backward(gy)
    torch.testing.assert_close(y, yr, rtol=1e-5, atol=1e-5)
    with torch.inference_mode():
        torch.testing.assert_close(conv(x.detach()), yr, rtol=1e-5, atol=1e-5)
    if wants == "weight-only":
        assert x.grad is None
    else:
        torch.testing.assert_close(x.grad, xr.grad, rtol=1e-5, atol=1e-5)
        assert x.grad.is_contiguous(memory_format=torch.channels_last)
    if wants == "input-only":
        assert conv.weight.grad is None
    else:
        torch.testing.assert_close(conv.weight.grad, wr.grad, rtol=1e-4, atol=1e-4)
        assert conv.weight.grad.shape == conv.weight.shape
        if br is not None:
            torch.testing.assert_close(conv.bias.grad, br.grad, rtol=1e-4, atol=1e-4)


@needs_kernel
def test_depthwise_kernel_only_where_it_wins(monkeypatch):
    from vmamba.ops.conv import DEPTHWISE_MAX_PIXELS, depthwise_kernel_wins

    def wins(b, c, h, w=None, k=3, stride=1, pad=1, groups=None, dilation=1):
        return depthwise_kernel_wins((b, c, h, w or h), (c, 1, k, k), (stride, stride), (pad, pad),
                                     (dilation, dilation), groups or c)

    assert wins(1, 96, 56) and wins(1, 768, 7) and wins(8, 384, 14) and wins(1, 192, 64)
    assert not wins(8, 96, 56) and not wins(1, 96, 128)  # oneDNN's is as fast on large maps
    assert wins(1, 8, 64, 64) and not wins(1, 8, 64, 65) and DEPTHWISE_MAX_PIXELS == 4096
    assert not wins(1, 8, 14, k=5) and not wins(1, 8, 14, stride=2) and not wins(1, 8, 14, pad=0)
    assert not wins(1, 8, 14, dilation=2) and not wins(1, 8, 14, groups=4)

    def kind(conv, x):
        return type(conv(x).grad_fn).__name__

    conv = _conv(16, 16, 3, 1, 1, 16, True)
    x = _depthwise_input(2, 16, 6, 6)
    assert kind(conv, x).startswith("_DepthwiseConv3x3")
    assert not kind(conv, x.detach().contiguous().requires_grad_()).startswith("_Depthwise")  # NCHW memory
    assert not kind(copy.deepcopy(conv).double(), x.detach().double().requires_grad_()).startswith("_Depthwise")
    with linear_backend("aten"):  # the plain-ATen baseline keeps oneDNN's convolution
        assert not kind(conv, x).startswith("_Depthwise")
    monkeypatch.setattr(conv_mod, "load_extension", lambda: None)  # no compiler: nn.Conv2d
    y = conv(x)
    assert not type(y.grad_fn).__name__.startswith("_Depthwise")
    torch.testing.assert_close(y, _reference(conv, x), rtol=0, atol=0)


@needs_kernel
def test_depthwise_weight_gradient_does_not_depend_on_threads():
    conv = _conv(40, 40, 3, 1, 1, 40, True)
    x = _depthwise_input(2, 40, 9, 11, requires_grad=False)
    gy = torch.randn(2, 40, 9, 11).contiguous(memory_format=torch.channels_last)
    grads = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            conv.zero_grad(set_to_none=True)
            conv(x).backward(gy)
            grads.append((conv.weight.grad.clone(), conv.bias.grad.clone()))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@needs_kernel
def test_depthwise_kernel_op_names_bad_input():
    ext = scan_cpu.load_extension()
    x, taps = torch.randn(1, 4, 4, 8), torch.randn(9, 8)
    with pytest.raises(RuntimeError, match="float32"):
        ext.depthwise3x3(x.double(), taps, None)
    with pytest.raises(RuntimeError, match="taps"):
        ext.depthwise3x3(x, torch.randn(9, 7), None)
    with pytest.raises(RuntimeError, match="contiguous"):
        ext.depthwise3x3(x.transpose(1, 2), taps, None)
    with pytest.raises(RuntimeError, match="differ"):
        ext.depthwise3x3_weight_grad(torch.randn(1, 4, 5, 8), x, True)
