"""The optional timm integration (skipped when timm is not installed)."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# The workplace's shim for the registry's CUDA-only torchvision build, if it is around.
SHIMS = [p / "shared" / "tools" for p in Path(__file__).resolve().parents]


def _import_timm():
    """timm imports torchvision, which needs a CPU shim next to a CPU-only torch build."""
    if importlib.util.find_spec("timm") is None:
        pytest.skip("timm not installed (optional extra)")
    for shim in SHIMS:
        if (shim / "torchvision_cpu_shim.py").is_file() and str(shim) not in sys.path:
            sys.path.insert(0, str(shim))
            break
    try:
        import torchvision_cpu_shim  # noqa: F401
    except ImportError:
        pass
    try:
        import timm
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"timm does not import here: {e}")
    return timm


def test_zoo_through_timm():
    timm = _import_timm()
    import vmamba

    vmamba.register_timm_models()
    assert set(vmamba.models.ZOO) <= set(timm.list_models())
    model = timm.create_model("vmamba_tiny_s1l8", num_classes=4, depths=(1, 1, 1, 1), dims=16)
    assert isinstance(model, vmamba.VSSM) and model(torch.randn(1, 3, 32, 32)).shape == (1, 4)
    feats = timm.create_model("vanilla_vmamba_tiny", features_only=True, out_indices=(2, 3),
                              depths=(1, 1, 1, 1), dims=16)
    assert feats.feature_info.channels() == [64, 128]
    assert {"vmamba_tiny_s1l8.in1k", "vanilla_vmamba_small.in1k_ema"} <= set(timm.list_models(pretrained=True))
    assert timm.models.get_pretrained_cfg("vmamba_tiny_s1l8.in1k").crop_pct == 0.875


def test_importing_vmamba_does_not_import_timm():
    code = "import sys, vmamba; assert 'timm' not in sys.modules and 'torchvision' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
