"""Autograd glue shared by the kernel backends (``cpu``, ``triton``).

Each kernel backend registers a forward custom op that returns its chunk-boundary states as
the last output (empty when no gradient is needed) and a backward custom op that recomputes
from them. The rules tying the two together are the same for every backend and live here.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

SCAN_TENSOR_INPUTS = 8   # u, delta, A, B, C, D, delta_bias, z
CROSS_TENSOR_INPUTS = 7  # x, delta, A, B, C, D, delta_bias


def needs_grad(*tensors) -> bool:
    """Whether autograd will ask for a gradient of any of ``tensors``."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def cast_grad(g: Tensor, like: Optional[Tensor], needed: bool) -> Optional[Tensor]:
    """A kernel's fp32 gradient in the dtype of its input, or None where none is wanted."""
    if like is None or not needed:
        return None
    return g.to(like.dtype)


def _missing_states(label: str) -> RuntimeError:
    return RuntimeError(f"vmamba {label}: backward called but the forward did not save its states "
                        "(it ran with gradients disabled)")


def register_scan_autograd(op, backward_op, label: str) -> None:
    """Autograd for a plain scan op ``op(u, delta, A, B, C, D, delta_bias, z, delta_softplus, ...)``
    returning ``(y, last_state, states)``; ``backward_op(gy, glast, u, ..., z, states,
    delta_softplus)`` returns the eight input gradients in fp32."""

    def setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:SCAN_TENSOR_INPUTS], output[2])
        ctx.delta_softplus, ctx.n_inputs = inputs[SCAN_TENSOR_INPUTS], len(inputs)
        # unused outputs (the last state, the saved states) get None, not zero-filled tensors
        ctx.set_materialize_grads(False)

    def backward(ctx, gy, glast, gstates):
        *saved, states = ctx.saved_tensors
        u = saved[0]
        if states.numel() == 0 and u.shape[-1] > 0:
            raise _missing_states(label)
        if gy is None:
            gy = torch.zeros(u.shape, dtype=torch.float32, device=u.device)
        grads = backward_op(gy, glast, *saved, states, ctx.delta_softplus)
        need = ctx.needs_input_grad
        return (*(cast_grad(g, t, need[i]) for i, (g, t) in enumerate(zip(grads, saved))),
                *([None] * (ctx.n_inputs - SCAN_TENSOR_INPUTS)))

    op.register_autograd(backward, setup_context=setup)


def register_cross_autograd(op, backward_op, label: str) -> None:
    """Autograd for a fused four-direction op ``op(x, delta, A, B, C, D, delta_bias,
    delta_softplus, mode, ...)`` returning ``(y, states)``; ``backward_op(gy, x, ..., delta_bias,
    states, delta_softplus, mode)`` returns the seven input gradients in fp32."""

    def setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:CROSS_TENSOR_INPUTS], output[1])
        ctx.delta_softplus, ctx.mode = inputs[CROSS_TENSOR_INPUTS], inputs[CROSS_TENSOR_INPUTS + 1]
        ctx.n_inputs = len(inputs)
        ctx.set_materialize_grads(False)

    def backward(ctx, gy, gstates):
        *saved, states = ctx.saved_tensors
        if states.numel() == 0:
            raise _missing_states(label)
        if gy is None:
            gy = torch.zeros(saved[0].shape, dtype=torch.float32, device=saved[0].device)
        grads = backward_op(gy, *saved, states, ctx.delta_softplus, ctx.mode)
        need = ctx.needs_input_grad
        return (*(cast_grad(g, t, need[i]) for i, (g, t) in enumerate(zip(grads, saved))),
                *([None] * (ctx.n_inputs - CROSS_TENSOR_INPUTS)))

    op.register_autograd(backward, setup_context=setup)
