"""Cross-scan / cross-merge and the fused SS2D core op."""
from __future__ import annotations

import pytest
import torch

from vmamba.ops import SCAN_MODES, available_backends, cross_merge, cross_scan, cross_selective_scan
from vmamba.ops import scan_order, selective_scan
from vmamba.ops.scan_common import project_steps

MODES = list(SCAN_MODES)


@pytest.mark.parametrize("index, mode", list(enumerate(MODES)))
def test_golden_cross_scan_and_merge(index, mode, golden_ops):
    torch.testing.assert_close(cross_scan(golden_ops["cross_x"], mode), golden_ops[f"cross_scan_scans{index}"])
    torch.testing.assert_close(cross_merge(golden_ops["cross_ys"], mode), golden_ops[f"cross_merge_scans{index}"])


def test_cross2d_orders_on_nonsquare_map():
    x = torch.arange(6.0).reshape(1, 1, 2, 3)  # [[0,1,2],[3,4,5]]
    xs = cross_scan(x, "cross2d")[0, :, 0]
    assert xs[0].tolist() == [0, 1, 2, 3, 4, 5]
    assert xs[1].tolist() == [0, 3, 1, 4, 2, 5]
    assert xs[2].tolist() == [5, 4, 3, 2, 1, 0]
    assert xs[3].tolist() == [5, 2, 4, 1, 3, 0]


@pytest.mark.parametrize("mode", MODES)
def test_merge_is_adjoint_of_scan(mode):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 7, generator=g, dtype=torch.float64)
    ys = torch.randn(2, 4, 3, 4, 7, generator=g, dtype=torch.float64)
    lhs = (cross_scan(x, mode) * ys.flatten(3)).sum()
    rhs = (x.flatten(2) * cross_merge(ys, mode)).sum()
    torch.testing.assert_close(lhs, rhs)


@pytest.mark.parametrize("mode", MODES)
def test_gradcheck(mode):
    x = torch.randn(1, 2, 3, 5, dtype=torch.float64, requires_grad=True)
    ys = torch.randn(1, 4, 2, 3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: cross_scan(t, mode), (x,))
    assert torch.autograd.gradcheck(lambda t: cross_merge(t, mode), (ys,))


def test_merge_accepts_flat_sequences_with_size():
    ys = torch.randn(2, 4, 3, 4, 5)
    torch.testing.assert_close(cross_merge(ys.flatten(3), size=(4, 5)), cross_merge(ys))
    with pytest.raises(ValueError, match="needs size"):
        cross_merge(ys.flatten(3))
    with pytest.raises(ValueError, match="does not match L=20"):
        cross_merge(ys.flatten(3), size=(5, 5))


def test_bad_inputs():
    with pytest.raises(ValueError, match="unknown scan mode 'diag'"):
        cross_scan(torch.randn(1, 2, 3, 3), "diag")
    with pytest.raises(ValueError, match=r"x must have shape \(B, C, H, W\)"):
        cross_scan(torch.randn(2, 3, 3))
    with pytest.raises(ValueError, match=r"ys must have shape \(B, 4, C, H, W\)"):
        cross_merge(torch.randn(1, 3, 2, 3, 3))


def _cross_inputs(b=2, d=3, h=4, w=5, n=2, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    return dict(x=r(b, d, h, w), delta=r(b, 4, d, h, w) * 0.5, A=-torch.rand(4 * d, n, generator=g, dtype=dtype) - 0.1,
                B=r(b, 4, n, h, w), C=r(b, 4, n, h, w), D=r(4 * d), delta_bias=r(4 * d) * 0.2)


@pytest.mark.parametrize("backend", available_backends("cpu"))
@pytest.mark.parametrize("mode", MODES)
def test_cross_selective_scan_equals_composition(backend, mode):
    t = _cross_inputs(dtype=torch.float32 if backend not in ("torch", "reference") else torch.float64)
    y = cross_selective_scan(t["x"], t["delta"], t["A"], t["B"], t["C"], D=t["D"], delta_bias=t["delta_bias"],
                             delta_softplus=True, mode=mode, backend=backend)
    b, d, h, w = t["x"].shape
    ys = selective_scan(cross_scan(t["x"], mode).flatten(1, 2), scan_order(t["delta"], mode).flatten(1, 2),
                        t["A"], scan_order(t["B"], mode), scan_order(t["C"], mode), D=t["D"],
                        delta_bias=t["delta_bias"], delta_softplus=True, backend="reference")
    expected = cross_merge(ys.reshape(b, 4, d, h, w), mode).reshape(b, d, h, w)
    assert y.shape == (b, d, h, w)
    torch.testing.assert_close(y.to(expected.dtype), expected, rtol=1e-4, atol=1e-4)


def test_scan_order_slot_k_uses_order_k():
    t = torch.randn(1, 4, 2, 3, 5)
    for k in range(4):
        torch.testing.assert_close(scan_order(t, "cross2d")[:, k], cross_scan(t[:, k], "cross2d")[:, k])


def test_cross_selective_scan_bad_shapes():
    t = _cross_inputs()
    with pytest.raises(ValueError, match=r"delta must have shape \(batch, 4, D, H, W\)"):
        cross_selective_scan(t["x"], t["delta"][:, :, :, :3], t["A"], t["B"], t["C"])
    with pytest.raises(ValueError, match=r"A must have shape \(D, N\) = \(12, N\)"):
        cross_selective_scan(t["x"], t["delta"], t["A"][:3], t["B"], t["C"])


# ----------------------------------------------------------------------------- step sizes projected by the op

def _projected_inputs(b=2, d=12, h=5, w=6, n=4, r=3, seed=1, dtype=torch.float32):
    """Inputs with delta given as low-rank dts (b, 4, R, H, W) plus the projection (4, D, R),
    laid out as SS2D makes them (dts a strided view of per-pixel rows, the weight stored (4, R, D))."""
    g = torch.Generator().manual_seed(seed)
    t = _cross_inputs(b=b, d=d, h=h, w=w, n=n, seed=seed, dtype=dtype)
    rows = torch.randn(b * h * w, 4, r + 2, generator=g, dtype=dtype)
    t["delta"] = rows[..., :r].view(b, h, w, 4, r).permute(0, 3, 4, 1, 2)
    t["weight"] = (torch.randn(4, r, d, generator=g, dtype=dtype) * r ** -0.5).transpose(1, 2)
    return t


def _call(t, backend, mode="cross2d", projected=True, **kw):
    return cross_selective_scan(
        t["x"], t["delta"], t["A"], t["B"], t["C"], D=t["D"], delta_bias=t["delta_bias"], delta_softplus=True,
        mode=mode, backend=backend, delta_proj_weight=t["weight"] if projected else None, **kw)


@pytest.mark.parametrize("backend", available_backends("cpu"))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(2, 12, 5, 6, 4, 3), (1, 33, 7, 4, 1, 7), (1, 20, 1, 9, 2, 64), (1, 8, 3, 3, 1, 65)],
                         ids=["small", "rank7", "one_row_rank64", "rank65"])
@pytest.mark.parametrize("weight_layout", ["stored", "contiguous"])
def test_projected_step_sizes_equal_projecting_first(backend, mode, shape, weight_layout):
    """delta_proj_weight gives what projecting the step sizes first gives, values and every gradient
    (the "cpu" kernel projects them itself up to rank 64, reading the weight in either layout; the
    others, and larger ranks, first)."""
    b, d, h, w, n, r = shape
    dtype = torch.float32 if backend not in ("torch", "reference") else torch.float64
    t = _projected_inputs(b=b, d=d, h=h, w=w, n=n, r=r, dtype=dtype)
    if weight_layout == "contiguous":
        t["weight"] = t["weight"].contiguous()
    leaves = {k: v.detach().clone().requires_grad_() for k, v in t.items()}
    ref_leaves = {k: v.detach().clone().requires_grad_() for k, v in t.items()}
    y = _call(leaves, backend, mode)
    ref = dict(ref_leaves, delta=project_steps(ref_leaves["delta"], ref_leaves["weight"]))
    y_ref = _call(ref, backend, mode, projected=False)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(2), dtype=y.dtype)
    y.backward(gy)
    y_ref.backward(gy)
    for k in t:
        scale = ref_leaves[k].grad.abs().max().clamp_min(1e-6)
        torch.testing.assert_close(leaves[k].grad / scale, ref_leaves[k].grad / scale, rtol=2e-5, atol=2e-5,
                                   msg=lambda m, k=k: f"gradient of {k}: {m}")
    # the projection's gradient comes back in the layout the weight is stored in
    assert leaves["weight"].grad.stride() == leaves["weight"].stride()


@pytest.mark.skipif("cpu" not in available_backends("cpu"), reason="the CPU kernel could not be built")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_projected_step_sizes_half_inputs(dtype):
    t = {k: v.to(dtype) for k, v in _projected_inputs().items()}
    y = _call(t, "cpu", out_float=True)
    y_ref = _call(dict(t, delta=project_steps(t["delta"].float(), t["weight"].float()).to(dtype)), "cpu",
                  projected=False, out_float=True)
    torch.testing.assert_close(y, y_ref, rtol=2e-2, atol=2e-2)


@pytest.mark.skipif("cpu" not in available_backends("cpu"), reason="the CPU kernel could not be built")
def test_projected_step_sizes_compile():
    """Traced calls (here torch.compile) take the registered projected op: same result."""
    t = _projected_inputs()
    fn = torch.compile(lambda x, dts, wt: cross_selective_scan(
        x, dts, t["A"], t["B"], t["C"], D=t["D"], delta_bias=t["delta_bias"], delta_softplus=True,
        backend="cpu", delta_proj_weight=wt), backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(fn(t["x"], t["delta"], t["weight"]), _call(t, "cpu"), rtol=1e-5, atol=1e-5)


def test_projected_step_sizes_bad_shapes():
    t = _projected_inputs()
    with pytest.raises(ValueError, match=r"delta_proj_weight must have shape \(4, D, R\) = \(4, 12, R\)"):
        _call(dict(t, weight=t["weight"][:, :5]), "torch")
    with pytest.raises(ValueError, match=r"delta_proj_weight must have shape"):
        _call(dict(t, weight=t["weight"][0]), "torch")
    with pytest.raises(ValueError, match=r"delta must have shape \(batch, 4, R, H, W\) with delta_proj_weight"):
        _call(dict(t, delta=t["delta"][:, :, :2]), "torch")
    with pytest.raises(ValueError, match=r"delta_proj_weight must be a floating-point tensor on x's device"):
        _call(dict(t, weight=t["weight"].to(torch.int64)), "torch")
    with pytest.raises(ValueError, match=r"delta_proj_weight must be a floating-point tensor on x's device"):
        _call(dict(t, weight=t["weight"].to("meta")), "torch")


@pytest.mark.skipif("cpu" not in available_backends("cpu"), reason="the CPU kernel could not be built")
def test_inference_mode_first_then_training():
    """The kernel's cached scan-order indices made under inference_mode serve training later."""
    t = _projected_inputs(h=11, w=13)  # a map size no other test uses: the first call makes the index
    with torch.inference_mode():
        y0 = _call(t, "cpu")
    leaves = {k: v.detach().clone().requires_grad_() for k, v in t.items()}
    y = _call(leaves, "cpu")
    torch.testing.assert_close(y.detach(), y0)
    y.square().sum().backward()
    assert all(v.grad is not None and torch.isfinite(v.grad).all() for v in leaves.values())


@pytest.mark.skipif("cpu" not in available_backends("cpu"), reason="the CPU kernel could not be built")
def test_projected_op_registrations():
    """The registered projected op (what compiled graphs call): fake, autograd and schema agree
    with the kernel; its FLOP formula counts the scan and the projection the projecting-first
    path counts."""
    from torch.utils.flop_counter import FlopCounterMode

    t = _projected_inputs(b=1, d=16, h=3, w=4, n=2, r=3)
    args = [t[k].detach().clone().requires_grad_() for k in ("x", "delta", "weight", "A", "B", "C", "D", "delta_bias")]
    torch.library.opcheck(torch.ops.vmamba.cross_selective_scan_cpu_projected.default, (*args, True, "cross2d", True))
    with FlopCounterMode(display=False) as fused:
        _call(t, "cpu")
    with FlopCounterMode(display=False) as first:
        _call(dict(t, delta=project_steps(t["delta"], t["weight"])), "cpu", projected=False)
    assert fused.get_total_flops() == first.get_total_flops() > 0


@pytest.mark.skipif("cpu" not in available_backends("cpu"), reason="the CPU kernel could not be built")
def test_projected_step_sizes_compile_training():
    """Compiled forward and backward through the registered projected op equal eager's."""
    t = _projected_inputs()
    eager = {k: v.detach().clone().requires_grad_() for k, v in t.items()}
    comp = {k: v.detach().clone().requires_grad_() for k, v in t.items()}
    fn = torch.compile(lambda d: _call(d, "cpu"), backend="aot_eager", fullgraph=True)
    y_eager, y_comp = _call(eager, "cpu"), fn(comp)
    torch.testing.assert_close(y_comp, y_eager, rtol=1e-5, atol=1e-5)
    gy = torch.randn(y_eager.shape, generator=torch.Generator().manual_seed(3))
    y_eager.backward(gy)
    y_comp.backward(gy)
    for k in t:
        torch.testing.assert_close(comp[k].grad, eager[k].grad, rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
