"""Deployment: torch.compile (fullgraph, eval and training), torch.export and ONNX with dynamic
shapes, mixed precision without NaN, save_pretrained round trips, the export command."""
from __future__ import annotations

import json

import pytest
import torch

import vmamba
from vmamba.cli import main as cli
from vmamba.deploy import (ExportError, ExportedModel, OnnxModel, accepted_inputs, compile_model, export_onnx,
                           export_program, save_program)
from vmamba.ops import available_backends, selective_scan

FAMILIES = ["vanilla_vmamba_tiny", "vmamba_tiny_s1l8"]
TINY = dict(depths=(1, 1), dims=16, num_classes=5)  # two stages: quick to compile and export
KERNEL_BACKENDS = [b for b in ("cpu",) if b in available_backends("cpu")]
needs_onnx = pytest.mark.skipif(
    any(__import__("importlib").util.find_spec(m) is None for m in ("onnx", "onnxscript", "onnxruntime")),
    reason="onnx, onnxscript and onnxruntime not installed (pip install 'vmamba[onnx]')")


def tiny(name, **kw):
    torch.manual_seed(0)
    return vmamba.create_model(name, **{**TINY, **kw})


# --- torch.compile ----------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name, backend", [("vanilla_vmamba_tiny", "torch")] + [(f, b) for f in FAMILIES
                                                                              for b in KERNEL_BACKENDS])
def test_compile_fullgraph_equals_eager_and_batch_changes_do_not_recompile(name, backend):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = tiny(name, scan_backend=backend).eval()
    compiled = compile_model(model)
    with torch.no_grad():
        for batch in (2, 3, 5):
            x = torch.randn(batch, 3, 32, 32)
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
    assert counters["stats"]["unique_graphs"] == 1  # one graph for every batch size >= 2


@pytest.mark.slow
@pytest.mark.parametrize("name, backend", [("vanilla_vmamba_tiny", b) for b in KERNEL_BACKENDS or ["torch"]])
def test_compiled_training_step_equals_eager(name, backend):
    torch._dynamo.reset()
    model = tiny(name, scan_backend=backend, drop_path_rate=0.0).train()
    compiled = compile_model(model)
    x, target = torch.randn(2, 3, 32, 32), torch.tensor([1, 3])

    def grads(fn):
        model.zero_grad()
        loss = torch.nn.functional.cross_entropy(fn(x), target)
        loss.backward()
        return loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}

    loss_c, grads_c = grads(compiled)
    loss_e, grads_e = grads(model)
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-5)
    for k in grads_e:
        torch.testing.assert_close(grads_c[k], grads_e[k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_frozen_compile_equals_eager_and_refuses_stale_weights(name):
    """freeze=True: Inductor's freezing (weights as constants, packed products); same logits for
    every batch size, no gradients, one graph for batches >= 2, and an error once the weights
    change (never the stale ones); eval mode and the inductor backend required."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = tiny(name, scan_backend=KERNEL_BACKENDS[0] if KERNEL_BACKENDS else "torch").eval()
    compiled = compile_model(model, freeze=True)
    for batch in (2, 3, 1):
        x = torch.randn(batch, 3, 32, 32)
        y = compiled(x)
        with torch.no_grad():
            torch.testing.assert_close(y, model(x), rtol=1e-5, atol=1e-5)
        assert not y.requires_grad
    assert counters["stats"]["unique_graphs"] == 2  # batch 1 and one graph for every batch >= 2
    with torch.no_grad():
        next(model.parameters()).mul_(0.5)
    with pytest.raises(RuntimeError, match=r"weights changed after compile_model\(freeze=True\)"):
        compiled(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"call model.eval\(\) first"):
        compile_model(tiny(name).train(), freeze=True)
    with pytest.raises(ValueError, match="needs the inductor backend"):
        compile_model(model, freeze=True, backend="aot_eager")


# --- torch.export and ONNX --------------------------------------------------------------------

@pytest.mark.parametrize("name", FAMILIES)
def test_torch_export_dynamic_batch_round_trip(name, tmp_path):
    model = tiny(name).eval()
    program = export_program(model, size=(32, 64))
    path = save_program(program, tmp_path / "m.pt2", accepted_inputs(model, (32, 64), 1, True, False))
    loaded = ExportedModel(path)
    with torch.no_grad():
        for batch in (1, 3):
            x = torch.randn(batch, 3, 32, 64)
            torch.testing.assert_close(loaded(x), model(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ExportError, match=r"height x width 32x64, got 64x64"):
        loaded(torch.randn(1, 3, 64, 64))


@pytest.mark.slow
def test_torch_export_dynamic_height_and_width():
    model = tiny("vmamba_tiny_s1l8").eval()
    program = export_program(model, size=(64, 96), dynamic_size=True).module()
    with torch.no_grad():
        for shape in [(1, 3, 32, 32), (2, 3, 96, 64), (1, 3, 64, 160)]:
            x = torch.randn(shape)
            torch.testing.assert_close(program(x), model(x), rtol=1e-5, atol=1e-5)


def check_onnx_session(session, model):
    """A static 32x64, dynamic-batch ONNX file of ``model``: equal to eager, inputs checked."""
    model.eval()
    assert session.accepted["height"] == 32 and session.accepted["batch"] is None
    assert session.accepted["mean"] == list(model.pretrained_cfg["mean"])
    with torch.no_grad():
        for batch in (1, 4):
            x = torch.randn(batch, 3, 32, 64)
            torch.testing.assert_close(session(x), model(x), rtol=1e-4, atol=1e-4)
    with pytest.raises(ExportError, match=r"expected height x width 32x64, got 32x32"):
        session(torch.randn(1, 3, 32, 32))
    with pytest.raises(ExportError, match=r"3 channels, got 1"):
        session(torch.randn(1, 1, 32, 64))


@needs_onnx
def test_onnx_export_runs_in_onnxruntime_equal_to_eager(tmp_path):
    # the v0 family here; the v2 family's file comes from the export command's test below
    model = tiny("vanilla_vmamba_tiny").eval()
    check_onnx_session(OnnxModel(export_onnx(model, tmp_path / "m.onnx", size=(32, 64))), model)


@needs_onnx
@pytest.mark.slow
def test_onnx_dynamic_size_graph_accepts_other_sizes(tmp_path):
    model = tiny("vanilla_vmamba_tiny").eval()
    session = OnnxModel(export_onnx(model, tmp_path / "m.onnx", size=(64, 96), dynamic_size=True))
    with torch.no_grad():
        for shape in [(1, 3, 32, 32), (2, 3, 128, 64)]:
            x = torch.randn(shape)
            torch.testing.assert_close(session(x), model(x), rtol=1e-4, atol=1e-4)
    with pytest.raises(ExportError, match="multiples of 32, got 48x64"):
        session(torch.randn(1, 3, 48, 64))


def test_export_rejects_bad_sizes_and_corrupt_files(tmp_path):
    model = tiny("vmamba_tiny_s1l8")
    with pytest.raises(ExportError, match="multiple of 32, got 40x64"):
        export_program(model, size=(40, 64), dynamic_size=True)
    with pytest.raises(ExportError, match=r"\(height, width\)"):
        export_program(model, size=(32,))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    if __import__("importlib").util.find_spec("onnxruntime"):
        with pytest.raises(ExportError, match="cannot load"):
            OnnxModel(bad)


def test_export_restores_the_models_scan_backend_and_mode():
    model = tiny("vmamba_tiny_s1l8", scan_backend="reference").train()
    export_program(model, size=(32, 32))
    assert model.config["scan_backend"] == "reference" and model.training


@needs_onnx
@pytest.mark.slow
def test_export_command_writes_and_verifies(tmp_path, capsys):
    model = tiny("vmamba_tiny_s1l8")
    folder = vmamba.save_pretrained(model, tmp_path / "saved")
    out = tmp_path / "m.onnx"
    assert cli(["export", str(folder), "--size", "32", "64", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "verified (1, 3, 32, 64)" in text and "verified (3, 3, 32, 64)" in text and out.is_file()
    check_onnx_session(OnnxModel(out), model)
    assert cli(["export", str(folder), "--format", "pt2", "--size", "32", "32", "--batch", "2",
                "-o", str(tmp_path / "m.pt2")]) == 0
    with pytest.raises(ExportError, match="batch 2, got 1"):
        ExportedModel(tmp_path / "m.pt2")(torch.randn(1, 3, 32, 32))
    for bad, message in ((["vmamba_tiny_s1l8", "--format", "pt2"], "writes a .pt2 file"),
                         (["no_such_model"], "unknown model 'no_such_model'")):
        with pytest.raises(SystemExit) as e:
            cli(["export", *bad, "-o", str(tmp_path / "x.onnx")])
        assert e.value.code == 2 and message in capsys.readouterr().err


# --- mixed precision ----------------------------------------------------------------------------

def _image_batch(batch=2, size=64):
    """Normalised, image-like input: smooth colour fields with edges, ImageNet statistics."""
    g = torch.Generator().manual_seed(0)
    low = torch.rand(batch, 3, size // 8, size // 8, generator=g)
    img = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    img = (img + 0.1 * torch.rand(batch, 3, size, size, generator=g)).clamp(0, 1)
    mean, std = torch.tensor(vmamba.models.vmamba.IMAGENET_MEAN), torch.tensor(vmamba.models.vmamba.IMAGENET_STD)
    return (img - mean[:, None, None]) / std[:, None, None]


@pytest.mark.slow
@pytest.mark.parametrize("name", vmamba.list_models())
def test_every_zoo_model_under_autocast_is_finite_and_close_to_fp32(name):
    torch.manual_seed(0)
    # The tiny models at full depth; the small and base ones (the tiny blocks, deeper, base also
    # wider) at three blocks in the third stage: their block configurations, a quarter of the time.
    depths = {} if "tiny" in name else dict(depths=(1, 1, 3, 1))
    model = vmamba.create_model(name, num_classes=10, **depths)
    x = _image_batch(1, 32)
    with torch.no_grad():
        ref = model.eval()(x)
    for dtype in (torch.bfloat16, torch.float16):
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
            low = model.eval()(x)
        assert torch.isfinite(low).all(), dtype
        # the stated tolerance (docs/deploy.md): 5% of the logits' range for bf16, 1% for fp16
        tol = (0.05 if dtype == torch.bfloat16 else 0.01) * ref.abs().max().item()
        assert (low.float() - ref).abs().max().item() <= tol, dtype
        model.train().zero_grad()
        with torch.autocast("cpu", dtype=dtype):
            loss = torch.nn.functional.cross_entropy(model(x).float(), torch.tensor([3]))
        loss.backward()
        assert torch.isfinite(loss), dtype
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None), dtype


@pytest.mark.parametrize("backend", ["torch"] + KERNEL_BACKENDS)
def test_fp16_scan_over_a_long_sequence_has_no_nan(backend):
    """The authors' fp16 NaN: exp(sum dt*A) over a long sequence underflows to 0 in a cumulative
    product formulation, and dividing by it gives inf/NaN. Here the state and exp(dt*A) stay in
    fp32, step by step: a 64x64 map (L=4096) with large steps must give the fp64 answer."""
    g = torch.Generator().manual_seed(0)
    b, d, n, length = 1, 8, 16, 4096
    u = torch.randn(b, d, length, generator=g)
    delta = torch.randn(b, d, length, generator=g) + 2.0  # softplus(.) ~ 2: exp(sum dt*A) ~ e^-80000
    A = -torch.rand(d, n, generator=g) * 16 - 1
    B, C = torch.randn(b, 1, n, length, generator=g), torch.randn(b, 1, n, length, generator=g)
    ref = selective_scan(u.double(), delta.double(), A.double(), B.double(), C.double(), delta_softplus=True,
                         backend="reference")
    y = selective_scan(u.half(), delta.half(), A, B.half(), C.half(), delta_softplus=True, out_float=True,
                       backend=backend)
    assert torch.isfinite(y).all()
    assert (y.double() - ref).abs().max().item() < 2e-2 * ref.abs().max().item()


# --- save_pretrained / pretrained_cfg -----------------------------------------------------------

def test_save_pretrained_round_trip_rebuilds_exactly(tmp_path):
    model = tiny("vanilla_vmamba_tiny", num_classes=3, drop_path_rate=0.1).eval()
    folder = vmamba.save_pretrained(model, tmp_path / "m", mean=(0.5,) * 3, std=(0.2,) * 3,
                                    input_size=(3, 64, 64), label_names=["a", "b", "c"])
    doc = json.loads((folder / "config.json").read_text())
    assert doc["architecture"] == "vanilla_vmamba_tiny" and doc["num_classes"] == 3
    assert doc["pretrained_cfg"]["pool_size"] == [2, 2]
    for rebuilt in (vmamba.create_model(str(folder)), vmamba.from_pretrained(folder),
                    vmamba.create_model(f"local-dir:{folder}")):
        assert rebuilt.config == model.config
        assert rebuilt.pretrained_cfg["mean"] == [0.5] * 3 and rebuilt.pretrained_cfg["label_names"] == ["a", "b", "c"]
        x = torch.randn(2, 3, 64, 64)
        torch.testing.assert_close(rebuilt.eval()(x), model(x), rtol=0, atol=0)
    fresh_head = vmamba.from_pretrained(folder, num_classes=7)
    assert fresh_head.num_classes == 7 and fresh_head.pretrained_cfg["num_classes"] == 7


def test_save_pretrained_folder_drives_eval_preprocessing(tmp_path):
    from vmamba.train.inference import load_for_inference

    model = tiny("vmamba_tiny_s1l8", num_classes=2)
    folder = vmamba.save_pretrained(model, tmp_path / "m", mean=(0.1, 0.2, 0.3), std=(1, 1, 1),
                                    input_size=(3, 48, 48), label_names=["cat", "dog"])
    net, classes, data_cfg = load_for_inference(folder)
    assert classes == ["cat", "dog"] and data_cfg["img_size"] == 48 and data_cfg["mean"] == [0.1, 0.2, 0.3]


def test_save_pretrained_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="unknown pretrained_cfg field"):
        vmamba.save_pretrained(tiny("vmamba_tiny_s1l8"), tmp_path / "m", colour="blue")
    (tmp_path / "empty").mkdir()
    with pytest.raises(vmamba.CheckpointError, match="no config.json"):
        vmamba.from_pretrained(tmp_path / "empty")
    (tmp_path / "empty/config.json").write_text("{not json")
    with pytest.raises(vmamba.CheckpointError, match="corrupt JSON"):
        vmamba.from_pretrained(tmp_path / "empty")


def test_every_zoo_model_has_a_pretrained_cfg():
    for name in vmamba.list_models():
        cfg = vmamba.create_model(name, num_classes=10, depths=(1, 1, 1, 1), dims=8).pretrained_cfg
        assert cfg["num_classes"] == 10 and cfg["input_size"] == (3, 224, 224) and cfg["crop_pct"] == 0.875
        assert cfg["interpolation"] == "bicubic" and len(cfg["mean"]) == len(cfg["std"]) == 3


def test_timm_loads_a_save_pretrained_folder(tmp_path, timm_module):
    timm = timm_module
    vmamba.register_timm_models()
    model = tiny("vmamba_tiny_s1l8").eval()
    folder = vmamba.save_pretrained(model, tmp_path / "m")
    x = torch.randn(1, 3, 32, 32)
    via_dir = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    via_file = timm.create_model("vmamba_tiny_s1l8", pretrained=True, **TINY,
                                 pretrained_cfg_overlay=dict(file=str(folder / "model.safetensors"))).eval()
    for rebuilt in (via_dir, via_file):
        torch.testing.assert_close(rebuilt(x), model(x), rtol=0, atol=0)
    offline = dict(TORCH_HOME=str(tmp_path / "torch"), VMAMBA_WEIGHTS_MIRROR="http://127.0.0.1:9")
    with pytest.MonkeyPatch.context() as mp:  # published weights, offline: one clear error
        for key, value in offline.items():
            mp.setenv(key, value)
        with pytest.raises(vmamba.DownloadError, match="could not download vmamba_tiny_s1l8.in1k"):
            timm.create_model("vmamba_tiny_s1l8", pretrained=True)
