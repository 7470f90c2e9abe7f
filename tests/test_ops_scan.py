"""The selective-scan op: every backend against the reference, golden data, errors, numerics."""
from __future__ import annotations

import warnings

import pytest
import torch

from conftest import make_scan_inputs
from vmamba.ops import available_backends, get_backend, register_backend, selective_scan
from vmamba.ops import selective_scan_reference, selective_scan_torch
from vmamba.ops.backends import _BACKENDS

FAST_BACKENDS = [b for b in available_backends("cpu") if b != "reference"]
FLOAT64_BACKENDS = [b for b in FAST_BACKENDS if get_backend(b).accepts("cpu", torch.float64)]
SHAPES = [  # batch, channels, length, N, groups
    (1, 1, 1, 1, 1),
    (2, 8, 13, 4, 2),
    (1, 12, 50, 16, 4),
    (3, 6, 7, 1, 3),
    (2, 4, 129, 3, 1),
]
OPTIONS = [
    dict(),
    dict(delta_softplus=True),
    dict(delta_softplus=True, use_bias=True, use_D=True),
    dict(use_D=True, use_z=True),
    dict(delta_softplus=True, use_bias=True, use_D=True, use_z=True),
]


def _call(backend, t, delta_softplus=False, use_bias=False, use_D=False, use_z=False, **kw):
    return selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], D=t["D"] if use_D else None,
                          delta_bias=t["delta_bias"] if use_bias else None, delta_softplus=delta_softplus,
                          z=t["z"] if use_z else None, backend=backend, **kw)


def test_registry_lists_portable_backends():
    names = available_backends()
    assert "torch" in names and "reference" in names
    assert names.index("torch") < names.index("reference")  # best first
    assert get_backend("torch").fn is selective_scan_torch
    with pytest.raises(ValueError, match="unknown selective-scan backend 'nope'"):
        selective_scan(*[make_scan_inputs()[k] for k in "u delta A B C".split()], backend="nope")


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("opts", OPTIONS)
def test_forward_matches_reference(backend, shape, opts):
    t = make_scan_inputs(*shape, dtype=torch.float32, seed=sum(shape))
    y, last = _call(backend, t, return_last_state=True, **opts)
    y_ref, last_ref = _call("reference", {k: v.double() for k, v in t.items()}, return_last_state=True, **opts)
    assert y.dtype == torch.float32 and y.shape == shape[:3]
    assert last.shape == (shape[0], shape[1], shape[3])
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(last.double(), last_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", FLOAT64_BACKENDS)
@pytest.mark.parametrize("shape", SHAPES[1:4])
def test_gradients_float64_match_reference(backend, shape):
    """Gradients of every input (u, delta, A, B, C, D, delta_bias, z and through last state)."""
    opts = dict(delta_softplus=True, use_bias=True, use_D=True, use_z=True)
    grads = {}
    for name in (backend, "reference"):
        t = make_scan_inputs(*shape, dtype=torch.float64, requires_grad=True, seed=1)
        y, last = _call(name, t, return_last_state=True, **opts)
        g = torch.Generator().manual_seed(2)
        loss = (y * torch.randn(y.shape, generator=g, dtype=y.dtype)).sum() + (last ** 2).sum()
        grads[name] = torch.autograd.grad(loss, list(t.values()))
    for key, a, b in zip(make_scan_inputs().keys(), grads[backend], grads["reference"]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=f"gradient of {key}")


def test_torch_backend_gradcheck():
    t = make_scan_inputs(2, 4, 9, 3, 2, requires_grad=True, seed=3)
    f = lambda *a: selective_scan_torch(*a[:5], D=a[5], delta_bias=a[6], delta_softplus=True, z=a[7],  # noqa: E731
                                        return_last_state=True)
    assert torch.autograd.gradcheck(f, tuple(t.values()))


@pytest.mark.parametrize("chunk_size", [1, 2, 5, 13, 40])
def test_torch_backend_any_chunk_size(chunk_size):
    t = make_scan_inputs(2, 6, 37, 4, 3)
    args = [t[k] for k in ("u", "delta", "A", "B", "C")]
    kw = dict(D=t["D"], delta_bias=t["delta_bias"], delta_softplus=True, return_last_state=True)
    y, last = selective_scan_torch(*args, chunk_size=chunk_size, **kw)
    y_ref, last_ref = selective_scan_reference(*args, **kw)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(last, last_ref)


@pytest.mark.parametrize("backend", ["reference"] + FAST_BACKENDS)
def test_golden_ops(backend, golden_ops):
    i = golden_ops["inputs"]
    y = selective_scan(i["u"], i["delta"], i["A"], i["B"], i["C"], D=i["D"], delta_bias=i["delta_bias"],
                       delta_softplus=True, backend=backend)
    torch.testing.assert_close(y, golden_ops["y_softplus_bias_D"], rtol=0, atol=1e-5)
    y = selective_scan(i["u"], i["delta"].abs(), i["A"], i["B"], i["C"], backend=backend)
    torch.testing.assert_close(y, golden_ops["y_nosoftplus_nobias_noD"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend", ["reference"] + FAST_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(backend, dtype):
    t = make_scan_inputs(2, 8, 33, 4, 2, dtype=torch.float32, seed=4)
    half = {k: (v.to(dtype) if k in ("u", "delta", "B", "C", "z") else v) for k, v in t.items()}
    y = _call(backend, half, delta_softplus=True, use_bias=True, use_D=True, use_z=True)
    y32 = _call(backend, half, delta_softplus=True, use_bias=True, use_D=True, use_z=True, out_float=True)
    ref = _call("reference", {k: v.double() for k, v in half.items()},
                delta_softplus=True, use_bias=True, use_D=True, use_z=True)
    assert y.dtype == dtype and y32.dtype == torch.float32
    torch.testing.assert_close(y32.double(), ref, rtol=1e-4, atol=1e-4)  # state is fp32: only rounding of inputs
    torch.testing.assert_close(y.double(), ref, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("backend", ["auto", "reference"] + FAST_BACKENDS)
@pytest.mark.parametrize("batch, length", [(0, 5), (2, 0)])
def test_empty_inputs(backend, batch, length):
    u = torch.randn(batch, 4, length)
    args = (u, u, -torch.rand(4, 3), torch.randn(batch, 2, 3, length), torch.randn(batch, 2, 3, length))
    if backend != "auto" and not get_backend(backend).empty_inputs:  # a kernel: its contract says no
        with pytest.raises(ValueError, match=f"backend '{backend}' does not take empty inputs"):
            selective_scan(*args, backend=backend)
        return
    y, last = selective_scan(*args, return_last_state=True, backend=backend)
    assert y.shape == (batch, 4, length) and last.shape == (batch, 4, 3)
    assert not last.any()


def test_grouped_B_3d_means_one_group():
    t = make_scan_inputs(2, 6, 10, 3, 1)
    y3 = selective_scan(t["u"], t["delta"], t["A"], t["B"][:, 0], t["C"][:, 0])
    y4 = selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"])
    torch.testing.assert_close(y3, y4)


def test_channel_uses_group_c_over_dg():
    """Channel c reads group c // (D / G): permuting groups permutes channel blocks."""
    t = make_scan_inputs(1, 6, 9, 2, 3)
    perm = torch.tensor([2, 0, 1])
    cperm = torch.cat([torch.arange(2) + 2 * int(p) for p in perm])
    y = selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"])
    yp = selective_scan(t["u"][:, cperm], t["delta"][:, cperm], t["A"][cperm], t["B"][:, perm], t["C"][:, perm])
    torch.testing.assert_close(yp, y[:, cperm])


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_long_sequence_is_stable(backend):
    """Large steps over a long sequence: decays underflow to 0, never to NaN/inf."""
    t = make_scan_inputs(1, 4, 4096, 16, 1, dtype=torch.float32, seed=5, dt_scale=8.0)
    t["A"] = t["A"] * 20
    y = _call(backend, t, delta_softplus=True, use_D=True)
    assert torch.isfinite(y).all()
    ref = _call("reference", {k: v.double() for k, v in t.items()}, delta_softplus=True, use_D=True)
    torch.testing.assert_close(y.double(), ref, rtol=1e-4, atol=1e-4)


def test_auto_prefers_highest_priority_and_respects_dtype():
    calls = []

    def fake(u, delta, A, B, C, **kw):
        calls.append(u.dtype)
        return selective_scan_reference(u, delta, A, B, C, **kw)

    register_backend("fake_fast", fake, devices=("cpu",), dtypes=(torch.float16,), priority=1000)
    try:
        t = make_scan_inputs(1, 2, 3, 2, 1, dtype=torch.float32)
        selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"])
        assert calls == []  # fp32 input: fake_fast does not accept it
        selective_scan(t["u"].half(), t["delta"].half(), t["A"], t["B"].half(), t["C"].half())
        assert calls == [torch.float16]
        with pytest.raises(ValueError, match="takes torch.float16 inputs, not torch.float32"):
            selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], backend="fake_fast")
    finally:
        _BACKENDS.pop("fake_fast")


@pytest.fixture
def fake_backend():
    """Register fake backends (a reference scan that counts its calls) for one test, then drop them."""
    names, calls = [], []

    def register(name, **contract):
        def fn(u, delta, A, B, C, **kw):
            calls.append((name, u.dtype, A.shape[1]))
            return selective_scan_reference(u, delta, A, B, C, **kw)

        names.append(name)
        return register_backend(name, fn, **{"devices": ("cpu",), "priority": 1000, **contract})

    register.calls = calls
    yield register
    for name in names:
        _BACKENDS.pop(name, None)


def test_contract_is_enforced_by_name_and_read_by_auto(fake_backend):
    fake_backend("fake_small", max_d_state=2, empty_inputs=False, dtypes=(torch.float32,))
    small = make_scan_inputs(1, 2, 3, 2, 1, dtype=torch.float32)
    big = make_scan_inputs(1, 2, 3, 3, 1, dtype=torch.float32)
    args = lambda t: [t[k] for k in ("u", "delta", "A", "B", "C")]  # noqa: E731
    selective_scan(*args(small))
    assert fake_backend.calls == [("fake_small", torch.float32, 2)]
    selective_scan(*args(big))  # d_state 3: "auto" takes the next backend
    selective_scan(*[t.double() for t in args(small)])  # float64: likewise
    assert len(fake_backend.calls) == 1
    with pytest.raises(ValueError, match=r"'fake_small' takes d_state \(N\) up to 2, not 3"):
        selective_scan(*args(big), backend="fake_small")
    with pytest.raises(ValueError, match="'fake_small' takes torch.float32 inputs, not torch.float64"):
        selective_scan(*[t.double() for t in args(small)], backend="fake_small")
    with pytest.raises(ValueError, match="'fake_small' runs on cpu tensors, not meta"):
        selective_scan(*[t.to("meta") for t in args(small)], backend="fake_small")
    assert len(fake_backend.calls) == 1  # never rerouted to it, never silently away from it


def test_auto_skips_a_backend_that_fails_its_self_check_with_one_warning(fake_backend):
    checks = []

    def self_check(device, dtype):
        checks.append((str(device), dtype))
        if dtype == torch.float16:
            raise RuntimeError("kernel did not compile")
        return "y differs from the 'torch' backend by 0.5" if dtype == torch.float32 else None

    fake_backend("fake_checked", self_check=self_check)
    t = make_scan_inputs(1, 2, 3, 2, 1, dtype=torch.float32)
    args = [t[k] for k in ("u", "delta", "A", "B", "C")]
    with pytest.warns(RuntimeWarning, match="'fake_checked' .* failed its self-check on cpu with torch.float32"):
        y = selective_scan(*args)
    torch.testing.assert_close(y, selective_scan(*args, backend="torch"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning only: the result is kept
        selective_scan(*args)
        with pytest.raises(RuntimeError, match="'fake_checked' failed its self-check .* differs"):
            selective_scan(*args, backend="fake_checked")
    assert checks == [("cpu", torch.float32)] and fake_backend.calls == []
    with pytest.warns(RuntimeWarning, match="kernel did not compile"):  # a crash is a failed check too
        selective_scan(*[a.half() if a is not t["A"] else a for a in args])
    selective_scan(*[a.double() for a in args])  # float64 passes its check: the backend runs
    assert checks[1:] == [("cpu", torch.float16), ("cpu", torch.float64)]
    assert fake_backend.calls == [("fake_checked", torch.float64, 2)]


def test_arguments_after_C_are_keyword_only():
    t = make_scan_inputs()
    with pytest.raises(TypeError, match="positional"):
        selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"])


@pytest.mark.parametrize("change, message", [
    (lambda t: t.update(u=t["u"][0]), r"u must have shape \(batch, D, L\)"),
    (lambda t: t.update(delta=t["delta"][:, :, :-1]), "delta must have shape"),
    (lambda t: t.update(A=t["A"][:-1]), r"A must have shape \(D, N\)"),
    (lambda t: t.update(B=t["B"][..., :-1]), "B must have shape"),
    (lambda t: t.update(C=t["C"][:, :, :-1]), "C must have shape"),
    (lambda t: t.update(B=torch.randn(2, 3, 4, 13, dtype=torch.float64),
                        C=torch.randn(2, 3, 4, 13, dtype=torch.float64)), "G=3 of B and C must divide the channel count D=8"),
    (lambda t: t.update(D=t["D"][:3]), r"D must have shape \(D,\)"),
    (lambda t: t.update(delta_bias=t["delta_bias"][None]), "delta_bias must have shape"),
    (lambda t: t.update(z=t["z"][:1]), "z must have shape"),
    (lambda t: t.update(u=t["u"].long()), "u must be a floating tensor"),
    (lambda t: t.update(C=t["C"][:, :1]), "same number of groups"),
])
def test_bad_inputs_raise_clear_errors(change, message):
    t = make_scan_inputs()
    change(t)
    with pytest.raises((ValueError, TypeError), match=message):
        selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], D=t["D"], delta_bias=t["delta_bias"],
                       delta_softplus=True, z=t["z"])


@pytest.mark.parametrize("dynamic", [False, True])
def test_auto_backend_compiles_fullgraph(dynamic):
    t = make_scan_inputs(2, 4, 10, 2, 1, dtype=torch.float32)
    args = [t[k] for k in ("u", "delta", "A", "B", "C", "D")]
    f = lambda *a: selective_scan(*a[:5], D=a[5], delta_softplus=True)  # noqa: E731
    compiled = torch.compile(f, fullgraph=True, backend="eager", dynamic=dynamic)
    torch.testing.assert_close(compiled(*args), f(*args))


def test_import_stays_light():
    import subprocess
    import sys

    code = "import sys, vmamba; heavy = [m for m in ('torch._dynamo', 'matplotlib', 'vmamba.train') if m in sys.modules]; print(heavy)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
