"""Pieces of the selective-scan semantics shared by the pure-PyTorch backends.

The recurrence itself differs between backends; what happens before it (the step size) and after
it (skip, gate, output dtype) is the same and lives here so that the backends cannot drift apart.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def scan_flops(batch: int, channels: int, length: int, d_state: int) -> int:
    """FLOPs of one selective scan in the authors' count: 9*B*D*L*N + B*D*L."""
    return 9 * batch * channels * length * d_state + batch * channels * length


def size_hint(n) -> int | None:
    """A size as an int: itself when static, the traced example's value when symbolic (while
    exporting), None when there is no example value."""
    if isinstance(n, int):
        return n
    hint = getattr(getattr(n, "node", None), "hint", None)
    return hint if isinstance(hint, int) else None


def compute_dtype(u: torch.Tensor) -> torch.dtype:
    """State and arithmetic dtype: float32, or float64 when the input itself is float64."""
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def step_sizes(
    delta: torch.Tensor,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
    dtype: torch.dtype,
) -> torch.Tensor:
    """dt = softplus(delta + delta_bias) (bias and softplus optional), in ``dtype``; (B, D, L)."""
    dt = delta.to(dtype)
    if delta_bias is not None:
        dt = dt + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        # Exported graphs get softplus as max(x, 0) + log(1 + exp(-|x|)): the same function,
        # but plain element-wise ops, many times faster than onnxruntime's Softplus + Where.
        dt = torch.relu(dt) + torch.log1p(torch.exp(-dt.abs())) if torch.compiler.is_exporting() else F.softplus(dt)
    return dt


def project_steps(dts: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Raw step sizes from their low-rank inputs, per scan direction k:
    ``delta[b, k, :, h, w] = weight[k] @ dts[b, k, :, h, w]``.

    dts (batch, K, R, H, W), weight (K, D, R) -> delta (batch, K, D, H, W), computed as K products
    of (batch*H*W, R) rows by (R, D), so the result is channel-last in memory ((K, batch, H, W, D)).
    """
    b, k, r, h, w = dts.shape
    delta = torch.bmm(direction_rows(dts), weight.transpose(1, 2))
    return delta.view(k, b, h, w, weight.shape[1]).permute(1, 0, 4, 2, 3)


def direction_rows(t: torch.Tensor) -> torch.Tensor:
    """Per-direction maps (batch, K, X, H, W) as K row matrices (K, batch*H*W, X): a view when ``t``
    is laid out (K, batch, H, W, X) in memory (as :func:`project_steps` returns), else a copy."""
    b, k, x, h, w = t.shape
    return t.permute(1, 0, 3, 4, 2).reshape(k, b * h * w, x)


def expand_groups(m: torch.Tensor, channels: int) -> torch.Tensor:
    """(B, G, N, L) grouped B or C -> (B, channels, N, L); channel c reads group c // (channels / G)."""
    b, g, n, length = m.shape
    return m[:, :, None].expand(b, g, channels // g, n, length).reshape(b, channels, n, length)


def finish_output(
    y: torch.Tensor,
    u: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    last_state: torch.Tensor,
    return_last_state: bool,
    out_float: bool,
):
    """Add the D skip, apply the z gate, cast, and pack the return value of the op."""
    if D is not None:
        y = y + D.to(y.dtype)[:, None] * u.to(y.dtype)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    if not out_float:
        y = y.to(u.dtype)
    return (y, last_state) if return_last_state else y
