"""The SS2D core as one op: four selective scans over the scan orders of a 2D map, merged.

Every input stays in pixel (row-major) layout; the op itself walks the four scan orders. The
generic path materialises the four direction copies (cross_scan -> selective_scan ->
cross_merge); a backend that registers a fused ``cross_fn`` reads the map in the four orders
directly and never makes those copies.
"""
from __future__ import annotations

import torch

from .backends import is_empty, resolve_backend
from .cross_scan import check_scan_mode, cross_merge, cross_scan, scan_order
from .scan_common import project_steps, size_hint
from .selective_scan import check_scan_inputs

K = 4


def _check_cross_inputs(x, delta, B, C, delta_proj_weight=None):
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"cross_selective_scan: x must have shape (batch, D, H, W), got {got}")
    b, d, h, w = x.shape
    projected = delta_proj_weight is not None
    if projected:
        if not isinstance(delta_proj_weight, torch.Tensor) or delta_proj_weight.dim() != 3 \
                or tuple(delta_proj_weight.shape[:2]) != (K, d) or delta_proj_weight.shape[2] < 1:
            got = (tuple(delta_proj_weight.shape) if isinstance(delta_proj_weight, torch.Tensor)
                   else type(delta_proj_weight).__name__)
            raise ValueError(f"cross_selective_scan: delta_proj_weight must have shape (4, D, R) = (4, {d}, R), "
                             f"got {got}")
        if delta_proj_weight.device != x.device or not delta_proj_weight.is_floating_point():
            raise ValueError(f"cross_selective_scan: delta_proj_weight must be a floating-point tensor on x's "
                             f"device ({x.device}), got {delta_proj_weight.dtype} on {delta_proj_weight.device}")
    rank = delta_proj_weight.shape[2] if projected else None
    for name, t, rest in (("delta", delta, (rank if projected else d, h, w)), ("B", B, (None, h, w)),
                          ("C", C, (None, h, w))):
        want = (b, K) + rest
        if not isinstance(t, torch.Tensor) or t.dim() != 5 or any(
                s is not None and s != g for s, g in zip(want, t.shape)):
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            dims = ("(batch, 4, R, H, W) with delta_proj_weight" if projected else "(batch, 4, D, H, W)") \
                if name == "delta" else "(batch, 4, N, H, W)"
            raise ValueError(f"cross_selective_scan: {name} must have shape {dims} = "
                             f"{tuple('N' if s is None else s for s in want)}, got {got}")


def cross_selective_scan(
    x: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    *,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    mode: str = "cross2d",
    out_float: bool = False,
    backend: str = "auto",
    delta_proj_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Selective scans along the four scan orders of a map, merged back: the SS2D core.

    Equal to ``cross_merge(selective_scan(cross_scan(x), scan_order(delta), A, scan_order(B),
    scan_order(C), D=D, delta_bias=delta_bias, delta_softplus=delta_softplus), mode)``, with
    direction k using channels [k*D, (k+1)*D) of A, D and delta_bias. Everything after ``C`` is
    keyword-only.

    Args:
        x: the map, (batch, D, H, W).
        delta: raw step sizes per direction, (batch, 4, D, H, W), pixel layout.
        A: (4*D, N). B, C: (batch, 4, N, H, W), pixel layout.
        D, delta_bias: (4*D,), optional. delta_softplus, out_float, backend: as in selective_scan.
        delta_proj_weight: optional (4, D, R) step-size projection. With it, ``delta`` holds the
            step sizes' low-rank inputs, (batch, 4, R, H, W), and direction k's raw step sizes
            are ``delta_proj_weight[k] @ delta[:, k]`` per pixel (SS2D's dt_proj): backends whose
            kernel projects them itself (``"cpu"``) never materialise the (batch, 4, D, H, W)
            step sizes; the others get them projected first.

    Returns:
        y, (batch, D, H, W).
    """
    check_scan_mode(mode)
    _check_cross_inputs(x, delta, B, C, delta_proj_weight)
    b, d, h, w = x.shape
    # Shapes of A, D, delta_bias checked on (cheap) views standing for the scan sequences.
    check_scan_inputs(x.new_empty(()).expand(b, K * d, h * w), delta.new_empty(()).expand(b, K * d, h * w),
                      A, B.flatten(3), C.flatten(3), D, delta_bias)
    impl = resolve_backend(backend, x.device, x.dtype, A.shape[1], is_empty(x))
    if delta_proj_weight is not None:
        if impl.cross_fn is not None and impl.cross_projects:
            return impl.cross_fn(x, delta, A, B, C, D=D, delta_bias=delta_bias, delta_softplus=delta_softplus,
                                 mode=mode, out_float=out_float, delta_proj_weight=delta_proj_weight)
        delta = project_steps(delta, delta_proj_weight)
    if impl.cross_fn is not None:
        return impl.cross_fn(x, delta, A, B, C, D=D, delta_bias=delta_bias,
                             delta_softplus=delta_softplus, mode=mode, out_float=out_float)
    if mode == "cross2d" and torch.compiler.is_exporting() and (size_hint(h * w) or 0) <= _GATHER_MAX_LENGTH:
        return _cross2d_by_gathers(x, delta, A, B, C, D, delta_bias, delta_softplus, out_float, impl.fn)
    return composed_cross_scan(impl.fn, x, delta, A, B, C, D, delta_bias, delta_softplus, mode, out_float)


def composed_cross_scan(scan_fn, x, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False,
                        mode="cross2d", out_float=False) -> torch.Tensor:
    """``cross_selective_scan`` composed from cross_scan, ``scan_fn`` (a selective-scan backend)
    and cross_merge, materialising the four direction copies: the path of backends without a
    fused kernel."""
    b, d, h, w = x.shape
    ys = scan_fn(cross_scan(x, mode).reshape(b, K * d, h * w), scan_order(delta, mode).reshape(b, K * d, h * w),
                 A, scan_order(B, mode), scan_order(C, mode), D=D, delta_bias=delta_bias,
                 delta_softplus=delta_softplus, z=None, return_last_state=False, out_float=out_float)
    return cross_merge(ys.reshape(b, K, d, h, w), mode).reshape(b, d, h, w)


# Maps up to this many pixels are reordered by gathers when exported (onnxruntime transposes
# small maps slowly); larger ones by transposes, which it does faster than gathers there.
_GATHER_MAX_LENGTH = 1024


def _cross2d_by_gathers(x, delta, A, B, C, D, delta_bias, delta_softplus, out_float, scan_fn):
    """The cross2d path as traced for export: the scan orders and the merge as index gathers
    along the flattened map instead of transposes and flips (onnxruntime transposes small maps
    an order of magnitude slower than it gathers them). Same result as the generic path."""
    b, d, h, w = x.shape
    length = h * w
    pixel = torch.arange(length, device=x.device)
    col = pixel.reshape(h, w).t().flatten()        # scan position -> pixel, column-major order
    col_pos = pixel.reshape(w, h).t().flatten()    # pixel -> position in column-major order
    last = length - 1
    read = (None, col, last - pixel, col.flip(0))  # direction k reads pixel read[k][l] at step l
    back = (None, col_pos, last - pixel, last - col_pos)  # and step back[k][p] lands on pixel p

    def in_order(t):  # (b, 4, X, H, W) -> (b, 4*X, L)
        flat = t.flatten(3)
        return torch.stack([flat[:, k] if k == 0 else flat[:, k].index_select(-1, read[k]) for k in range(K)],
                           dim=1).flatten(1, 2)

    flat_x = x.flatten(2)
    xs = torch.stack([flat_x if k == 0 else flat_x.index_select(-1, read[k]) for k in range(K)], dim=1)
    ys = scan_fn(xs.flatten(1, 2), in_order(delta), A, in_order(B).unflatten(1, (K, -1)),
                 in_order(C).unflatten(1, (K, -1)), D=D, delta_bias=delta_bias, delta_softplus=delta_softplus,
                 z=None, return_last_state=False, out_float=out_float).unflatten(1, (K, d))
    y = ys[:, 0] + ys[:, 1].index_select(-1, back[1]) + ys[:, 2].index_select(-1, back[2]) + ys[:, 3].index_select(-1, back[3])
    return y.reshape(b, d, h, w)
