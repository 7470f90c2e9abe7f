"""The public selective-scan op: argument checks, then dispatch to a registered backend."""
from __future__ import annotations

import torch

from .backends import is_empty, register_backend, resolve_backend
from .scan_reference import selective_scan_reference
from .scan_torch import selective_scan_torch

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_tensor(name, t, shape, dims_doc):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"selective_scan: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOATS:
        raise TypeError(f"selective_scan: {name} must be a floating tensor, got {t.dtype}")
    if t.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, t.shape)):
        want = "(" + ", ".join(dims_doc) + ("," if len(dims_doc) == 1 else "") + ")"
        raise ValueError(f"selective_scan: {name} must have shape {want} = "
                         f"{tuple('?' if s is None else s for s in shape)}, got {tuple(t.shape)}")


def check_scan_inputs(u, delta, A, B, C, D=None, delta_bias=None, z=None):
    """Validate the op's arguments; return B and C in their 4-D grouped form (batch, G, N, L).

    Raises TypeError/ValueError naming the offending argument, its shape and the expected one.
    """
    if not isinstance(u, torch.Tensor) or u.dim() != 3:
        got = tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
        raise ValueError(f"selective_scan: u must have shape (batch, D, L), got {got}")
    batch, channels, length = u.shape
    _check_tensor("u", u, (batch, channels, length), ("batch", "D", "L"))
    _check_tensor("delta", delta, (batch, channels, length), ("batch", "D", "L"))
    if not isinstance(A, torch.Tensor) or A.dim() != 2 or A.shape[0] != channels:
        got = tuple(A.shape) if isinstance(A, torch.Tensor) else type(A).__name__
        raise ValueError(f"selective_scan: A must have shape (D, N) = ({channels}, N), got {got}")
    n = A.shape[1]
    _check_tensor("A", A, (channels, n), ("D", "N"))
    grouped = []
    for name, m in (("B", B), ("C", C)):
        if isinstance(m, torch.Tensor) and m.dim() == 3:
            m = m.unsqueeze(1)  # (batch, N, L): one group shared by every channel
        _check_tensor(name, m, (batch, None, n, length), ("batch", "G", "N", "L"))
        grouped.append(m)
    B, C = grouped
    if B.shape[1] != C.shape[1]:
        raise ValueError(f"selective_scan: B and C must have the same number of groups, "
                         f"got {B.shape[1]} and {C.shape[1]}")
    groups = B.shape[1]
    if groups == 0 or channels % groups:
        raise ValueError(f"selective_scan: the group count G={groups} of B and C must divide "
                         f"the channel count D={channels}")
    if D is not None:
        _check_tensor("D", D, (channels,), ("D",))
    if delta_bias is not None:
        _check_tensor("delta_bias", delta_bias, (channels,), ("D",))
    if z is not None:
        _check_tensor("z", z, (batch, channels, length), ("batch", "D", "L"))
    devices = {t.device for t in (u, delta, A, B, C, D, delta_bias, z) if t is not None}
    if len(devices) > 1:
        raise ValueError(f"selective_scan: all tensors must be on one device, got {sorted(map(str, devices))}")
    return B, C


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    *,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    z: torch.Tensor | None = None,
    return_last_state: bool = False,
    out_float: bool = False,
    backend: str = "auto",
):
    """Selective scan (Mamba's S6) over grouped channels, with state and arithmetic in fp32.

    ``u, delta, A, B, C`` are positional; everything after ``C`` is keyword-only (mamba_ssm's
    ``selective_scan_fn`` orders them ``D, z, delta_bias, delta_softplus``, an older order here
    put ``z`` last: naming them makes code ported from either bind the same way).

    For every batch b and channel c (group g = c // (D / G)), with h_{-1} = 0::

        dt_t = softplus(delta_t + delta_bias)        (bias and softplus optional)
        h_t  = exp(dt_t * A[c]) * h_{t-1} + dt_t * B[b, g, :, t] * u_t     h_t: (N,)
        y_t  = <C[b, g, :, t], h_t> + D[c] * u_t
        y_t  = y_t * silu(z_t)                        (when z is given)

    Args:
        u: input, (batch, D, L), fp32/fp16/bf16 (fp64 computes in fp64).
        delta: raw step sizes, (batch, D, L).
        A: state matrix, (D, N); usually -exp(A_logs), fp32.
        B, C: input and output projections, (batch, G, N, L) with G dividing D, or
            (batch, N, L) for a single group.
        D: skip weights, (D,), optional.
        delta_bias: added to delta before the softplus, (D,), optional.
        delta_softplus: apply softplus to delta (+ bias).
        z: gate, (batch, D, L), optional.
        return_last_state: also return h_{L-1}, (batch, D, N), in the compute dtype.
        out_float: return y in fp32 (the compute dtype) instead of u's dtype.
        backend: a name from ``available_backends()``, or ``"auto"``: the highest-priority
            available backend whose contract (device, dtype, largest d_state, empty inputs; see
            :mod:`vmamba.ops.backends`) covers the call. A named backend whose contract does not
            cover the call raises a ValueError; it is never swapped for another.

    Returns:
        y, (batch, D, L); or (y, last_state) when ``return_last_state``.
    """
    B, C = check_scan_inputs(u, delta, A, B, C, D, delta_bias, z)
    impl = resolve_backend(backend, u.device, u.dtype, A.shape[1], is_empty(u))
    return impl.fn(u, delta, A, B, C, D=D, delta_bias=delta_bias, delta_softplus=delta_softplus,
                   z=z, return_last_state=return_last_state, out_float=out_float)


register_backend(
    "reference", selective_scan_reference, priority=-100,
    description="sequential definition, one step per time step (the oracle; slow)",
)
register_backend(
    "torch", selective_scan_torch, priority=0,
    description="chunked pure PyTorch: any device, differentiable, traceable",
)
