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


# --- files that try to change the process through pickle's BUILD / SETITEM opcodes ----------

def _global(qualified: str) -> bytes:
    module, name = qualified.rsplit(".", 1)
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _str(text: str) -> bytes:
    data = text.encode()
    return b"X" + len(data).to_bytes(4, "little") + data


def _set_attribute(target: str, attribute: str) -> bytes:
    """Pickle ops: push ``target``, BUILD it with slot state {attribute: (7,)}, pop it."""
    return _global(target) + b"N}" + _str(attribute) + b"(K\x07ts\x86b0"


def _set_state(target: str) -> bytes:
    """Pickle ops: push ``target``, BUILD it with a plain dict state, pop it."""
    return _global(target) + b"}" + _str("pwned") + b"K\x01sb0"


def _set_item(target: str) -> bytes:
    """Pickle ops: push ``target``, SETITEM 'pwned' = 1 on it, pop it."""
    return _global(target) + _str("pwned") + b"K\x01s0"


def _inject(path, prefix: bytes, foreign: bool = True):
    """Rewrite a torch file so its pickle runs ``prefix`` first; with ``foreign``, also name an
    unknown class first (as the authors' yacs config does), which sends the file to the fallback
    loader instead of torch's weights_only loader."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        records = {info.filename: z.read(info.filename) for info in z.infolist()}
    (pkl,) = [name for name in records if name.endswith("/data.pkl")]
    data = records[pkl]
    assert data[:2] == b"\x80\x02"
    head = (_global("fake_yacs_config.CfgNode") + b"0") if foreign else b""
    records[pkl] = data[:2] + head + prefix + data[2:]
    path.unlink()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in records.items():
            z.writestr(name, data)
    return path


ATTACKS = [  # (pickle ops, object they would change, attribute)
    (_set_attribute("torch._utils._rebuild_tensor_v2", "__defaults__"), "torch._utils._rebuild_tensor_v2", "__defaults__"),
    (_set_attribute("torch._utils._rebuild_parameter", "__kwdefaults__"), "torch._utils._rebuild_parameter", "__kwdefaults__"),
    (_set_attribute("torch._utils._rebuild_tensor_v2", "pwned"), "torch._utils._rebuild_tensor_v2", "pwned"),
    (_set_attribute("torch.nn.parameter.Parameter", "pwned"), "torch.nn.parameter.Parameter", "pwned"),
    (_set_state("torch._utils._rebuild_parameter"), "torch._utils._rebuild_parameter", "pwned"),
    (_set_state("collections.OrderedDict"), "collections.OrderedDict", "pwned"),
    (_set_attribute("fake_yacs_config.CfgNode", "pwned"), None, None),  # the placeholder class itself
    (_set_item("torch._utils._rebuild_tensor_v2"), "torch._utils._rebuild_tensor_v2", "pwned"),
]


def _resolve(qualified):
    import importlib

    module, name = qualified.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("foreign", [True, False], ids=["fallback-loader", "torch-loader"])
@pytest.mark.parametrize("ops,target,attribute", ATTACKS,
                         ids=[f"{i}-{t or 'placeholder'}.{a or 'state'}" for i, (_, t, a) in enumerate(ATTACKS)])
def test_checkpoint_cannot_change_objects_outside_its_data(tmp_path, ops, target, attribute, foreign):
    """A crafted file may be refused, but loading it must leave every object of the process as
    it was: afterwards torch.load (and this package's own loaders) return the true tensors."""
    model = small()
    benign = tmp_path / "benign.pth"
    torch.save({"model": model.state_dict()}, benign)
    obj = _resolve(target) if target else None
    before = getattr(obj, attribute, "<absent>") if obj is not None else None

    evil = tmp_path / "evil.pth"
    torch.save({"model": model.state_dict(), "epoch": 1}, evil)
    _inject(evil, ops, foreign=foreign)
    with pytest.raises(CheckpointError, match="refusing to load|not a loadable checkpoint") as info:
        vmamba.load_checkpoint(fresh_like(model), evil)
    assert str(evil) in str(info.value)

    if obj is not None:
        assert getattr(obj, attribute, "<absent>") == before
    reread = torch.load(benign, weights_only=True)["model"]
    for key, value in model.state_dict().items():
        torch.testing.assert_close(reread[key], value, rtol=0, atol=0)
    target_model = fresh_like(model)
    vmamba.load_checkpoint(target_model, benign)
    same_output(model, target_model)


def test_injected_foreign_class_alone_still_loads(tmp_path):
    """The injection helper itself is sound: a file that only names an unknown class loads."""
    model = small()
    path = tmp_path / "ok.pth"
    torch.save({"model": model.state_dict()}, path)
    _inject(path, b"")
    target = fresh_like(model)
    vmamba.load_checkpoint(target, path)
    same_output(model, target)


# --- loading errors name the file ----------------------------------------------------------

def test_malformed_safetensors_metadata_names_the_file(tmp_path):
    from safetensors.torch import save_file

    model = small()
    path = tmp_path / "bad_meta.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={"vmamba_config": "{not json"})
    with pytest.raises(CheckpointError, match=r"bad_meta\.safetensors: malformed 'vmamba_config'"):
        vmamba.load_model(path)


def test_size_mismatch_through_load_model_names_the_file(tmp_path):
    model = small()
    path = save_weights(model, tmp_path / "five_classes.pth")
    contents = torch.load(path, weights_only=True)
    contents["model"]["classifier.head.weight"] = torch.zeros(5, 99)
    torch.save(contents, path)
    with pytest.raises(CheckpointError, match=r"five_classes\.pth does not fit VSSM:\n  wrong shape"):
        vmamba.load_model(path)


def test_a_folder_passed_as_a_file_is_named(tmp_path):
    (tmp_path / "ckpt.pth").mkdir()
    with pytest.raises(CheckpointError, match=r"ckpt\.pth is a folder, not a checkpoint file"):
        vmamba.load_checkpoint(small(), tmp_path / "ckpt.pth")
    with pytest.raises(CheckpointError, match=r"ckpt\.pth: no config\.json"):
        vmamba.load_model(tmp_path / "ckpt.pth")
