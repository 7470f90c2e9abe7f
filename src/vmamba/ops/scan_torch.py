"""A fast, portable selective scan in plain PyTorch (any device, differentiable, traceable).

The sequence is cut into ``nc`` chunks of ``T`` steps, and every chunk is advanced at once:

1. one step per position j < T, all chunks in parallel, from a zero state: each chunk's local
   end state;
2. a short carry over the chunks: the true state entering each chunk,
   ``H[c+1] = exp(A * sum(dt over chunk c)) * H[c] + local_end[c]``;
3. the same T steps again, now from the true entering states, emitting ``y``.

So the Python loop runs 2*T + nc times (about 3*sqrt(L)), never once per time step, and the
largest live tensor is (B, D, nc, N), never (B, D, L, N). Every step is the plain recurrence
``h = exp(dt*A) * h + dt*B*u``, with decays <= 1 whenever dt >= 0: nothing is divided by a
cumulative product, so nothing overflows or underflows into NaN over long sequences.

For training, the scan runs under activation checkpointing in batch slices: the forward keeps
only its inputs, and the backward recomputes one slice at a time, so memory stays O(B*D*L).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .scan_common import compute_dtype, finish_output, size_hint, step_sizes

# Elements of (batch slice, D, L, N) whose autograd graph the backward may hold at once.
_RECOMPUTE_BUDGET = 1 << 24
# Steps per chunk when the length is symbolic (export with dynamic height/width).
EXPORT_CHUNK_SIZE = 32


def default_chunk_size(length: int) -> int:
    """Steps per chunk: about sqrt(L / 2), which minimises the 2*T + L/T loop iterations."""
    return max(1, min(length, math.ceil(math.sqrt(length / 2))))


def _by_position(t: torch.Tensor, groups: int, nc: int, T: int) -> torch.Tensor:
    """(b, G*X, nc*T) or (b, G, X, nc*T) -> (T, b, G, nc, X), contiguous so t[j] is a dense slice."""
    b = t.shape[0]
    return t.reshape(b, groups, -1, nc, T).permute(4, 0, 1, 3, 2).contiguous()


def chunked_scan(u, dt, A, B, C, chunk_size: int):
    """The recurrence only. u, dt: (b, D, L); A: (D, N); B, C: (b, G, N, L); one float dtype.

    Returns y (b, D, L) without skip or gate, and the last state (b, D, N).
    """
    b, channels, length = u.shape
    groups, n = B.shape[1], B.shape[2]
    dg = channels // groups
    T = chunk_size
    nc = max(1, math.ceil(length / T))
    pad = nc * T - length
    if pad:  # padded steps have dt = 0: decay 1, input 0, so the state passes through unchanged
        dt, u, B, C = (F.pad(t, (0, pad)) for t in (dt, u, B, C))

    dt_j = _by_position(dt, groups, nc, T).unsqueeze(-1)           # (T, b, G, nc, dg, 1)
    dtu_j = _by_position(dt * u, groups, nc, T).unsqueeze(-1)      # (T, b, G, nc, dg, 1)
    B_j = _by_position(B, groups, nc, T).unsqueeze(-2)             # (T, b, G, nc, 1, N)
    C_j = _by_position(C, groups, nc, T).unsqueeze(-1)             # (T, b, G, nc, N, 1)
    A_ = A.reshape(1, groups, 1, dg, n)

    def step(h, j):
        return torch.addcmul(dtu_j[j] * B_j[j], torch.exp(dt_j[j] * A_), h)

    h = u.new_zeros(b, groups, nc, dg, n)
    if nc > 1:
        for j in range(T):
            h = step(h, j)
        chunk_decay = torch.exp(dt.reshape(b, groups, dg, nc, T).sum(-1).transpose(2, 3)[..., None] * A_)
        state = u.new_zeros(b, groups, dg, n)
        entering = []
        for c in range(nc):
            entering.append(state)
            state = torch.addcmul(h[:, :, c], chunk_decay[:, :, c], state)
        h = torch.stack(entering, dim=2)

    ys = []
    for j in range(T):
        h = step(h, j)
        ys.append(torch.matmul(h, C_j[j]))                            # (b, G, nc, dg, 1)
    last = state if nc > 1 else h[:, :, 0]
    y = torch.cat(ys, dim=-1).transpose(2, 3).reshape(b, channels, nc * T)[..., :length]
    return y, last.reshape(b, channels, n)


def export_chunk_size(length) -> int:
    """Steps per chunk when exporting: the eager choice for a static length, else one fitted to
    the example being traced (at most :data:`EXPORT_CHUNK_SIZE`)."""
    length = size_hint(length)
    return EXPORT_CHUNK_SIZE if length is None else min(EXPORT_CHUNK_SIZE, default_chunk_size(length))


def chunked_scan_symbolic(u, dt, A, B, C, chunk_size: int):
    """:func:`chunked_scan` as traced for export (same arguments and results).

    One graph for every length: the carry over chunks is a ``scan`` higher-order op (an ONNX
    ``Scan``) instead of a Python loop over a length-dependent count, and the sequence is always
    padded to whole chunks. The layout suits graph runtimes: the state is (b, G, dg, nc, N) and
    the per-step inputs come from moving the step axis to the front (a plain 2-D transpose).
    """
    from torch._higher_order_ops.scan import scan

    b, channels, length = u.shape
    groups, n = B.shape[1], B.shape[2]
    dg = channels // groups
    T = chunk_size
    # At least one padded step and two chunks, whatever the length: a zero pad would be traced as
    # a no-op, and a count of one chunk as a constant, and either would make the graph reject
    # other lengths.
    nc = length // T + 2
    dt, u, B, C = (F.pad(t, (0, nc * T - length)) for t in (dt, u, B, C))

    def by_step(t):  # (b, G*X, nc*T) or (b, G, X, nc*T) -> (T, b, G, X, nc)
        return t.reshape(b, groups, -1, nc, T).permute(4, 0, 1, 2, 3)

    dt_j = by_step(dt).unsqueeze(-1)                                # (T, b, G, dg, nc, 1)
    dtu_j = by_step(dt * u).unsqueeze(-1)                           # (T, b, G, dg, nc, 1)
    B_j = by_step(B).transpose(-1, -2).unsqueeze(3)                 # (T, b, G, 1, nc, N)
    C_j = by_step(C).transpose(-1, -2).unsqueeze(3)                 # (T, b, G, 1, nc, N)
    A_ = A.reshape(1, groups, dg, 1, n)

    def step(h, j):
        return torch.exp(dt_j[j] * A_) * h + dtu_j[j] * B_j[j]

    h = u.new_zeros(b, groups, dg, nc, n)
    for j in range(T):
        h = step(h, j)
    chunk_decay = torch.exp(dt.reshape(b, groups, dg, nc, T).sum(-1, keepdim=True) * A_)

    def carry(state, xs):
        local_end, decay = xs
        return decay * state + local_end, state.clone()

    last, entering = scan(carry, u.new_zeros(b, groups, dg, n), (h.movedim(3, 0), chunk_decay.movedim(3, 0)))
    h = entering.movedim(0, 3)
    ys = []
    for j in range(T):
        h = step(h, j)
        ys.append((h * C_j[j]).sum(-1))                              # (b, G, dg, nc)
    y = torch.stack(ys, dim=0).permute(1, 2, 3, 4, 0).reshape(b, channels, nc * T)[..., :length]
    return y, last.reshape(b, channels, n)


def _recomputed_in_slices(u, dt, A, B, C, chunk_size):
    """chunked_scan under activation checkpointing, in batch slices that fit the budget."""
    b, channels, length = u.shape
    if torch.compiler.is_compiling():  # one slice: a batch-size loop would specialise the batch size
        return checkpoint(chunked_scan, u, dt, A, B, C, chunk_size, use_reentrant=False)
    per_sample = channels * length * B.shape[2]
    step = max(1, _RECOMPUTE_BUDGET // max(1, per_sample))
    outs = [
        checkpoint(chunked_scan, u[i:i + step], dt[i:i + step], A, B[i:i + step], C[i:i + step],
                   chunk_size, use_reentrant=False)
        for i in range(0, b, step)
    ]
    if len(outs) == 1:
        return outs[0]
    return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])


def selective_scan_torch(
    u, delta, A, B, C, *, D=None, delta_bias=None, delta_softplus=False, z=None,
    return_last_state=False, out_float=False, chunk_size: int | None = None,
):
    """Chunked selective scan; same signature, shapes and semantics as ``selective_scan``.

    ``chunk_size`` (steps per chunk) defaults to :func:`default_chunk_size`.
    """
    dtype = compute_dtype(u)
    dt = step_sizes(delta, delta_bias, delta_softplus, dtype)
    args = (u.to(dtype), dt, A.to(dtype), B.to(dtype), C.to(dtype))
    length = u.shape[-1]
    if torch.compiler.is_exporting() and u.numel() != 0:  # a smaller graph, and one for every length
        y, last = chunked_scan_symbolic(*args, chunk_size or export_chunk_size(length))
        return finish_output(y, u, D, z, last, return_last_state, out_float)
    chunk = chunk_size or default_chunk_size(length)
    if u.numel() == 0:  # empty batch or sequence: nothing to scan
        y, last = args[0].clone(), u.new_zeros(u.shape[0], u.shape[1], A.shape[1], dtype=dtype)
    elif torch.is_grad_enabled() and any(t.requires_grad for t in args):
        y, last = _recomputed_in_slices(*args, chunk)
    else:
        y, last = chunked_scan(*args, chunk)
    return finish_output(y, u, D, z, last, return_last_state, out_float)
