"""vmamba.ops.LayerNorm / layer_norm: nn.LayerNorm on the CPU kernel for float32 rows; same values and gradients."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from vmamba.ops import LayerNorm, layer_norm, linear_backend, norm as norm_mod, scan_cpu

needs_kernel = pytest.mark.skipif(not scan_cpu.is_available(), reason="the CPU kernel cannot be built here")


@pytest.fixture(autouse=True)
def kernel_at_every_size(monkeypatch):
    """Small test inputs on the kernel too (the models send it only inputs of MIN_ELEMENTS and up)."""
    monkeypatch.setattr(norm_mod, "MIN_ELEMENTS", 0)

# (input shape, affine, bias): whole and partial SIMD vectors per row, one-row and tiny inputs
CASES = [((2, 5, 7, 96), True, True), ((3, 77), True, True), ((1, 1, 13), True, False), ((4, 9, 48), False, False),
         ((6, 1536), True, True)]


def _pair(shape, affine, bias, seed=0):
    torch.manual_seed(seed)
    ours = LayerNorm(shape[-1], eps=1e-5, elementwise_affine=affine, bias=bias)
    if affine:
        with torch.no_grad():
            ours.weight.normal_()
            if ours.bias is not None:
                ours.bias.normal_()
    ref = nn.LayerNorm(shape[-1], eps=1e-5, elementwise_affine=affine, bias=bias)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


@needs_kernel
@pytest.mark.parametrize("case", CASES, ids=["map", "odd", "tiny", "plain", "wide"])
def test_layer_norm_equals_torch(case):
    shape, affine, bias = case
    ours, ref = _pair(shape, affine, bias)
    x = torch.randn(shape) * 3 + 1
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = ours(x1), ref(x2)
    assert type(y1.grad_fn).__name__.startswith("_LayerNorm"), "the kernel was not taken"
    torch.testing.assert_close(y1, y2, rtol=1e-5, atol=1e-5)
    gy = torch.randn(shape)
    y1.backward(gy)
    y2.backward(gy)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-4, atol=1e-4)
    for p1, p2 in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(p1.grad, p2.grad, rtol=1e-4, atol=1e-4)
    with torch.inference_mode():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


@needs_kernel
def test_layer_norm_gradient_of_the_input_only_and_of_the_parameters_only():
    ours, ref = _pair((3, 8, 40), True, True)
    x = torch.randn(3, 8, 40, requires_grad=True)
    ours.requires_grad_(False)
    ours(x).sum().backward()
    x2 = x.detach().clone().requires_grad_()
    ref(x2).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-4)
    assert ours.weight.grad is None
    ours.requires_grad_(True)
    ref.zero_grad()
    ours(x.detach()).pow(2).sum().backward()
    ref(x.detach()).pow(2).sum().backward()
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad, rtol=1e-4, atol=1e-4)


@needs_kernel
def test_layer_norm_parameter_gradients_do_not_depend_on_threads():
    ours, _ = _pair((37, 64), True, True)
    x, gy = torch.randn(37, 64), torch.randn(37, 64)
    grads, threads = [], torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            ours.zero_grad(set_to_none=True)
            ours(x).backward(gy)
            grads.append([p.grad.clone() for p in ours.parameters()])
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("case", ["non-contiguous", "float64", "two-dims", "aten", "no-kernel", "flop-counter", "small"])
def test_layer_norm_plain_path_cases(case, monkeypatch):
    x = torch.randn(4, 6, 32, requires_grad=True)
    ln = LayerNorm(32)
    if case == "non-contiguous":
        x = x.transpose(0, 1)
    elif case == "float64":
        ln, x = ln.double(), x.double()
    elif case == "two-dims":
        ln = LayerNorm((6, 32))
    elif case == "no-kernel":
        monkeypatch.setattr(norm_mod, "load_extension", lambda: None)
    elif case == "small":
        monkeypatch.setattr(norm_mod, "MIN_ELEMENTS", x.numel() + 1)
    if case == "aten":
        with linear_backend("aten"):
            y = ln(x)
    elif case == "flop-counter":
        with FlopCounterMode(display=False):  # a dispatch mode: the ATen op, which counters see
            y = ln(x)
    else:
        y = ln(x)
    assert not type(y.grad_fn).__name__.startswith("_LayerNorm")
    torch.testing.assert_close(y, F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps), rtol=0, atol=0)


def test_layer_norm_module_is_an_nn_layernorm_with_the_same_keys():
    ln = LayerNorm(24, eps=1e-6)
    assert isinstance(ln, nn.LayerNorm)
    assert list(ln.state_dict()) == list(nn.LayerNorm(24).state_dict())
    x = torch.randn(2, 24)
    torch.testing.assert_close(layer_norm(x, (24,)), F.layer_norm(x, (24,)), rtol=1e-5, atol=1e-5)


@needs_kernel
def test_layer_norm_op_names_bad_input():
    ext = scan_cpu.load_extension()
    x, w = torch.randn(5, 8), torch.randn(8)
    with pytest.raises(RuntimeError, match="float32"):
        ext.layer_norm(x.double(), w, None, 1e-5)
    with pytest.raises(RuntimeError, match="weight"):
        ext.layer_norm(x, torch.randn(7), None, 1e-5)
    with pytest.raises(RuntimeError, match="contiguous"):
        ext.layer_norm(x.t(), None, None, 1e-5)
    y, mean, rstd = ext.layer_norm(x, w, None, 1e-5)
    with pytest.raises(RuntimeError, match="differ"):
        ext.layer_norm_backward(torch.randn(5, 9), x, mean, rstd, w, True, True, True)
    with pytest.raises(RuntimeError, match="mean and rstd"):
        ext.layer_norm_backward(torch.randn(5, 8), x, mean[:3], rstd, w, True, True, True)


def test_models_match_with_the_cpu_kernel_disabled(tmp_path):
    # VMAMBA_CPU_KERNEL=0 (or no compiler): the scan on the "torch" backend, the depthwise convolutions
    # and LayerNorms on ATen; the same logits and gradients as with the kernel
    import os
    import subprocess
    import sys

    import vmamba

    torch.manual_seed(0)
    model = vmamba.create_model("vmamba_tiny_s1l8", dims=16, depths=(1, 1), num_classes=5, drop_path_rate=0.0)
    x = torch.randn(2, 3, 64, 64)
    torch.save({"state": model.state_dict(), "x": x}, tmp_path / "in.pt")
    code = f"""
import torch, vmamba
from vmamba.ops import scan_cpu
d = torch.load({str(tmp_path / 'in.pt')!r})
model = vmamba.create_model("vmamba_tiny_s1l8", dims=16, depths=(1, 1), num_classes=5, drop_path_rate=0.0)
model.load_state_dict(d["state"])
y = model(d["x"])
y.square().sum().backward()
assert scan_cpu.load_extension() is None and "VMAMBA_CPU_KERNEL" in scan_cpu.extension_info()["error"]
torch.save({{"y": y.detach(), "g": {{n: p.grad for n, p in model.named_parameters()}}}}, {str(tmp_path / 'out.pt')!r})
"""
    env = dict(os.environ, VMAMBA_CPU_KERNEL="0")
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    y = model(x)
    y.square().sum().backward()
    out = torch.load(tmp_path / "out.pt")
    torch.testing.assert_close(out["y"], y.detach(), rtol=1e-4, atol=1e-4)
    for name, p in model.named_parameters():
        torch.testing.assert_close(out["g"][name], p.grad, rtol=1e-3, atol=1e-3, msg=name)
