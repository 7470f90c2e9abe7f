"""The "cpu" selective-scan backend (fused C++ kernel) against the float64 reference.

Tolerances: fp32 kernel vs float64 reference, every output and gradient compared as
max|a - b| / (max|b| + 1e-6) <= 2e-5 (fp32 accumulates over L steps and N states; the kernel's
decay exp has 2.2e-7 relative error). bf16/fp16 inputs: the reference runs on the same rounded inputs in
float64, so only the output cast differs: 2e-5 with out_float, one half-precision rounding
(8e-3 bf16, 1e-3 fp16) otherwise.

Skipped (with the reason) only when the extension cannot be compiled on this machine.
"""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from vmamba.ops import (
    cross_merge, cross_scan, cross_selective_scan, scan_cpu, scan_order, selective_scan, selective_scan_reference,
)
from vmamba.ops.backends import resolve_backend

TOL = 2e-5


@pytest.fixture(scope="module", autouse=True)
def kernel():
    if not scan_cpu.is_available():
        pytest.skip(f"CPU scan kernel cannot be built here: {scan_cpu.extension_info().get('error')}")
    return scan_cpu.load_extension()


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / (b.double().abs().max() + 1e-6)).item()


def make_inputs(b, d, L, n, g, *, seed=0, D=True, bias=True, z=False, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen) * scale

    ins = {
        "u": r(b, d, L).to(dtype),
        "delta": r(b, d, L, scale=0.5).to(dtype),
        "A": -torch.rand(d, n, generator=gen) * 2 - 0.1,
        "B": r(b, g, n, L).to(dtype),
        "C": r(b, g, n, L).to(dtype),
        "D": r(d) if D else None,
        "delta_bias": r(d, scale=0.3) if bias else None,
        "z": r(b, d, L).to(dtype) if z else None,
    }
    return ins


NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias", "z")


def run_both(ins, softplus, last, out_float=False):
    """(outputs, grads) of the cpu backend and of the float64 reference on the same values."""
    cpu_in = {k: (v.clone().requires_grad_() if v is not None else None) for k, v in ins.items()}
    ref_in = {k: (v.double().requires_grad_() if v is not None else None) for k, v in ins.items()}
    kw = dict(delta_softplus=softplus, return_last_state=last)
    out_c = selective_scan(*[cpu_in[k] for k in ("u", "delta", "A", "B", "C")], D=cpu_in["D"],
                           delta_bias=cpu_in["delta_bias"], z=cpu_in["z"], out_float=out_float,
                           backend="cpu", **kw)
    out_r = selective_scan_reference(*[ref_in[k] for k in ("u", "delta", "A", "B", "C")], D=ref_in["D"],
                                     delta_bias=ref_in["delta_bias"], z=ref_in["z"], **kw)
    out_c = out_c if last else (out_c,)
    out_r = out_r if last else (out_r,)
    gen = torch.Generator().manual_seed(123)
    weights = [torch.randn(o.shape, generator=gen, dtype=torch.float64) for o in out_r]
    loss_c = sum((o.double() * w).sum() for o, w in zip(out_c, weights))
    loss_r = sum((o * w).sum() for o, w in zip(out_r, weights))
    used = [k for k in NAMES if ins[k] is not None]
    g_c = torch.autograd.grad(loss_c, [cpu_in[k] for k in used])
    g_r = torch.autograd.grad(loss_r, [ref_in[k] for k in used])
    return out_c, out_r, dict(zip(used, g_c)), dict(zip(used, g_r))


# (batch, D, L, N, G): odd sizes, L = 1, chunk boundaries (64), D not a multiple of 16, N = 1 (v2).
SHAPES = [
    (1, 4, 1, 16, 1),
    (2, 16, 64, 16, 4),
    (1, 20, 65, 16, 2),
    (2, 33, 37, 4, 3),
    (1, 48, 130, 1, 4),
    (3, 7, 11, 5, 1),
    (1, 96, 200, 8, 4),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_and_grads_match_reference(shape):
    b, d, L, n, g = shape
    ins = make_inputs(b, d, L, n, g, seed=sum(shape), z=True)
    out_c, out_r, g_c, g_r = run_both(ins, softplus=True, last=True)
    for oc, orr in zip(out_c, out_r):
        assert oc.dtype == torch.float32 and oc.shape == orr.shape
        assert rel_err(oc, orr) <= TOL
    for k in g_r:
        assert g_c[k].dtype == ins[k].dtype and g_c[k].shape == ins[k].shape, k
        assert rel_err(g_c[k], g_r[k]) <= TOL, (k, rel_err(g_c[k], g_r[k]))


OPTIONS = [
    dict(softplus=False, D=False, bias=False, z=False, last=False),
    dict(softplus=True, D=True, bias=False, z=False, last=False),
    dict(softplus=False, D=False, bias=True, z=True, last=True),
    dict(softplus=True, D=True, bias=True, z=False, last=True),
    dict(softplus=True, D=False, bias=True, z=True, last=False),
]


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: "-".join(k for k, v in o.items() if v) or "none")
def test_every_option(opts):
    ins = make_inputs(2, 24, 70, 16, 2, seed=7, D=opts["D"], bias=opts["bias"], z=opts["z"])
    out_c, out_r, g_c, g_r = run_both(ins, softplus=opts["softplus"], last=opts["last"])
    for oc, orr in zip(out_c, out_r):
        assert rel_err(oc, orr) <= TOL
    for k in g_r:
        assert rel_err(g_c[k], g_r[k]) <= TOL, k


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("out_float", [False, True])
def test_half_precision_inputs(dtype, out_float):
    ins = make_inputs(2, 20, 50, 16, 2, seed=3, z=True, dtype=dtype)
    out_c, out_r, g_c, g_r = run_both(ins, softplus=True, last=True, out_float=out_float)
    y_c, last_c = out_c
    assert y_c.dtype == (torch.float32 if out_float else dtype)
    assert last_c.dtype == torch.float32
    tol_out = TOL if out_float else (8e-3 if dtype == torch.bfloat16 else 1e-3)
    assert rel_err(y_c, out_r[0]) <= tol_out
    assert rel_err(last_c, out_r[1]) <= TOL
    for k in g_r:
        assert g_c[k].dtype == ins[k].dtype, k
        # without out_float the incoming gradient itself is rounded to the half dtype (the cast's backward)
        half = ins[k].dtype != torch.float32 or not out_float
        tol = (8e-3 if dtype == torch.bfloat16 else 1e-3) if half else TOL
        assert rel_err(g_c[k], g_r[k]) <= tol, k


def test_long_sequence_is_stable():
    # 1000 steps with large decays: no under/overflow (states stay bounded, no NaN).
    ins = make_inputs(1, 16, 1000, 16, 1, seed=5)
    out_c, out_r, g_c, g_r = run_both(ins, softplus=True, last=False)
    assert torch.isfinite(out_c[0]).all()
    assert rel_err(out_c[0], out_r[0]) <= TOL
    for k in g_r:
        assert rel_err(g_c[k], g_r[k]) <= 1e-4, k


@pytest.mark.parametrize("case", ["huge_dt", "tiny_dt", "zero_dt", "steep_A", "growing_A", "nan_dt"])
def test_decay_exp_at_the_edges(case):
    # The decay exp(dt * A) reduces dt * A * log2(e) with a magic-number add and a 32-entry table:
    # products far outside [-1, 0] (underflow to exactly 0, growth, 1e-30, NaN) must still give the
    # float64 answer, and NaN only where the reference has NaN.
    gen = torch.Generator().manual_seed(11)
    d, L, n = 16, 40, 16
    u, B, C = (torch.randn(*s, generator=gen) for s in ((1, d, L), (1, 1, n, L), (1, 1, n, L)))
    A = -torch.rand(d, n, generator=gen) - 0.5
    delta = {
        "huge_dt": torch.full((1, d, L), 1e4), "tiny_dt": torch.full((1, d, L), 1e-30),
        "zero_dt": torch.zeros(1, d, L), "steep_A": torch.full((1, d, L), 0.1),
        "growing_A": torch.full((1, d, L), 0.1),
        "nan_dt": torch.where(torch.rand(1, d, L, generator=gen) < 0.1, torch.nan, torch.rand(1, d, L, generator=gen)),
    }[case]
    if case == "steep_A":
        A = torch.full((d, n), -1e6)
    if case == "growing_A":
        A = torch.rand(d, n, generator=gen)  # positive: states grow by up to e^4 over the sequence
    y = selective_scan(u, delta, A, B, C, backend="cpu")
    ref = selective_scan(u.double(), delta.double(), A.double(), B.double(), C.double(), backend="reference")
    assert torch.equal(torch.isnan(y), torch.isnan(ref))
    keep = ~torch.isnan(ref)
    assert torch.isfinite(y[keep]).all()
    assert rel_err(y[keep], ref[keep]) <= TOL


def test_subnormal_decays_match_reference_and_leave_the_fp_mode_alone():
    # dt * A around -90: exp(dt * A) is a subnormal float, which costs x86 a microcode assist per
    # operation unless the kernel flushes it to zero (it does, while it runs). Flushing must not
    # change the results beyond the tolerance, and the caller's floating-point mode is restored.
    gen = torch.Generator().manual_seed(5)
    ins = make_inputs(1, 32, 70, 16, 2, seed=5)
    big = torch.rand(ins["delta"].shape, generator=gen) < 0.3
    ins["delta"] = torch.where(big, torch.full_like(ins["delta"], 18.0), ins["delta"])  # softplus ~ 18
    ins["A"] = -(torch.rand(ins["A"].shape, generator=gen) + 4.6)                          # dt * A ~ -83..-101
    out_c, out_r, g_c, g_r = run_both(ins, softplus=True, last=True)
    for oc, orr in zip(out_c, out_r):
        assert torch.isfinite(oc).all() and rel_err(oc, orr) <= TOL
    for k in g_r:
        assert torch.isfinite(g_c[k]).all() and rel_err(g_c[k], g_r[k]) <= TOL, (k, rel_err(g_c[k], g_r[k]))
    tiny = torch.tensor([1e-39])  # subnormal in fp32
    assert (tiny * 1.0).item() != 0.0


def test_auto_selection_and_dtypes():
    from vmamba.ops import available_backends
    assert "cpu" in available_backends("cpu")
    assert resolve_backend("auto", "cpu", torch.float32).name == "cpu"
    assert resolve_backend("auto", "cpu", torch.bfloat16).name == "cpu"
    assert resolve_backend("auto", "cpu", torch.float64).name == "torch"  # float64 gradchecks stay exact


def test_contract_d_state_limit_and_empty_inputs():
    """Above the kernel's d_state limit, or on an empty input, naming "cpu" is an error that says
    so, and "auto" takes the "torch" backend (never a silent switch away from a named backend)."""
    n = scan_cpu.MAX_STATE + 1
    ins = make_inputs(1, 18, 17, n, 2, seed=3)
    args = [ins[k] for k in ("u", "delta", "A", "B", "C")]
    with pytest.raises(ValueError, match=rf"'cpu' takes d_state \(N\) up to {scan_cpu.MAX_STATE}, not {n}"):
        selective_scan(*args, backend="cpu")
    with pytest.raises(ValueError, match="'cpu' does not take empty inputs"):
        small = make_inputs(0, 4, 5, 4, 1)
        selective_scan(*[small[k] for k in ("u", "delta", "A", "B", "C")], backend="cpu")
    assert resolve_backend("auto", "cpu", torch.float32, d_state=scan_cpu.MAX_STATE).name == "cpu"
    assert resolve_backend("auto", "cpu", torch.float32, d_state=n).name == "torch"
    assert resolve_backend("auto", "cpu", torch.float32, empty=True).name == "torch"
    torch.testing.assert_close(selective_scan(*args), selective_scan(*args, backend="torch"))
    c = cross_inputs(1, 4, 3, 5, n)
    with pytest.raises(ValueError, match="'cpu' takes d_state"):
        cross_selective_scan(**c, backend="cpu")
    torch.testing.assert_close(cross_selective_scan(**c), cross_selective_scan(**c, backend="torch"))


def test_deterministic_across_thread_counts():
    ins = make_inputs(2, 64, 150, 16, 4, seed=11, z=True)
    prev = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            _, _, g_c, _ = run_both(ins, softplus=True, last=False)
            results.append(g_c)
    finally:
        torch.set_num_threads(prev)
    for k in results[0]:
        assert torch.equal(results[0][k], results[1][k]), k


@pytest.mark.parametrize("kind", ["plain", "cross"])
def test_many_blocks_use_super_blocks_and_stay_exact_and_deterministic(kind):
    # 4 or more super-blocks of 4 channel blocks (batch x group): the backward sums dB/dC per
    # super-block (the last one partial here), fewer: per block (most other tests); both give the
    # reference's values and the same bits on 1 and 2 threads (the forward always splits by block)
    prev = torch.get_num_threads()
    runs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            if kind == "plain":
                ins = make_inputs(2, 16 * 37, 40, 4, 1, seed=7)
                out_c, out_r, g_c, g_r = run_both(ins, softplus=True, last=False)
                assert rel_err(out_c[0], out_r[0]) <= TOL
            else:
                ins = cross_inputs(2, 16 * 37 + 8, 5, 6, 2, seed=7)
                c_in = {k: v.clone().requires_grad_() for k, v in ins.items()}
                r_in = {k: v.double().requires_grad_() for k, v in ins.items()}
                y_c = scan_cpu.cross_selective_scan_cpu(**c_in, delta_softplus=True, mode="cross2d")
                y_r = composed_reference(*r_in.values(), mode="cross2d")
                gy = torch.randn(y_r.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
                g_c = dict(zip(ins, torch.autograd.grad((y_c.double() * gy).sum(), list(c_in.values()))))
                g_r = dict(zip(ins, torch.autograd.grad((y_r * gy).sum(), list(r_in.values()))))
                assert rel_err(y_c, y_r) <= TOL
            for k in g_r:
                assert rel_err(g_c[k], g_r[k]) <= TOL, (k, rel_err(g_c[k], g_r[k]))
            runs.append(g_c)
    finally:
        torch.set_num_threads(prev)
    for k in runs[0]:
        assert torch.equal(runs[0][k], runs[1][k]), k


def test_no_grad_forward_saves_nothing():
    ins = make_inputs(1, 16, 100, 16, 1)
    with torch.no_grad():
        y, last, states = torch.ops.vmamba.selective_scan_cpu(
            ins["u"], ins["delta"], ins["A"], ins["B"], ins["C"], ins["D"], ins["delta_bias"], None, True, False)
    assert states.numel() == 0 and y.shape == ins["u"].shape and last.shape == (1, 16, 16)


# ----------------------------------------------------------------------------- fused cross-scan

def cross_inputs(b, d, h, w, n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return dict(
        x=torch.randn(b, d, h, w, generator=gen),
        delta=torch.randn(b, 4, d, h, w, generator=gen) * 0.5,
        A=-torch.rand(4 * d, n, generator=gen) - 0.1,
        B=torch.randn(b, 4, n, h, w, generator=gen),
        C=torch.randn(b, 4, n, h, w, generator=gen),
        D=torch.randn(4 * d, generator=gen),
        delta_bias=torch.randn(4 * d, generator=gen) * 0.3,
    )


def composed_reference(x, delta, A, B, C, D, delta_bias, mode):
    """cross_scan -> reference scan -> cross_merge, in float64."""
    b, d, h, w = x.shape
    xs = cross_scan(x, mode).reshape(b, 4 * d, h * w)
    ds = scan_order(delta, mode).reshape(b, 4 * d, h * w)
    ys = selective_scan_reference(xs, ds, A, scan_order(B, mode), scan_order(C, mode), D=D,
                                  delta_bias=delta_bias, delta_softplus=True)
    return cross_merge(ys.reshape(b, 4, d, h, w), mode).reshape(b, d, h, w)


@pytest.mark.parametrize("mode", ["cross2d", "unidi", "bidi"])
@pytest.mark.parametrize("size", [(2, 20, 5, 7, 4), (1, 16, 9, 8, 16), (1, 3, 1, 1, 1), (1, 17, 3, 30, 16)],
                         ids=lambda s: "x".join(map(str, s)))
def test_fused_cross_scan_matches_composition(mode, size):
    b, d, h, w, n = size
    ins = cross_inputs(b, d, h, w, n, seed=h * w)
    names = list(ins)
    c_in = {k: v.clone().requires_grad_() for k, v in ins.items()}
    r_in = {k: v.double().requires_grad_() for k, v in ins.items()}
    y_c = scan_cpu.cross_selective_scan_cpu(**c_in, delta_softplus=True, mode=mode)
    y_r = composed_reference(*[r_in[k] for k in names], mode=mode)
    assert y_c.shape == (b, d, h, w) and y_c.dtype == torch.float32
    assert rel_err(y_c, y_r) <= TOL
    gy = torch.randn(y_r.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    g_c = torch.autograd.grad((y_c.double() * gy).sum(), [c_in[k] for k in names])
    g_r = torch.autograd.grad((y_r * gy).sum(), [r_in[k] for k in names])
    for k, a, r in zip(names, g_c, g_r):
        assert a.shape == r.shape, k
        assert rel_err(a, r) <= TOL, (k, rel_err(a, r))


def test_fused_cross_scan_half_precision():
    ins = cross_inputs(1, 16, 6, 5, 16, seed=2)
    ins["x"], ins["delta"] = ins["x"].bfloat16(), ins["delta"].bfloat16()
    y = scan_cpu.cross_selective_scan_cpu(**ins, delta_softplus=True, mode="cross2d")
    assert y.dtype == torch.bfloat16
    ref = composed_reference(*[v.double() for v in ins.values()], mode="cross2d")
    assert rel_err(y, ref) <= 8e-3
    y32 = scan_cpu.cross_selective_scan_cpu(**ins, delta_softplus=True, mode="cross2d", out_float=True)
    assert y32.dtype == torch.float32 and rel_err(y32, ref) <= TOL


# ----------------------------------------------------------------------------- torch.library integration

def test_opcheck_fake_and_autograd_registrations():
    ins = make_inputs(1, 16, 20, 4, 2, z=True)
    args = [ins[k].clone().requires_grad_() if ins[k] is not None else None for k in NAMES]
    torch.library.opcheck(torch.ops.vmamba.selective_scan_cpu.default, (*args, True, True))
    c = cross_inputs(1, 16, 4, 3, 4)
    cargs = [v.clone().requires_grad_() for v in c.values()]
    torch.library.opcheck(torch.ops.vmamba.cross_selective_scan_cpu.default, (*cargs, True, "cross2d", True))


def test_fake_impl_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    ins = make_inputs(2, 40, 130, 16, 4)
    with FakeTensorMode() as mode:
        fake = {k: (mode.from_tensor(v) if v is not None else None) for k, v in ins.items()}
        y, last, states = torch.ops.vmamba.selective_scan_cpu(
            fake["u"], fake["delta"], fake["A"], fake["B"], fake["C"], fake["D"], fake["delta_bias"], None, True, True)
    real = torch.ops.vmamba.selective_scan_cpu(
        ins["u"], ins["delta"], ins["A"], ins["B"], ins["C"], ins["D"], ins["delta_bias"], None, True, True)
    for f, r in zip((y, last, states), real):
        assert tuple(f.shape) == tuple(r.shape) and f.dtype == r.dtype


def test_torch_compile_fullgraph():
    ins = make_inputs(1, 16, 33, 16, 1, z=True)

    def f(u, delta, A, B, C, D, bias, z):
        return selective_scan(u, delta, A, B, C, D=D, delta_bias=bias, z=z, delta_softplus=True, backend="cpu") * 2

    args = [ins[k] for k in NAMES]
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    leaves = [a.clone().requires_grad_() for a in args]
    out = compiled(*leaves)
    ref = f(*args)
    assert torch.allclose(out, ref, rtol=1e-6, atol=1e-6)
    out.sum().backward()
    assert all(a.grad is not None and torch.isfinite(a.grad).all() for a in leaves)


def test_public_cross_selective_scan_uses_fused_kernel():

    ins = cross_inputs(2, 8, 3, 5, 4, seed=4)
    c_in = {k: v.clone().requires_grad_() for k, v in ins.items()}
    y = cross_selective_scan(**c_in, delta_softplus=True, mode="cross2d", backend="auto")
    assert y.grad_fn is not None and type(y.grad_fn).__name__.startswith("CpuCrossScanEagerFunction")
    ref = composed_reference(*[v.double() for v in ins.values()], mode="cross2d")
    assert rel_err(y, ref) <= TOL


def test_eager_twin_equals_the_registered_op_and_traced_calls_use_the_op():
    from torch.utils.flop_counter import FlopCounterMode

    from vmamba.ops import scan_cpu

    ins = cross_inputs(2, 8, 3, 5, 4, seed=5)
    results = []
    for op in (scan_cpu._cross_op, scan_cpu._CrossScanFunction.apply):
        leaves = {k: v.clone().requires_grad_() for k, v in ins.items()}
        y, _ = op(*leaves.values(), True, "cross2d", True)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        results.append([y.detach()] + [leaves[k].grad for k in ins])
    for a, b in zip(*results):
        assert torch.equal(a, b)  # the same kernel calls in the same order: bit-identical
    with FlopCounterMode(display=False) as counter:  # a dispatch mode: the call must go through the op
        cross_selective_scan(**ins, delta_softplus=True, backend="cpu")
    assert counter.get_total_flops() > 0


def test_eager_calls_do_not_import_dynamo():
    # torch.library's op wrapper imports torch._dynamo on its first call (~70 MB, ~1 s); eager
    # model calls use the op's eager twin and must not pay that
    code = ("import sys, torch, vmamba; m = vmamba.create_model('vmamba_tiny_s1l8', depths=(1, 1), dims=16, "
            "num_classes=2, scan_backend='cpu'); m(torch.randn(1, 3, 32, 32)).sum().backward(); "
            "print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"


@pytest.mark.parametrize("z_gate,d_state", [(True, 4), (False, 1)])
def test_ss2d_cpu_backend_matches_torch_backend(z_gate, d_state):
    from vmamba.models.ss2d import SS2D

    torch.manual_seed(0)
    m = SS2D(d_model=16, d_state=d_state, ssm_ratio=2.0, z_gate=z_gate, conv_bias=z_gate)
    x = torch.randn(2, 5, 7, 16)
    outs, grads = [], []
    for backend in ("torch", "cpu"):
        m.scan_backend = backend
        m.zero_grad()
        xi = x.clone().requires_grad_()
        y = m(xi)
        y.pow(2).sum().backward()
        outs.append(y.detach())
        grads.append([xi.grad] + [p.grad.clone() for p in m.parameters()])
    assert rel_err(outs[1], outs[0]) <= 1e-4
    for a, b in zip(grads[1], grads[0]):
        assert rel_err(a, b) <= 1e-4


def test_strided_inputs_channel_last():
    # u, delta, z with channels contiguous (as produced by channel-last projections) are read in place.
    ins = make_inputs(2, 32, 45, 16, 2, seed=9, z=True)
    strided = dict(ins)
    for k in ("u", "delta", "z"):
        strided[k] = ins[k].transpose(1, 2).contiguous().transpose(1, 2)
        assert not strided[k].is_contiguous()
    a, _, ga, _ = run_both(ins, softplus=True, last=True)
    b, _, gb, _ = run_both(strided, softplus=True, last=True)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    for k in ga:
        assert torch.equal(ga[k], gb[k]), k


@pytest.mark.parametrize("mode", ["cross2d", "bidi"])
def test_fused_cross_scan_strided_delta(mode):
    # SS2D's delta comes out of an einsum channel-last: (b, 4, d, H, W) with the d stride 1.
    ins = cross_inputs(2, 16, 5, 6, 4, seed=8)
    ref = scan_cpu.cross_selective_scan_cpu(**ins, delta_softplus=True, mode=mode)
    d = ins["delta"].permute(1, 0, 3, 4, 2).contiguous().permute(1, 0, 4, 2, 3)
    x = ins["x"].permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    assert d.stride(2) == 1 and x.stride(1) == 1
    out = scan_cpu.cross_selective_scan_cpu(**{**ins, "x": x, "delta": d}, delta_softplus=True, mode=mode)
    assert torch.equal(out, ref)


def _channel_last_delta(delta):
    """SS2D's layout of delta: (b, 4, d, H, W) viewed from (4, b, H, W, d) memory."""
    return delta.permute(1, 0, 3, 4, 2).contiguous().permute(1, 0, 4, 2, 3)


@pytest.mark.parametrize("mode", ["cross2d", "unidi", "bidi"])
@pytest.mark.parametrize("size", [(2, 20, 5, 7, 4), (1, 16, 9, 8, 16), (1, 17, 3, 30, 1)],
                         ids=lambda s: "x".join(map(str, s)))
def test_channel_last_delta_gradient_comes_back_in_its_layout(mode, size):
    # the kernel writes d delta with delta's strides (no transposing copy on the way back to
    # the step-size projection); values as the composition's, partial lanes and columns included
    b, d, h, w, n = size
    ins = cross_inputs(b, d, h, w, n, seed=h + w)
    names = list(ins)
    c_in = {k: v.clone() for k, v in ins.items()}
    c_in["delta"] = _channel_last_delta(ins["delta"])
    c_in = {k: v.requires_grad_() for k, v in c_in.items()}
    r_in = {k: v.double().requires_grad_() for k, v in ins.items()}
    y_c = scan_cpu.cross_selective_scan_cpu(**c_in, delta_softplus=True, mode=mode)
    y_r = composed_reference(*[r_in[k] for k in names], mode=mode)
    gy = torch.randn(y_r.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    g_c = dict(zip(names, torch.autograd.grad((y_c.double() * gy).sum(), [c_in[k] for k in names])))
    g_r = dict(zip(names, torch.autograd.grad((y_r * gy).sum(), [r_in[k] for k in names])))
    assert g_c["delta"].stride() == c_in["delta"].stride()
    for k in names:
        assert rel_err(g_c[k], g_r[k]) <= TOL, (k, rel_err(g_c[k], g_r[k]))


@pytest.mark.parametrize("layout", ["contiguous", "channel-last"])
def test_registered_ops_give_contiguous_outputs_as_their_fakes_say(layout):
    # compiled graphs call the registered ops and may re-lay out their inputs, so those keep
    # contiguous outputs whatever the inputs' strides (the fakes say so); only eager calls let
    # y and d delta follow the inputs' layouts
    from torch._subclasses.fake_tensor import FakeTensorMode

    ins = cross_inputs(1, 16, 4, 3, 4, seed=5)
    if layout == "channel-last":
        ins["x"] = ins["x"].contiguous(memory_format=torch.channels_last)
        ins["delta"] = _channel_last_delta(ins["delta"])
    fwd, bwd = torch.ops.vmamba.cross_selective_scan_cpu, torch.ops.vmamba.cross_selective_scan_cpu_backward
    y, states = fwd(*ins.values(), True, "cross2d", True)
    args = (torch.ones_like(y), *ins.values(), states, True, "cross2d")

    def fake_run(op, op_args):
        with FakeTensorMode() as fake_mode:
            return op(*[fake_mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in op_args])

    for real, fake in ((fwd(*ins.values(), True, "cross2d", True), fake_run(fwd, (*ins.values(), True, "cross2d", True))),
                       (bwd(*args), fake_run(bwd, args))):
        for r, f in zip(real, fake):
            assert tuple(r.shape) == tuple(f.shape) and r.stride() == f.stride() and r.dtype == f.dtype
    assert y.is_contiguous()



@pytest.mark.parametrize("mode", ["cross2d", "unidi", "bidi"])
@pytest.mark.parametrize("size", [(2, 20, 5, 7, 4), (1, 16, 9, 8, 16), (1, 1, 3, 4, 1), (1, 17, 1, 1, 2)],
                         ids=lambda s: "x".join(map(str, s)))
def test_channel_last_map_gives_channel_last_y_with_the_same_values(mode, size):
    # SS2D's map is channel-last; y then comes out channel-last (out_norm reads it without a
    # copy), the backward reads dy in that layout and gives dx in it (the activation's backward
    # before the scan meets its saved input's layout); values and gradients as the contiguous run's
    b, d, h, w, n = size
    ins = cross_inputs(b, d, h, w, n, seed=d + h)
    names = list(ins)
    runs = {}
    for layout in ("contiguous", "channel-last"):
        c_in = {k: v.clone() for k, v in ins.items()}
        if layout == "channel-last":
            c_in["x"] = c_in["x"].contiguous(memory_format=torch.channels_last)
            c_in["delta"] = _channel_last_delta(c_in["delta"])
        c_in = {k: v.requires_grad_() for k, v in c_in.items()}
        y = scan_cpu.cross_selective_scan_cpu(**c_in, delta_softplus=True, mode=mode)
        gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(4))
        runs[layout] = (y, torch.autograd.grad(y, [c_in[k] for k in names], gy))
    y_cl = runs["channel-last"][0]
    assert y_cl.is_contiguous(memory_format=torch.channels_last)
    assert runs["channel-last"][1][0].is_contiguous(memory_format=torch.channels_last)  # dx
    assert runs["contiguous"][1][0].is_contiguous()
    torch.testing.assert_close(y_cl, runs["contiguous"][0], rtol=0, atol=0)
    for k, a, r in zip(names, runs["channel-last"][1], runs["contiguous"][1]):
        torch.testing.assert_close(a, r, rtol=1e-6, atol=1e-6, msg=k)
