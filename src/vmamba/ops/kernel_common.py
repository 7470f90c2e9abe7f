"""What the kernel backends (``cpu``, ``triton``) share, so that each holds only its kernels.

A kernel backend registers, with ``torch.library``, a forward custom op that returns its
chunk-boundary states as the last output (empty when no gradient is needed) and a backward
custom op that recomputes from them; the rules tying the two together live here
(:func:`register_scan_autograd`, :func:`register_cross_autograd`), with the FLOP formulas of
such ops, the kernels' scan-mode ids and the small argument conversions every wrapper makes.
A backend module needs this module and :mod:`vmamba.ops.backends` (to register), nothing else
of ``vmamba.ops``: the public op only ever hands it inputs inside its declared contract.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .cross_scan import SCAN_MODES, check_scan_mode, scan_order
from .scan_common import direction_rows, project_steps, scan_flops

__all__ = [
    "MODE_IDS", "SCAN_MODES", "check_scan_mode", "scan_order", "f32", "pixel_map", "kernel_output",
    "needs_grad", "cast_grad", "traced", "register_scan_autograd", "register_cross_autograd",
    "project_steps", "direction_rows",
    "scan_op_flops", "cross_scan_op_flops",
]

# The kernels' id of each scan mode of a fused four-direction op (0: a plain scan).
MODE_IDS = {"cross2d": 1, "unidi": 2, "bidi": 3}


def f32(t: Optional[Tensor]) -> Optional[Tensor]:
    """``t`` as a contiguous fp32 tensor (None stays None)."""
    return None if t is None else t.float().contiguous()


def pixel_map(t: Tensor) -> Tensor:
    """A map (..., H, W) whose (H, W) dims flatten to one pixel stride: ``t`` itself when they
    already do (any other strides, e.g. channel-last maps, are read in place), else a copy."""
    h, w = t.shape[-2:]
    return t if h == 1 or t.stride(-2) == w * t.stride(-1) else t.contiguous()


def kernel_output(y: Tensor, last: Tensor, u: Tensor, out_float: bool, return_last_state: bool):
    """The public op's return value from a kernel's fp32 ``y`` and last state: y in u's dtype
    unless ``out_float``, with the last state when ``return_last_state``."""
    if not out_float:
        y = y.to(u.dtype)
    return (y, last) if return_last_state else y


# FLOP formulas of the kernels' custom ops for torch.utils.flop_counter, which counts 2 per
# multiply-add: the authors' count doubled to that unit.
def scan_op_flops(u_shape, delta_shape, A_shape, *args, **kwargs) -> int:
    """FLOPs of a selective-scan op called on u (B, D, L) and A (D, N)."""
    return 2 * scan_flops(u_shape[0], u_shape[1], u_shape[2], A_shape[1])


def cross_scan_op_flops(x_shape, delta_shape, A_shape, *args, **kwargs) -> int:
    """FLOPs of a fused four-direction scan op called on x (B, D, H, W) and A (4*D, N)."""
    return 2 * scan_flops(x_shape[0], A_shape[0], x_shape[2] * x_shape[3], A_shape[1])


# ----------------------------------------------------------------------------- autograd glue

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


def traced(*tensors) -> bool:
    """Whether a kernel call must go through its registered ``torch.library`` op rather than the
    op's eager twin (:func:`register_scan_autograd` returns it): while ``torch.compile`` or
    ``torch.export`` traces, under a dispatch mode (FLOP counting, fake tensors) or a functorch
    transform, and for tensor subclasses. Plain eager calls skip the op's Python wrapper, whose
    first call imports ``torch._dynamo`` (about 70 MB of memory and a second of start-up) and
    whose every call costs more Python than the kernel's smaller stage-3 calls take."""
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() > 0 \
            or torch._C._are_functorch_transforms_active():
        return True
    return any(t is not None and type(t) not in _PLAIN_TENSORS for t in tensors)


_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)


def _class_name(label: str) -> str:
    return "".join(w.capitalize() for w in label.split()) + "EagerFunction"


def eager_function(name: str, forward, setup, backward) -> type:
    """An ``autograd.Function`` running ``forward`` with the autograd rules ``setup(ctx, inputs,
    output)`` and ``backward``: the rules a ``torch.library`` op registers, for eager calls.

    Written in the ``forward(ctx, *inputs)`` form: with a separate ``setup_context``, every
    ``apply`` binds its arguments through ``inspect.signature`` (about 60 us a call on the 2-core
    Xeon in docs/cpu.md, more than the kernel takes at small maps)."""
    def forward_with_ctx(ctx, *inputs):
        output = forward(*inputs)
        setup(ctx, inputs, output)
        return output

    return type(name, (torch.autograd.Function,), {
        "forward": staticmethod(forward_with_ctx), "backward": staticmethod(backward)})


def _scan_rules(backward_fn, label: str):
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
        grads = backward_fn(gy, glast, *saved, states, ctx.delta_softplus)
        need = ctx.needs_input_grad
        return (*(cast_grad(g, t, need[i]) for i, (g, t) in enumerate(zip(grads, saved))),
                *([None] * (ctx.n_inputs - SCAN_TENSOR_INPUTS)))

    return setup, backward


def _cross_rules(backward_fn, label: str, n_tensors: int = CROSS_TENSOR_INPUTS):
    def setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:n_tensors], output[1])
        ctx.delta_softplus, ctx.mode = inputs[n_tensors], inputs[n_tensors + 1]
        ctx.n_inputs = len(inputs)
        ctx.set_materialize_grads(False)

    def backward(ctx, gy, gstates):
        *saved, states = ctx.saved_tensors
        if states.numel() == 0:
            raise _missing_states(label)
        if gy is None:
            gy = torch.zeros(saved[0].shape, dtype=torch.float32, device=saved[0].device)
        grads = backward_fn(gy, *saved, states, ctx.delta_softplus, ctx.mode)
        need = ctx.needs_input_grad
        return (*(cast_grad(g, t, need[i]) for i, (g, t) in enumerate(zip(grads, saved))),
                *([None] * (ctx.n_inputs - n_tensors)))

    return setup, backward


def register_scan_autograd(op, backward_op, label: str, forward_impl=None, backward_impl=None):
    """Autograd for a plain scan op ``op(u, delta, A, B, C, D, delta_bias, z, delta_softplus, ...)``
    returning ``(y, last_state, states)``; ``backward_op(gy, glast, u, ..., z, states,
    delta_softplus)`` returns the eight input gradients in fp32.

    With ``forward_impl`` / ``backward_impl`` (the Python functions behind the two ops), also
    returns their eager twin: an ``autograd.Function`` with the same rules, for calls that
    :func:`traced` says need not go through the op."""
    setup, backward = _scan_rules(backward_op, label)
    op.register_autograd(backward, setup_context=setup)
    if forward_impl is not None:
        return eager_function(_class_name(label), forward_impl, *_scan_rules(backward_impl, label))
    return None


def register_cross_autograd(op, backward_op, label: str, forward_impl=None, backward_impl=None,
                            projected: bool = False):
    """Autograd for a fused four-direction op ``op(x, delta, A, B, C, D, delta_bias,
    delta_softplus, mode, ...)`` returning ``(y, states)``; ``backward_op(gy, x, ..., delta_bias,
    states, delta_softplus, mode)`` returns the seven input gradients in fp32. With ``projected``
    the op takes the step sizes' low-rank inputs and their projection, ``op(x, dts,
    delta_proj_weight, A, ...)``, and the backward returns eight gradients. Returns the eager
    twin as :func:`register_scan_autograd` does."""
    n = CROSS_TENSOR_INPUTS + (1 if projected else 0)
    setup, backward = _cross_rules(backward_op, label, n)
    op.register_autograd(backward, setup_context=setup)
    if forward_impl is not None:
        return eager_function(_class_name(label), forward_impl, *_cross_rules(backward_impl, label, n))
    return None
