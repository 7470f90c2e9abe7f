"""Checkpoints: the authors' formats, this project's, safetensors, and every way they go wrong."""
from __future__ import annotations

import os
import re
import sys
import types

import pytest
import torch

import vmamba
from conftest import load_golden
from vmamba.checkpoint import CheckpointError, read_checkpoint, save_weights


def small(name="vmamba_tiny_s1l8", **kw):
    torch.manual_seed(0)
    return vmamba.create_model(name, depths=(1, 1, 1, 1), dims=16, num_classes=5, **kw).eval()


def fresh_like(model):
    torch.manual_seed(123)
    return vmamba.create_model(model.config["architecture"], depths=(1, 1, 1, 1), dims=16, num_classes=5).eval()


def same_output(a, b):
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_round_trip_and_rebuild(tmp_path, suffix):
    model = small()
    path = save_weights(model, tmp_path / f"w{suffix}")
    other = fresh_like(model)
    assert vmamba.load_checkpoint(other, path) == ([], [])
    same_output(model, other)
    rebuilt = vmamba.load_model(path).eval()
    assert rebuilt.config == model.config
    same_output(model, rebuilt)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_safetensors_metadata_holds_config(tmp_path):
    model = small("vanilla_vmamba_tiny")
    _, meta = read_checkpoint(save_weights(model, tmp_path / "w.safetensors"))
    assert '"architecture": "vanilla_vmamba_tiny"' in meta["vmamba_config"]


def _fake_module_class(qualified):
    """A class defined in a throw-away module, gone again before loading (like yacs on a
    machine without yacs)."""
    module_name, name = qualified.rsplit(".", 1)
    mod = types.ModuleType(module_name)
    cls = type(name, (dict,), {"__module__": module_name})
    mod.__dict__[name] = cls
    sys.modules[module_name] = mod
    return cls


def test_authors_training_checkpoint_with_yacs_config_and_ema(tmp_path):
    model, ema = small(), small()
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(0.01)
    CfgNode = _fake_module_class("fake_yacs_config.CfgNode")
    try:
        cfg = CfgNode(MODEL=CfgNode(NAME="vssm"))
        torch.save({"model": model.state_dict(), "model_ema": ema.state_dict(), "optimizer": {"state": {}},
                    "lr_scheduler": {"x": 1}, "epoch": 7, "config": cfg}, tmp_path / "ckpt_epoch_7.pth")
    finally:
        del sys.modules["fake_yacs_config"]
    target = fresh_like(model)
    vmamba.load_checkpoint(target, tmp_path / "ckpt_epoch_7.pth")
    same_output(model, target)
    vmamba.load_checkpoint(target, tmp_path / "ckpt_epoch_7.pth", use_ema=True)
    same_output(ema, target)
    contents, _ = read_checkpoint(tmp_path / "ckpt_epoch_7.pth")
    assert type(contents["config"]).__name__ == "CfgNode" and contents["config"]["MODEL"]["NAME"] == "vssm"


def test_use_ema_without_ema_is_an_error():
    model = small()
    with pytest.raises(CheckpointError, match="no 'model_ema' entry"):
        vmamba.load_checkpoint(model, {"model": model.state_dict()}, use_ema=True)


def test_january_2024_key_names():
    """The release that shipped the paper's v0 weights used older names."""
    g = load_golden("golden_v0_tiny_small.pt")
    renames = [(r"^patch_embed\.0\.", "patch_embed.proj."), (r"^patch_embed\.2\.", "patch_embed.norm."),
               (r"\.blocks\.(\d+)\.norm\.", r".blocks.\1.ln_1."), (r"\.blocks\.(\d+)\.op\.", r".blocks.\1.self_attention."),
               (r"^classifier\.norm\.", "norm."), (r"^classifier\.head\.", "head.")]
    old = {}
    for key, value in g["state_dict"].items():
        for pattern, repl in renames:
            key = re.sub(pattern, repl, key)
        old[key] = value
    assert "layers.0.blocks.0.self_attention.A_logs" in old and "head.weight" in old
    model = vmamba.from_official_config(g["config"]).eval()
    vmamba.load_checkpoint(model, {"model": old})
    with torch.no_grad():
        torch.testing.assert_close(model(g["input"]), g["logits"], rtol=0, atol=1e-4)


def test_ddp_prefix_and_1x1_conv_weights():
    model = small()
    state = {"module." + k: (v[:, :, None, None] if k.endswith("in_proj.weight") else v)
             for k, v in model.state_dict().items()}
    target = fresh_like(model)
    vmamba.load_checkpoint(target, {"state_dict": state})
    same_output(model, target)


def test_detection_checkpoint_backbone_part():
    backbone = vmamba.create_model("vmamba_tiny_s1l8", features_only=True, depths=(1, 1, 1, 1), dims=16).eval()
    state = {"backbone." + k: v for k, v in backbone.state_dict().items()}
    state["neck.lateral_convs.0.conv.weight"] = torch.zeros(4, 4, 1, 1)
    state["rpn_head.rpn_conv.bias"] = torch.zeros(4)
    torch.manual_seed(5)
    target = vmamba.create_model("vmamba_tiny_s1l8", features_only=True, depths=(1, 1, 1, 1), dims=16).eval()
    vmamba.load_checkpoint(target, {"meta": {}, "state_dict": state})
    x = torch.randn(1, 3, 32, 32)
    for a, b in zip(backbone(x), target(x)):
        torch.testing.assert_close(a, b)


def test_mismatches_are_listed():
    model = small()
    state = dict(model.state_dict())
    state.pop("layers.0.blocks.0.op.A_logs")
    state["layers.0.blocks.0.op.extra"] = torch.zeros(1)
    state["layers.1.blocks.0.op.Ds"] = torch.zeros(3)
    with pytest.raises(CheckpointError) as e:
        vmamba.load_checkpoint(fresh_like(model), state)
    text = str(e.value)
    assert "missing from the checkpoint (1)" in text and "layers.0.blocks.0.op.A_logs" in text
    assert "unexpected in the checkpoint (1)" in text and "layers.0.blocks.0.op.extra" in text
    assert "layers.1.blocks.0.op.Ds: checkpoint (3,) vs model (128,)" in text


def test_non_strict_reports_and_warns_but_shapes_still_raise():
    model = small()
    state = dict(model.state_dict())
    state.pop("classifier.head.bias")
    target = fresh_like(model)
    with pytest.warns(UserWarning, match="1 missing"):
        report = vmamba.load_checkpoint(target, state, strict=False)
    assert report.missing == ["classifier.head.bias"] and report.unexpected == []
    state["layers.1.blocks.0.op.Ds"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match="wrong shape"):
        vmamba.load_checkpoint(target, state, strict=False)


def test_other_number_of_classes_hint_and_exclude():
    model = small()
    target = vmamba.create_model("vmamba_tiny_s1l8", depths=(1, 1, 1, 1), dims=16, num_classes=9)
    with pytest.raises(CheckpointError, match="exclude=\\['classifier.head'\\]"):
        vmamba.load_checkpoint(target, model.state_dict())
    vmamba.load_checkpoint(target, model.state_dict(), exclude=["classifier.head"])
    torch.testing.assert_close(target.patch_embed[0].weight, model.patch_embed[0].weight)


def test_missing_and_corrupt_files(tmp_path):
    model = small()
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        vmamba.load_checkpoint(model, tmp_path / "nope.pth")
    good_pth = save_weights(model, tmp_path / "good.pth").read_bytes()
    good_st = save_weights(model, tmp_path / "good.safetensors").read_bytes()
    cases = {
        "empty.pth": b"",
        "noise.pth": os.urandom(4096),
        "truncated.pth": good_pth[: len(good_pth) // 2],
        "truncated.safetensors": good_st[: len(good_st) // 2],
        "text.pth": b"hello, I am not a checkpoint\n",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError, match=re.escape(name)):
            vmamba.load_checkpoint(model, tmp_path / name)


def test_no_tensors_is_an_error(tmp_path):
    torch.save({"epoch": 3, "note": "hi"}, tmp_path / "meta.pth")
    with pytest.raises(CheckpointError, match="no tensors found"):
        vmamba.load_checkpoint(small(), tmp_path / "meta.pth")


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_malicious_pickle_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"model": small().state_dict(), "x": _Evil(marker)}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="refusing to load"):
        vmamba.load_checkpoint(small(), tmp_path / "evil.pth")
    assert not marker.exists()


def test_create_model_checkpoint_path(tmp_path):
    model = small()
    path = save_weights(model, tmp_path / "w.safetensors")
    again = vmamba.create_model("vmamba_tiny_s1l8", depths=(1, 1, 1, 1), dims=16, num_classes=5,
                                checkpoint_path=str(path)).eval()
    same_output(model, again)
