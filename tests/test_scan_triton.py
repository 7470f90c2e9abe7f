"""The "triton" selective-scan backend (Triton GPU kernels) against the float64 reference.

Where there is no GPU, the same kernels run on CPU tensors under Triton's interpreter
(``TRITON_INTERPRET=1``, set for each test), on small shapes: the interpreter runs a kernel's
block operations with numpy, one program at a time, so these tests stay at seconds. With a GPU
they run on CUDA tensors through the compiled kernels, with the full-size checks at the end.
Skipped when triton is not installed (it is an optional dependency: ``pip install triton``).

Tolerances, as max|a - b| / (max|b| + 1e-6): 2e-5 under the interpreter (numpy's exp), 1e-4 on
the GPU (its exp2 is approximate, ~2 ulp); half-precision outputs one rounding of their dtype.
"""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from vmamba.ops import (  # noqa: E402
    available_backends, cross_merge, cross_scan, cross_selective_scan, scan_order, scan_triton,
    selective_scan, selective_scan_reference,
)
from vmamba.ops.backends import get_backend, resolve_backend  # noqa: E402

GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"
TOL = 1e-4 if GPU else 2e-5
HALF_TOL = {torch.bfloat16: 8e-3, torch.float16: 1e-3}
NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias", "z")
gpu_only = pytest.mark.skipif(not GPU, reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def interpreter(monkeypatch):
    """Without a GPU, run the kernels under Triton's interpreter for the duration of each test."""
    if not GPU:
        monkeypatch.setenv("TRITON_INTERPRET", "1")


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / (b.double().abs().max() + 1e-6)).item()


def make_inputs(b, d, L, n, g, *, seed=0, D=True, bias=True, z=False, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen) * scale

    return {
        "u": r(b, d, L).to(dtype),
        "delta": r(b, d, L, scale=0.5).to(dtype),
        "A": -torch.rand(d, n, generator=gen) * 2 - 0.1,
        "B": r(b, g, n, L).to(dtype),
        "C": r(b, g, n, L).to(dtype),
        "D": r(d) if D else None,
        "delta_bias": r(d, scale=0.3) if bias else None,
        "z": r(b, d, L).to(dtype) if z else None,
    }


def run_both(ins, softplus=True, last=True, out_float=False):
    """(outputs, reference outputs, gradients, reference gradients): the triton backend on DEVICE
    and the float64 reference on the same values, through the same random output weights."""
    t_in = {k: (v.to(DEVICE).requires_grad_() if v is not None else None) for k, v in ins.items()}
    r_in = {k: (v.double().requires_grad_() if v is not None else None) for k, v in ins.items()}
    kw = dict(delta_softplus=softplus, return_last_state=last)
    out_t = scan_triton.selective_scan_triton(*[t_in[k] for k in NAMES[:5]], D=t_in["D"], delta_bias=t_in["delta_bias"],
                                              z=t_in["z"], out_float=out_float, **kw)
    out_r = selective_scan_reference(*[r_in[k] for k in NAMES[:5]], D=r_in["D"], delta_bias=r_in["delta_bias"],
                                     z=r_in["z"], **kw)
    out_t = out_t if last else (out_t,)
    out_r = out_r if last else (out_r,)
    gen = torch.Generator().manual_seed(123)
    weights = [torch.randn(o.shape, generator=gen, dtype=torch.float64) for o in out_r]
    loss_t = sum((o.double() * w.to(DEVICE)).sum() for o, w in zip(out_t, weights))
    loss_r = sum((o * w).sum() for o, w in zip(out_r, weights))
    used = [k for k in NAMES if ins[k] is not None]
    g_t = torch.autograd.grad(loss_t, [t_in[k] for k in used])
    g_r = torch.autograd.grad(loss_r, [r_in[k] for k in used])
    return out_t, out_r, dict(zip(used, g_t)), dict(zip(used, g_r))


# (batch, D, L, N, G): chunk boundaries (8 steps under the interpreter), L = 1, N = 1 (v2 models)
# and 16 (v0), odd N (padded state lanes), D not a multiple of the channel block, several groups.
SHAPES = [
    (2, 8, 37, 4, 2),
    (1, 4, 20, 16, 1),
    (2, 12, 33, 1, 3),
    (1, 6, 1, 2, 1),
    (1, 5, 9, 3, 1),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_and_grads_match_reference(shape):
    b, d, L, n, g = shape
    ins = make_inputs(b, d, L, n, g, seed=sum(shape), z=True)
    out_t, out_r, g_t, g_r = run_both(ins)
    for ot, orr in zip(out_t, out_r):
        assert ot.dtype == torch.float32 and ot.shape == orr.shape and ot.device.type == DEVICE
        assert rel_err(ot.cpu(), orr) <= TOL
    for k in g_r:
        assert g_t[k].dtype == ins[k].dtype and g_t[k].shape == ins[k].shape, k
        assert rel_err(g_t[k].cpu(), g_r[k]) <= TOL, (k, rel_err(g_t[k].cpu(), g_r[k]))


OPTIONS = [
    dict(softplus=False, D=False, bias=False, z=False, last=False),
    dict(softplus=True, D=True, bias=False, z=False, last=False),
    dict(softplus=False, D=False, bias=True, z=True, last=True),
    dict(softplus=True, D=True, bias=True, z=False, last=True),
]


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: "-".join(k for k, v in o.items() if v) or "none")
def test_every_option(opts):
    ins = make_inputs(2, 8, 19, 4, 2, seed=7, D=opts["D"], bias=opts["bias"], z=opts["z"])
    if not opts["softplus"]:
        ins["delta"] = ins["delta"].abs()  # raw steps must be >= 0 without the softplus
    out_t, out_r, g_t, g_r = run_both(ins, softplus=opts["softplus"], last=opts["last"])
    for ot, orr in zip(out_t, out_r):
        assert rel_err(ot.cpu(), orr) <= TOL
    for k in g_r:
        assert rel_err(g_t[k].cpu(), g_r[k]) <= TOL, k


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("out_float", [False, True])
def test_half_precision_inputs_keep_fp32_state(dtype, out_float):
    # The reference runs in float64 on the same rounded inputs: only the output cast may differ.
    ins = make_inputs(2, 8, 21, 4, 2, seed=3, z=True, dtype=dtype)
    out_t, out_r, g_t, g_r = run_both(ins, out_float=out_float)
    y_t, last_t = out_t
    assert y_t.dtype == (torch.float32 if out_float else dtype)
    assert last_t.dtype == torch.float32
    assert rel_err(y_t.cpu(), out_r[0]) <= (TOL if out_float else HALF_TOL[dtype])
    assert rel_err(last_t.cpu(), out_r[1]) <= TOL
    for k in g_r:
        assert g_t[k].dtype == ins[k].dtype, k
        # half-precision gradients are rounded once (and, without out_float, so is the incoming one)
        half = ins[k].dtype != torch.float32 or not out_float
        assert rel_err(g_t[k].cpu(), g_r[k]) <= (HALF_TOL[dtype] if half else TOL), k


def test_long_sequence_is_stable():
    # Large steps and decays over 200 steps: no under/overflow, no NaN (nothing divides by a decay).
    ins = make_inputs(1, 4, 200, 2, 1, seed=5)
    ins["delta"] = ins["delta"] * 8
    out_t, out_r, g_t, g_r = run_both(ins, last=False)
    assert torch.isfinite(out_t[0]).all()
    assert rel_err(out_t[0].cpu(), out_r[0]) <= TOL
    for k in g_r:
        assert torch.isfinite(g_t[k]).all() and rel_err(g_t[k].cpu(), g_r[k]) <= 1e-4, k


def test_softplus_is_accurate_over_its_range():
    # One step, u = B = C = 1, N = 1: y = softplus(delta + bias) elementwise, dy/ddelta = sigmoid.
    delta = torch.linspace(-30, 30, 64).reshape(1, 64, 1)
    ones = torch.ones(1, 1, 1, 1)
    leaf = delta.to(DEVICE).requires_grad_()
    y = scan_triton.selective_scan_triton(torch.ones(1, 64, 1, device=DEVICE), leaf, torch.zeros(64, 1, device=DEVICE),
                                          ones.to(DEVICE), ones.to(DEVICE), delta_softplus=True)
    (g,) = torch.autograd.grad(y.sum(), leaf)
    ref, sig = torch.nn.functional.softplus(delta.double()), torch.sigmoid(delta.double())
    tol = 4e-6 if GPU else 1e-6  # the GPU's exp and reciprocal are approximate (~2 ulp)
    assert ((y.cpu().double() - ref).abs() / ref).max() <= tol
    assert ((g.cpu().double() - sig).abs() / sig).max() <= tol


def test_deterministic():
    ins = make_inputs(2, 8, 20, 4, 2, seed=11, z=True)
    first = run_both(ins)
    second = run_both(ins)
    for a, b in zip(first[0], second[0]):
        assert torch.equal(a, b)
    for k in first[2]:
        assert torch.equal(first[2][k], second[2][k]), k


def test_no_grad_forward_saves_nothing():
    ins = {k: (v.to(DEVICE) if v is not None else None) for k, v in make_inputs(1, 4, 20, 4, 1).items()}
    with torch.no_grad():
        y, last, states = torch.ops.vmamba.selective_scan_triton(
            ins["u"], ins["delta"], ins["A"], ins["B"], ins["C"], ins["D"], ins["delta_bias"], None,
            True, False, False)
    assert states.numel() == 0 and y.shape == ins["u"].shape and last.shape == (1, 4, 4)


def test_contract_declares_the_kernels_limits():
    backend = get_backend("triton")
    assert backend.max_d_state == scan_triton.MAX_STATE and not backend.empty_inputs
    assert backend.refusal("cuda", torch.float16, d_state=scan_triton.MAX_STATE) is None
    assert backend.refusal("cuda", torch.float32, d_state=33) == "takes d_state (N) up to 32, not 33"
    assert "float64" in backend.refusal("cuda", torch.float64)
    assert "empty" in backend.refusal("cuda", torch.float32, empty=True)
    assert "not cpu" in backend.refusal("cpu", torch.float32)


# ----------------------------------------------------------------------------- fused cross scan

def cross_inputs(b, d, h, w, n, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return dict(
        x=torch.randn(b, d, h, w, generator=gen).to(dtype),
        delta=(torch.randn(b, 4, d, h, w, generator=gen) * 0.5).to(dtype),
        A=-torch.rand(4 * d, n, generator=gen) - 0.1,
        B=torch.randn(b, 4, n, h, w, generator=gen).to(dtype),
        C=torch.randn(b, 4, n, h, w, generator=gen).to(dtype),
        D=torch.randn(4 * d, generator=gen),
        delta_bias=torch.randn(4 * d, generator=gen) * 0.3,
    )


def composed_reference(x, delta, A, B, C, D, delta_bias, mode):
    """cross_scan -> reference scan -> cross_merge (every copy materialised), in float64."""
    b, d, h, w = x.shape
    xs = cross_scan(x, mode).reshape(b, 4 * d, h * w)
    ds = scan_order(delta, mode).reshape(b, 4 * d, h * w)
    ys = selective_scan_reference(xs, ds, A, scan_order(B, mode), scan_order(C, mode), D=D,
                                  delta_bias=delta_bias, delta_softplus=True)
    return cross_merge(ys.reshape(b, 4, d, h, w), mode).reshape(b, d, h, w)


@pytest.mark.parametrize("mode", ["cross2d", "unidi", "bidi"])
@pytest.mark.parametrize("size", [(2, 4, 3, 5, 4), (1, 4, 5, 2, 1)], ids=lambda s: "x".join(map(str, s)))
def test_fused_cross_scan_matches_composition(mode, size):
    b, d, h, w, n = size  # H != W: a square map would not catch an H/W mix-up
    ins = cross_inputs(b, d, h, w, n, seed=h * w)
    t_in = {k: v.to(DEVICE).requires_grad_() for k, v in ins.items()}
    r_in = {k: v.double().requires_grad_() for k, v in ins.items()}
    y_t = scan_triton.cross_selective_scan_triton(**t_in, delta_softplus=True, mode=mode)
    y_r = composed_reference(*r_in.values(), mode=mode)
    assert y_t.shape == (b, d, h, w) and y_t.dtype == torch.float32
    assert rel_err(y_t.cpu(), y_r) <= TOL
    gy = torch.randn(y_r.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    g_t = torch.autograd.grad((y_t.double() * gy.to(DEVICE)).sum(), list(t_in.values()))
    g_r = torch.autograd.grad((y_r * gy).sum(), list(r_in.values()))
    for k, a, r in zip(ins, g_t, g_r):
        assert a.shape == r.shape, k
        assert rel_err(a.cpu(), r) <= TOL, (k, rel_err(a.cpu(), r))


def test_fused_cross_scan_half_precision():
    ins = cross_inputs(1, 4, 3, 5, 4, seed=2, dtype=torch.bfloat16)
    t_in = {k: v.to(DEVICE) for k, v in ins.items()}
    ref = composed_reference(*[v.double() for v in ins.values()], mode="cross2d")
    y = scan_triton.cross_selective_scan_triton(**t_in, delta_softplus=True, mode="cross2d")
    assert y.dtype == torch.bfloat16 and rel_err(y.cpu(), ref) <= HALF_TOL[torch.bfloat16]
    y32 = scan_triton.cross_selective_scan_triton(**t_in, delta_softplus=True, mode="cross2d",
                                                  out_float=True)
    assert y32.dtype == torch.float32 and rel_err(y32.cpu(), ref) <= TOL


def test_strided_inputs_are_read_in_place():
    # channel-last u, delta, z (as projections produce them): same numbers as contiguous inputs
    ins = make_inputs(1, 8, 21, 4, 2, seed=9, z=True)
    strided = dict(ins)
    for k in ("u", "delta", "z"):
        strided[k] = ins[k].transpose(1, 2).contiguous().transpose(1, 2)
    a, _, ga, _ = run_both(ins)
    b, _, gb, _ = run_both(strided)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    for k in ga:
        assert torch.equal(ga[k], gb[k]), k
    # the cross op with channel-last x and delta, as SS2D's einsum produces delta
    c = {k: v.to(DEVICE) for k, v in cross_inputs(1, 4, 3, 5, 4, seed=8).items()}
    ref = scan_triton.cross_selective_scan_triton(**c, delta_softplus=True, mode="cross2d")
    d = c["delta"].permute(1, 0, 3, 4, 2).contiguous().permute(1, 0, 4, 2, 3)
    x = c["x"].permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    assert d.stride(2) == 1 and x.stride(1) == 1
    out = scan_triton.cross_selective_scan_triton(**{**c, "x": x, "delta": d}, delta_softplus=True, mode="cross2d")
    assert torch.equal(out, ref)


# ----------------------------------------------------------------------------- torch.library integration

def test_opcheck_fake_and_autograd_registrations():
    ins = make_inputs(1, 4, 9, 2, 2, z=True)
    args = [ins[k].to(DEVICE).requires_grad_() for k in NAMES]
    torch.library.opcheck(torch.ops.vmamba.selective_scan_triton.default, (*args, True, True, False))
    c = cross_inputs(1, 2, 3, 2, 2)
    cargs = [v.to(DEVICE).requires_grad_() for v in c.values()]
    torch.library.opcheck(torch.ops.vmamba.cross_selective_scan_triton.default, (*cargs, True, "cross2d", True))


@pytest.mark.parametrize("device", ["cpu", "cuda"] if GPU else ["cpu"])
def test_fake_impl_shapes(device):
    from torch._subclasses.fake_tensor import FakeTensorMode

    ins = make_inputs(2, 8, 19, 16, 4)
    with FakeTensorMode():
        fake = {k: (torch.empty(v.shape, dtype=v.dtype, device=device) if v is not None else None)
                for k, v in ins.items()}
        y, last, states = torch.ops.vmamba.selective_scan_triton(
            fake["u"], fake["delta"], fake["A"], fake["B"], fake["C"], fake["D"], fake["delta_bias"], None,
            True, True, True)
        e = lambda *shape: torch.empty(*shape, device=device)  # noqa: E731
        yc, sc = torch.ops.vmamba.cross_selective_scan_triton(
            e(2, 40, 7, 9), e(2, 4, 40, 7, 9), e(160, 16), e(2, 4, 16, 7, 9), e(2, 4, 16, 7, 9),
            None, None, True, "cross2d", True)
    chunk = scan_triton.config_for(16, device).chunk
    assert tuple(y.shape) == (2, 8, 19) and y.dtype == torch.float32 and y.device.type == device
    assert tuple(last.shape) == (2, 8, 16)
    assert tuple(states.shape) == (2, 8, -(-19 // chunk), 16)
    assert tuple(yc.shape) == (2, 40, 7, 9) and tuple(sc.shape) == (2, 160, -(-63 // chunk), 16)
    if device == DEVICE:  # the real op agrees with its fake
        real = torch.ops.vmamba.selective_scan_triton(
            *[ins[k].to(DEVICE) if ins[k] is not None else None for k in NAMES[:7]], None, True, True, True)
        for f, r in zip((y, last, states), real):
            assert tuple(f.shape) == tuple(r.shape) and f.dtype == r.dtype


def test_torch_compile_fullgraph():
    ins = make_inputs(1, 4, 12, 4, 1, z=True)

    def f(u, delta, A, B, C, D, bias, z):
        y = scan_triton.selective_scan_triton(u, delta, A, B, C, D=D, delta_bias=bias, z=z, delta_softplus=True)
        return y * 2

    args = [ins[k].to(DEVICE) for k in NAMES]
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    leaves = [a.clone().requires_grad_() for a in args]
    out = compiled(*leaves)
    assert torch.allclose(out, f(*args), rtol=1e-6, atol=1e-6)
    out.sum().backward()
    assert all(a.grad is not None and torch.isfinite(a.grad).all() for a in leaves)


def test_flop_counter_sees_the_kernels():
    from torch.utils.flop_counter import FlopCounterMode

    ins = {k: (v.to(DEVICE) if v is not None else None) for k, v in make_inputs(1, 4, 10, 4, 1).items()}
    with FlopCounterMode(display=False) as counter:
        scan_triton.selective_scan_triton(*[ins[k] for k in NAMES[:5]], D=ins["D"], delta_softplus=True)
    assert counter.get_total_flops() == 2 * (9 * 1 * 4 * 10 * 4 + 1 * 4 * 10)


# ----------------------------------------------------------------------------- registry

def test_registered_only_where_it_runs():
    backend = get_backend("triton")
    assert backend.devices == ("cuda",) and backend.cross_fn is scan_triton.cross_selective_scan_triton
    assert "triton" not in available_backends("cpu")
    assert resolve_backend("auto", "cpu", torch.float32).name != "triton"
    assert ("triton" in available_backends()) == (GPU and scan_triton.is_available())


# ----------------------------------------------------------------------------- self-check

def test_self_check_passes_on_working_kernels():
    assert scan_triton.self_check(torch.device(DEVICE), torch.float32) is None


def test_self_check_reports_a_wrong_answer(monkeypatch):
    real = scan_triton.cross_selective_scan_triton
    monkeypatch.setattr(scan_triton, "cross_selective_scan_triton", lambda *a, **k: real(*a, **k) * 1.01)
    failure = scan_triton.self_check(torch.device(DEVICE), torch.float32)
    assert failure.startswith("cross-scan y differs from the 'torch' backend by 0.0")


def test_self_check_reports_a_compile_or_launch_error(monkeypatch):
    def broken(t):
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device")

    monkeypatch.setattr(scan_triton, "_kernels_for", broken)
    assert "no kernel image" in scan_triton.self_check(torch.device(DEVICE), torch.float32)


@pytest.fixture
def triton_on_this_device(monkeypatch):
    """The "triton" backend as registered, but usable on DEVICE (the interpreter on CPU) and with
    its self-check results forgotten before and after."""
    import dataclasses

    from vmamba.ops import backends

    record = backends._BACKENDS["triton"]
    monkeypatch.setitem(backends._BACKENDS, "triton",
                        dataclasses.replace(record, devices=(DEVICE,), is_available=lambda: True))
    monkeypatch.setattr(backends, "_self_checks", {})
    return backends


def test_auto_uses_triton_once_its_self_check_passes(triton_on_this_device):
    ins = make_inputs(1, 4, 12, 4, 1, z=True)
    args = [ins[k].to(DEVICE) for k in NAMES[:5]]
    assert resolve_backend("auto", DEVICE, torch.float32, d_state=4).name == "triton"
    y = selective_scan(*args, D=ins["D"].to(DEVICE), delta_softplus=True)
    assert rel_err(y, selective_scan(*args, D=ins["D"].to(DEVICE), delta_softplus=True, backend="torch")) <= TOL
    assert list(triton_on_this_device._self_checks.values()) == [None]  # checked once, passed


def test_failed_self_check_falls_back_with_one_warning(triton_on_this_device, monkeypatch):
    import warnings

    def broken(t):
        raise RuntimeError("triton.CompilationError: out of resources")

    monkeypatch.setattr(scan_triton, "_kernels_for", broken)
    ins = make_inputs(1, 4, 12, 4, 1)
    args = [ins[k].to(DEVICE) for k in NAMES[:5]]
    with pytest.warns(RuntimeWarning, match="'triton' selective-scan backend failed its self-check"):
        y = selective_scan(*args, delta_softplus=True)
    assert rel_err(y, selective_scan(*args, delta_softplus=True, backend="torch")) <= TOL
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_backend("auto", DEVICE, torch.float32, d_state=4).name != "triton"
        with pytest.raises(RuntimeError, match="'triton' failed its self-check .* out of resources"):
            selective_scan(*args, backend="triton")


@pytest.mark.skipif(GPU, reason="checks the CPU error path")
def test_cpu_tensors_need_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    ins = make_inputs(1, 4, 5, 2, 1)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        scan_triton.selective_scan_triton(*[ins[k] for k in NAMES[:5]])


# ----------------------------------------------------------------------------- full size, GPU only

@gpu_only
def test_auto_picks_triton_on_cuda():
    assert available_backends("cuda")[0] == "triton"
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        assert resolve_backend("auto", "cuda", dtype).name == "triton"


@gpu_only
@pytest.mark.parametrize("d_inner,n,hw", [(192, 16, 56), (96, 1, 56), (768, 16, 7), (384, 1, 14)],
                         ids=["v0-stage1", "v2-stage1", "v0-stage4", "v2-stage3"])
def test_full_size_stage_shapes_match_torch_backend(d_inner, n, hw):
    # The fused cross op at a vmamba_tiny stage shape (batch 2) against the float64 "torch" backend.
    ins = cross_inputs(2, d_inner, hw, hw, n, seed=n)
    t_in = {k: v.cuda().requires_grad_() for k, v in ins.items()}
    r_in = {k: v.cuda().double().requires_grad_() for k, v in ins.items()}
    y_t = cross_selective_scan(**t_in, delta_softplus=True, mode="cross2d", backend="auto")
    y_r = cross_selective_scan(**r_in, delta_softplus=True, mode="cross2d", backend="torch")
    assert "cross_selective_scan_triton" in type(y_t.grad_fn).__name__
    assert rel_err(y_t, y_r) <= 2e-4
    gy = torch.randn(y_r.shape, device="cuda", dtype=torch.float64)
    g_t = torch.autograd.grad((y_t.double() * gy).sum(), list(t_in.values()))
    g_r = torch.autograd.grad((y_r * gy).sum(), list(r_in.values()))
    for k, a, r in zip(ins, g_t, g_r):
        assert rel_err(a, r) <= 5e-4, (k, rel_err(a, r))


@gpu_only
def test_full_size_plain_scan_matches_torch_backend():
    ins = make_inputs(2, 1536, 1024, 16, 1, seed=4, z=True)
    out_t = selective_scan(*[ins[k].cuda() for k in NAMES[:5]], D=ins["D"].cuda(), delta_bias=ins["delta_bias"].cuda(),
                           z=ins["z"].cuda(), delta_softplus=True, return_last_state=True, backend="triton")
    out_r = selective_scan(*[ins[k].cuda().double() for k in NAMES[:5]], D=ins["D"].cuda().double(),
                           delta_bias=ins["delta_bias"].cuda().double(), z=ins["z"].cuda().double(),
                           delta_softplus=True, return_last_state=True, backend="torch")
    for a, r in zip(out_t, out_r):
        assert rel_err(a, r) <= 2e-4


@gpu_only
@pytest.mark.parametrize("z_gate,d_state", [(True, 16), (False, 1)])
def test_ss2d_triton_backend_matches_torch_backend(z_gate, d_state):
    from vmamba.models.ss2d import SS2D

    torch.manual_seed(0)
    m = SS2D(d_model=32, d_state=d_state, ssm_ratio=2.0, z_gate=z_gate, conv_bias=z_gate).cuda()
    x = torch.randn(2, 14, 10, 32, device="cuda")
    outs, grads = [], []
    for backend in ("torch", "triton"):
        m.scan_backend = backend
        m.zero_grad()
        xi = x.clone().requires_grad_()
        y = m(xi)
        y.pow(2).sum().backward()
        outs.append(y.detach())
        grads.append([xi.grad] + [p.grad.clone() for p in m.parameters()])
    assert rel_err(outs[1], outs[0]) <= 1e-4
    for a, b in zip(grads[1], grads[0]):
        assert rel_err(a, b) <= 1e-3


# ----------------------------------------------------------------------------- the GPU benchmark script

def _bench_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"
    spec = importlib.util.spec_from_file_location("bench_gpu", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_benchmark_script_arguments_and_traffic_model():
    bench = _bench_module()
    args = bench.parse_args([])
    assert args.batch == 128 and args.img == 224 and not args.interpret
    assert bench.parse_args(["--peak-gbs", "3350"]).peak_gbs == 3350
    ins = bench.scan_inputs(torch, 2, 4, 3, 16, torch.bfloat16, "cpu")
    plain = bench.plain_inputs(torch, ins)
    assert plain["u"].shape == (2, 16, 9) and plain["B"].shape == (2, 4, 16, 9)
    # cross op forward: x and delta bf16, B and C bf16, y fp32; the plain op reads 4 copies of x
    x_delta_bc = 2 * (2 * 4 * 9 + 2 * 16 * 9 + 2 * 2 * 4 * 16 * 9)  # bf16: 2 bytes each
    assert bench.scan_bytes(torch, ins, "cross", False, 8) == x_delta_bc + 4 * 2 * 4 * 9  # + y in fp32
    assert bench.scan_bytes(torch, plain, "plain", False, 8) > bench.scan_bytes(torch, ins, "cross", False, 8)
    assert bench.scan_bytes(torch, ins, "cross", True, 8) > 2 * bench.scan_bytes(torch, ins, "cross", False, 8)


@pytest.mark.skipif(GPU, reason="checks the message given without a GPU")
def test_gpu_benchmark_script_explains_a_missing_gpu():
    with pytest.raises(SystemExit, match="no CUDA GPU"):
        _bench_module().main(["--no-models"])


@pytest.mark.slow
@pytest.mark.skipif(GPU, reason="the GPU run is the real benchmark, minutes long")
def test_gpu_benchmark_script_runs_under_the_interpreter(tmp_path):
    out = str(tmp_path / "bench")
    result = _bench_module().main(["--interpret", "--no-models", "--no-torch", "--out", out])
    assert len(result["scan"]) == 4 and all(r["fwd_ms"] > 0 and r["fwdbwd_ms"] > 0 for r in result["scan"])
    assert (tmp_path / "bench.json").exists() and (tmp_path / "bench_scan.csv").exists()
