"""FLOPs and parameters in the paper's convention."""
from __future__ import annotations

import json

import pytest
import torch

import vmamba
from vmamba.analysis import count_flops, scan_flops
from vmamba.cli import main

SPEC_GFLOPS = {  # the paper's tables (224x224)
    "vanilla_vmamba_tiny": 5.63, "vanilla_vmamba_small": 11.23, "vanilla_vmamba_base": 18.02,
    "vmamba_tiny_s1l8": 4.91, "vmamba_small_s1l20": 8.61, "vmamba_base_s1l20": 15.22,
    "vmamba_tiny_s2l5": 4.86, "vmamba_small_s2l15": 8.72, "vmamba_base_s2l15": 15.36,
}


@pytest.mark.parametrize("name", sorted(SPEC_GFLOPS))
def test_zoo_flops_match_the_paper(name):
    report = count_flops(vmamba.create_model(name))
    assert abs(report.flops / 1e9 / SPEC_GFLOPS[name] - 1) < 0.01
    assert sum(report.by_module.values()) == report.flops


def test_scan_formula_against_a_manual_count():
    # One scan step per (b, d, l, n): exp(dt*A) (2: mul, exp), dt*B*u (2), h*a + x (2), C*h (1) and
    # accumulation over n (1), plus the dt*u product shared over n: the authors' 9*BDLN + BDL.
    assert scan_flops(2, 8, 10, 4) == 9 * 2 * 8 * 10 * 4 + 2 * 8 * 10
    # In a model: 4 directions * d_inner channels per SS2D, at every block.
    model = vmamba.create_model("vanilla_vmamba_tiny", depths=(1, 1, 1, 1), dims=16)
    report = count_flops(model, size=(64, 64))
    expected = sum(scan_flops(1, 4 * 2 * 16 * 2 ** i, (16 // 2 ** i) ** 2, 16) for i in range(4))
    assert report.by_op["vmamba.scan_flop_probe"] == expected


def test_flops_scale_linearly_in_pixels_for_the_scan():
    model = vmamba.create_model("vmamba_tiny_s1l8")
    small, big = (count_flops(model, size=s).by_op["vmamba.scan_flop_probe"] for s in ((224, 224), (448, 448)))
    assert big == 4 * small


def test_counting_leaves_the_model_alone():
    model = vmamba.create_model("vmamba_tiny_s1l8", depths=(1, 1, 1, 1), dims=16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    count_flops(model, size=(32, 32))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.config["scan_backend"] == "auto" and next(model.parameters()).device.type == "cpu"
    assert all(m.scan_backend == "auto" for m in model.modules() if hasattr(m, "scan_backend"))


def test_counting_leaves_the_scan_registry_alone():
    from vmamba.ops.backends import _BACKENDS

    before = dict(_BACKENDS)
    count_flops(vmamba.create_model("vmamba_tiny_s1l8", depths=(1, 1, 1, 1), dims=16), size=(32, 32))
    assert _BACKENDS == before and "flop probe" not in vmamba.ops.available_backends()


def test_cli_json(capsys):
    assert main(["flops", "vmamba_tiny_s1l8", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["params"] == 30_249_064 and abs(result["flops"] / 4.91e9 - 1) < 0.01
    assert main(["flops", "vanilla_vmamba_tiny", "--size", "64", "96"]) == 0
    assert "selective scan" in capsys.readouterr().out


def test_flop_counter_sees_the_cpu_kernel():
    if "cpu" not in vmamba.ops.available_backends():
        pytest.skip("the cpu kernel is not available here")
    from torch.utils.flop_counter import FlopCounterMode

    model = vmamba.create_model("vanilla_vmamba_tiny", depths=(1, 1, 1, 1), dims=16, scan_backend="cpu").eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    counted = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    expected = sum(scan_flops(1, 4 * 2 * 16 * 2 ** i, (16 // 2 ** i) ** 2, 16) for i in range(4))
    # SS2D hands the kernel its step sizes' projection too (d_inner = 2 * dim, rank = dim / 16),
    # counted as the batched product that projects them first: 2 * pixels * 4 * d_inner * rank
    projection = sum(2 * (16 // 2 ** i) ** 2 * 4 * (2 * 16 * 2 ** i) * 2 ** i for i in range(4))
    # FlopCounterMode: 2 per multiply-add
    assert counted["vmamba.cross_selective_scan_cpu_projected"] == 2 * expected + projection
    assert "aten.bmm" not in counted
