"""The optional timm integration (skipped when timm is not installed)."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch


def test_zoo_through_timm(timm_module):
    timm = timm_module
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
