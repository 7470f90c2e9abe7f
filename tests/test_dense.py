"""vmamba.ops.dense: the dense layers' product on oneDNN or ATen, equal to F.linear up to fp32 rounding."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import vmamba
from vmamba.ops import Linear, dense, linear, linear_backend, linear_info, set_linear_backend

ENGINES = ["aten", pytest.param("onednn", marks=pytest.mark.skipif(
    not dense.onednn_available(), reason="oneDNN's linear op is not usable in this PyTorch"))]


def _inputs(shape, k=24, n=20, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, k, generator=g)
    w = torch.randn(n, k, generator=g) / k ** 0.5
    b = torch.randn(n, generator=g) if bias else None
    return x, w, b


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("shape", [(), (7,), (3, 5), (2, 4, 6)], ids=["1d", "2d", "3d", "4d"])
@pytest.mark.parametrize("bias", [True, False])
def test_values_and_gradients_match_f_linear(engine, shape, bias):
    x, w, b = _inputs(shape, bias=bias)
    params = [t.clone().requires_grad_() for t in (x, w) + ((b,) if bias else ())]
    ref_params = [t.detach().clone().requires_grad_() for t in params]
    with linear_backend(engine):
        y = linear(params[0], params[1], params[2] if bias else None)
    y_ref = F.linear(ref_params[0], ref_params[1], ref_params[2] if bias else None)
    assert y.shape == y_ref.shape
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    gy = torch.randn_like(y_ref)
    y.backward(gy)
    y_ref.backward(gy)
    for p, r in zip(params, ref_params):
        torch.testing.assert_close(p.grad, r.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("engine", ENGINES)
def test_channel_last_view_and_weight_slices(engine):
    # SS2D feeds permuted channel-last maps and row slices of in_proj's weight
    x = torch.randn(2, 8, 5, 6).to(memory_format=torch.channels_last).permute(0, 2, 3, 1)
    w = torch.randn(10, 8)
    with linear_backend(engine):
        y = linear(x, w[4:])
    torch.testing.assert_close(y, F.linear(x, w[4:]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["float64", "bfloat16", "autocast", "empty"])
def test_calls_outside_the_contract_are_f_linear_exactly(case):
    x, w, b = _inputs((3, 5))
    if case in ("float64", "bfloat16"):
        dt = getattr(torch, case)
        x, w, b = x.to(dt), w.to(dt), b.to(dt)
    if case == "empty":
        x = x[:0]
    with linear_backend("auto"):
        if case == "autocast":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y, y_ref = linear(x, w, b), F.linear(x, w, b)
        else:
            y, y_ref = linear(x, w, b), F.linear(x, w, b)
    assert y.dtype == y_ref.dtype and y.shape == y_ref.shape
    assert torch.equal(y, y_ref)


def test_flop_counting_sees_the_product():
    x, w, b = _inputs((4, 5))
    with linear_backend("auto"), FlopCounterMode(display=False) as counter:
        linear(x, w, b)
    assert counter.get_total_flops() == 2 * 20 * 24 * 20


def test_shape_mismatch_is_f_linears_error():
    x, w, b = _inputs((3,))
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        linear(x, w[:, :5], b)


def test_linear_module_keeps_nn_linears_parameters_and_keys():
    torch.manual_seed(0)
    ref = nn.Linear(6, 4)
    torch.manual_seed(0)
    mine = Linear(6, 4)
    assert isinstance(mine, nn.Linear)
    assert list(mine.state_dict()) == list(ref.state_dict())
    torch.testing.assert_close(mine.weight, ref.weight)
    x = torch.randn(3, 6)
    torch.testing.assert_close(mine(x), ref(x), rtol=1e-5, atol=1e-5)


def test_convert_linears_changes_only_the_engine():
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    keys = list(model.state_dict())
    x = torch.randn(2, 6)
    before = model(x)
    dense.convert_linears(model)
    assert all(type(m) is Linear for m in (model[0], model[2]))
    assert list(model.state_dict()) == keys
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)


def test_bad_names_are_refused():
    with pytest.raises(ValueError, match="'mkl' is not one of"):
        set_linear_backend("mkl")
    with pytest.raises(ValueError, match="is not one of"):
        with linear_backend(None):
            pass


def test_bad_environment_variable_names_the_variable():
    code = "import torch, vmamba.ops as o; o.linear(torch.randn(2, 3), torch.randn(4, 3))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**__import__("os").environ, "VMAMBA_LINEAR": "blas"})
    assert proc.returncode != 0
    assert "$VMAMBA_LINEAR" in proc.stderr and "'blas' is not one of" in proc.stderr


def test_named_onednn_refuses_when_unusable(monkeypatch):
    monkeypatch.setattr(dense, "_onednn_ok", False)
    monkeypatch.setattr(dense, "_onednn_why", "no oneDNN in this build")
    with pytest.raises(RuntimeError, match="'onednn' is not usable here: no oneDNN in this build"):
        set_linear_backend("onednn")
    with linear_backend("auto"):  # auto chooses ATen and says why
        info = linear_info()
    assert info["engine"] == "aten" and info["onednn_available"] is False


@pytest.mark.parametrize("amd", [True, False])
def test_auto_chooses_onednn_on_amd_only(monkeypatch, amd):
    monkeypatch.setattr(dense, "_amd", amd)
    with linear_backend("auto"):
        info = linear_info()
    want = "onednn" if amd and dense.onednn_available() else "aten"
    assert info["engine"] == want and info["setting"] == "auto" and info["reason"]


def test_context_manager_restores_the_setting():
    with linear_backend("aten"):
        with linear_backend("auto"):
            assert linear_info()["setting"] == "auto"
        assert linear_info()["setting"] == "aten"


@pytest.mark.parametrize("engine", ENGINES)
def test_model_logits_and_gradients_agree_across_engines(engine):
    torch.manual_seed(0)
    model = vmamba.create_model("vmamba_tiny_s1l8", dims=16, depths=(1, 1, 1, 1), num_classes=5,
                                drop_path_rate=0.0)
    x = torch.randn(2, 3, 64, 64)
    grads = {}
    for name in ("aten", engine):
        model.zero_grad()
        with linear_backend(name):
            logits = model(x)
            logits.square().sum().backward()
        grads[name] = (logits.detach(), {k: p.grad.clone() for k, p in model.named_parameters()})
    torch.testing.assert_close(grads[engine][0], grads["aten"][0], rtol=1e-5, atol=1e-5)
    for k, g in grads["aten"][1].items():
        torch.testing.assert_close(grads[engine][1][k], g, rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.skipif(not dense.onednn_available(), reason="oneDNN's linear op is not usable in this PyTorch")
def test_compile_keeps_the_onednn_engine_and_export_sees_a_plain_linear():
    x, w, b = _inputs((3, 5))
    w.requires_grad_()
    graphs = []

    def record(gm, example_inputs):
        graphs.append(str(gm.graph))
        return gm

    with linear_backend("onednn"):
        fn = torch.compile(lambda t: linear(t, w, b), backend=record, fullgraph=True)
        y = fn(x)
        y.sum().backward()
    torch.testing.assert_close(y, F.linear(x, w, b), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w.grad, x.reshape(-1, 24).sum(0).expand(20, 24), rtol=1e-4, atol=1e-4)
    assert "vmamba.onednn_linear" in graphs[0]

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = Linear(24, 20)

        def forward(self, t):
            return self.fc(t)

    with linear_backend("onednn"):
        program = torch.export.export(Layer(), (x,))
    ops = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert "aten.linear.default" in ops and not any("vmamba" in o or "mkldnn" in o for o in ops)


@pytest.mark.skipif(not dense.onednn_available(), reason="oneDNN's linear op is not usable in this PyTorch")
@pytest.mark.parametrize("avx512, max_rows", [(True, 8192), (True, 4), (False, 8192)],
                         ids=["onednn", "too-many-rows", "no-avx512"])
def test_weight_gradient_on_either_library(monkeypatch, avx512, max_rows):
    monkeypatch.setattr(dense, "_avx512", avx512)
    monkeypatch.setattr(dense, "WEIGHT_GRAD_MAX_ROWS", max_rows)
    x, w, b = _inputs((3, 5))
    w = w.clone().requires_grad_()
    w_ref = w.detach().clone().requires_grad_()
    gy = torch.randn(3, 5, 20)
    with linear_backend("onednn"):
        linear(x, w, b).backward(gy)
    F.linear(x, w_ref, b).backward(gy)
    torch.testing.assert_close(w.grad, w_ref.grad, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- activation / residual

def _ops_called(fn) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.name for e in prof.events()}


def _composed(x, w, b, activation, residual):
    y = F.linear(x, w, b)
    if activation is not None:
        return {"gelu": F.gelu, "silu": F.silu}[activation](y)
    return y if residual is None else residual + y


@pytest.mark.parametrize("engine", ["auto"] + ENGINES)
@pytest.mark.parametrize("extra", ["gelu", "silu", "residual", "residual-broadcast"])
@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
def test_activation_and_residual_match_the_composed_ops(engine, extra, grad):
    x, w, b = _inputs((3, 5))
    activation = extra if extra in ("gelu", "silu") else None
    residual = {"residual": torch.randn(3, 5, 20), "residual-broadcast": torch.randn(20)}.get(extra)
    params = [t.clone().requires_grad_(grad) for t in (x, w, b)]
    ref = [t.detach().clone().requires_grad_(grad) for t in (x, w, b)]
    with linear_backend(engine):
        y = linear(*params, activation=activation, residual=residual)
    y_ref = _composed(*ref, activation, residual)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    if grad:
        gy = torch.randn_like(y_ref)
        y.backward(gy)
        y_ref.backward(gy)
        for p, r in zip(params, ref):
            torch.testing.assert_close(p.grad, r.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not dense.onednn_available(), reason="oneDNN's linear op is not usable in this PyTorch")
@pytest.mark.parametrize("extra", ["gelu", "residual"])
def test_inference_fuses_into_one_onednn_call_and_training_does_not(extra):
    x, w, b = _inputs((3, 5))
    kwargs = {"activation": "gelu"} if extra == "gelu" else {"residual": torch.randn(3, 5, 20)}
    with linear_backend("onednn"), torch.no_grad():
        fused = _ops_called(lambda: linear(x, w, b, **kwargs))
    assert any(name.startswith("mkldnn::_linear_pointwise") for name in fused)
    assert not fused & {"aten::gelu", "aten::gelu_", "aten::add", "aten::add_", "aten::addmm"}
    if extra == "residual":  # where MKL runs the plain products the add stays a separate pass
        with linear_backend("auto"), torch.no_grad():
            on_auto = _ops_called(lambda: linear(x, w, b, **kwargs))
        fused_add = any(name.startswith("mkldnn::") for name in on_auto)
        assert fused_add is (dense.active_linear_backend() == "onednn")
    w.requires_grad_()
    with linear_backend("onednn"):
        composed = _ops_called(lambda: linear(x, w, b, **kwargs))
    assert composed & {"aten::gelu", "aten::add"}
    with linear_backend("aten"), torch.no_grad():
        on_aten = _ops_called(lambda: linear(x, w.detach(), b, **kwargs))
    assert "aten::addmm" in on_aten and not any("mkldnn" in name for name in on_aten)


@pytest.mark.parametrize("vendor_amd, x86, want", [(True, True, True), (False, True, True), (False, False, False)],
                         ids=["amd", "intel", "not-x86"])
def test_auto_fuses_inference_products_on_x86(monkeypatch, vendor_amd, x86, want):
    monkeypatch.setattr(dense, "_amd", vendor_amd)
    monkeypatch.setattr(dense, "_x86", x86)
    with linear_backend("auto"):
        assert linear_info()["fused_inference"] is (want and dense.onednn_available())
    with linear_backend("aten"):
        assert linear_info()["fused_inference"] is False


def test_bad_activation_or_both_extras_are_named_errors():
    x, w, b = _inputs((3,))
    with pytest.raises(ValueError, match="activation 'relu' is not one of 'gelu', 'silu'"):
        linear(x, w, b, activation="relu")
    with pytest.raises(ValueError, match="an activation or a residual, not both"):
        linear(x, w, b, activation="gelu", residual=torch.zeros(3, 20))


@pytest.mark.skipif(not dense.onednn_available(), reason="oneDNN's linear op is not usable in this PyTorch")
def test_compiled_and_exported_fused_calls_are_plain_ops():
    x, w, b = _inputs((3, 5))
    r = torch.randn(3, 5, 20)
    graphs = []

    def record(gm, example_inputs):
        graphs.append(str(gm.graph))
        return gm

    with linear_backend("onednn"), torch.no_grad():
        fn = torch.compile(lambda t: linear(linear(t, w, b, activation="gelu"), w[:, :20], residual=r),
                           backend=record, fullgraph=True)
        y = fn(x)
    torch.testing.assert_close(y, r + F.linear(F.gelu(F.linear(x, w, b)), w[:, :20]), rtol=1e-5, atol=1e-5)
    assert "gelu" in graphs[0] and "mkldnn" not in graphs[0]


@pytest.mark.parametrize("engine", ["auto"] + ENGINES)
def test_inference_blocks_match_aten_and_hooks_see_the_mixers_own_output(engine):
    # at inference the blocks add their skip connection inside out_proj / fc2, unless a hook
    # watches the mixer, whose output must then be the mixer's alone
    torch.manual_seed(0)
    model = vmamba.create_model("vmamba_tiny_s1l8", dims=16, depths=(1, 1, 1, 1), num_classes=5).eval()
    block = model.layers[0].blocks[0]
    x = torch.randn(2, 3, 64, 64)
    seen = {}
    with linear_backend(engine), torch.no_grad():
        logits = model(x)
        handles = [block.op.register_forward_hook(lambda m, i, o: seen.__setitem__("op", (i[0], o))),
                   block.mlp.register_forward_hook(lambda m, i, o: seen.__setitem__("mlp", (i[0], o)))]
        hooked = model(x)
        for h in handles:
            h.remove()
        op_in, op_out = seen["op"]
        mlp_in, mlp_out = seen["mlp"]
        torch.testing.assert_close(op_out, block.op(op_in), rtol=0, atol=0)
        torch.testing.assert_close(mlp_out, block.mlp(mlp_in), rtol=0, atol=0)
    torch.testing.assert_close(hooked, logits, rtol=1e-5, atol=1e-5)
    with linear_backend("aten"), torch.no_grad():  # no fusion: the products and passes composed
        torch.testing.assert_close(model(x), logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape,target", [((3, 4), (2, 3, 4)), ((1, 4), (3, 4)), ((4,), (3, 4)), ((3, 1), (3, 4)),
                                          ((2, 3, 4), (3, 4)), ((5,), (3, 4)), ((), (3, 4)), ((3, 4), (3, 4)),
                                          ((0, 4), (0, 4)), ((2, 4), (0, 4)), ((0, 4), (2, 4))])
def test_residual_broadcast_check_agrees_with_torch(shape, target):
    # the in-place residual add at inference is taken only where the residual broadcasts to the
    # product's shape without enlarging it, as torch.broadcast_shapes would decide
    from vmamba.ops.dense import _broadcasts_to
    try:
        expected = torch.broadcast_shapes(shape, target) == torch.Size(target)
    except RuntimeError:
        expected = False
    assert _broadcasts_to(torch.Size(shape), torch.Size(target)) == expected
