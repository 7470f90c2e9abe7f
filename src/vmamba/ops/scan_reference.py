"""The selective scan written as its definition: one step of the recurrence per time step.

Slow on purpose: it is the oracle the other backends are tested against. Works on any device and
any floating dtype (float64 inputs are computed in float64), differentiable through autograd.
"""
from __future__ import annotations

import torch

from .scan_common import compute_dtype, expand_groups, finish_output, step_sizes


def selective_scan_reference(
    u, delta, A, B, C, *, D=None, delta_bias=None, delta_softplus=False, z=None,
    return_last_state=False, out_float=False,
):
    """Sequential selective scan; same signature, shapes and semantics as ``selective_scan``."""
    dtype = compute_dtype(u)
    batch, channels, length = u.shape
    dt = step_sizes(delta, delta_bias, delta_softplus, dtype)
    A = A.to(dtype)
    Bx = expand_groups(B.to(dtype), channels)  # (batch, channels, N, L)
    Cx = expand_groups(C.to(dtype), channels)
    uc = u.to(dtype)
    h = u.new_zeros(batch, channels, A.shape[1], dtype=dtype)
    ys = []
    for t in range(length):
        dt_t = dt[:, :, t, None]
        h = torch.exp(dt_t * A) * h + dt_t * Bx[..., t] * uc[:, :, t, None]
        ys.append((h * Cx[..., t]).sum(-1))
    y = torch.stack(ys, dim=-1) if ys else uc.new_zeros(batch, channels, 0)
    return finish_output(y, u, D, z, h, return_last_state, out_float)
