"""Dense layers, ``y = x @ W^T + b``, with the CPU product run by oneDNN rather than ATen's BLAS.

ATen runs a float32 ``F.linear`` on the CPU through MKL's sgemm. On AMD CPUs MKL does not use
AVX-512: on a Zen 5 EPYC its sgemm reaches about 90 GFLOP/s on one core where oneDNN's reaches
about 200 on the same shapes (docs/cpu.md, "Matrix products"), and the products are most of a
VMamba's time. oneDNN is part of every x86-64 build of PyTorch, so using it costs nothing to
install.

Engines (``set_linear_backend``, the ``linear_backend`` context manager, or ``$VMAMBA_LINEAR``):

* ``"onednn"``: the forward product and the input gradient run on
  ``torch.ops.mkldnn._linear_pointwise`` (the op Inductor uses for frozen linears) with the
  weight as it is (no packed copy to keep in sync; the input gradient reads its transposed
  view). The weight gradient, a reduction over every row of the batch, runs on oneDNN only
  where it measured faster than MKL: with AVX-512 and up to ``WEIGHT_GRAD_MAX_ROWS`` rows; else
  (more rows, or oneDNN held to AVX2) on ATen;
* ``"aten"``: ``torch.nn.functional.linear``;
* ``"auto"`` (the default): ``"onednn"`` on AMD x86-64 CPUs, where MKL runs its AVX2 code, when
  this PyTorch has the op and it passes a self-check; ``"aten"`` elsewhere (Intel CPUs run MKL's
  own best code; others were not measured). :func:`linear_info` says which and why.

Products followed by an activation (``linear(..., activation="gelu" | "silu")``) run as one
oneDNN call with the activation in the product's epilogue when no gradient is needed
(inference): one pass over the output instead of three (ATen's ``addmm`` first copies the bias
into the output, then the product, then the activation). ``"auto"`` does that on every x86-64
CPU, Intel ones included, where plain products stay on MKL: there the fused call measured
faster than MKL plus the separate pass on most shapes (docs/cpu.md, "Fused inference
products"). A residual add (``linear(..., residual=r)``) is fused the same way only where oneDNN
also runs the plain products (on Intel, MKL's product plus an in-place add was faster). Where a
gradient is needed, under ``"aten"``, and in every traced call the product and the pass are
composed, in place when no gradient is needed.

Either engine covers only float32 products of CPU tensors outside autocast; every other call
(float64, bf16/fp16, autocast, GPU, empty inputs) is ``F.linear``. Under ``torch.compile`` the
oneDNN engine is the custom op ``vmamba::onednn_linear`` (Inductor would otherwise call MKL's
sgemm for a plain ``linear``). ``torch.export`` / ONNX export, ``torch.jit.trace``, FLOP counting,
fake tensors and functorch transforms see ``F.linear``, so exported graphs hold ordinary
``linear`` nodes and FLOPs are counted. The two engines differ by float32 rounding only
(summation order).
"""
from __future__ import annotations

import contextlib
import os
import platform
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from ..utils import cpu_flags, cpu_info
from .kernel_common import eager_function, needs_grad, traced

LINEAR_BACKENDS = ("auto", "onednn", "aten")

_chosen: Optional[str] = None      # the setting: one of LINEAR_BACKENDS (None: $VMAMBA_LINEAR is invalid)
_setting_error = ""                # why $VMAMBA_LINEAR is invalid
_onednn_ok: Optional[bool] = None  # whether oneDNN's op exists and passed the self-check (None: not probed)
_onednn_why = ""                   # why not, when it did not
_amd = False                       # whether the CPU is an AMD x86-64 one
_x86 = False                       # whether the CPU is an x86-64 one (Intel or AMD)
_avx512 = False                    # whether oneDNN may use AVX-512 here (CPU flags, ONEDNN_MAX_CPU_ISA)

# Rows (M) up to which the weight gradient goes to oneDNN when it has AVX-512: on a Zen 5 EPYC
# oneDNN was 1.4-2.1x MKL there (M = 392..8192), but 0.5-0.9x at M = 25088 with K = 96, and
# 0.8-0.96x at most shapes when held to AVX2 (benchmarks/bench_dense.py).
WEIGHT_GRAD_MAX_ROWS = 8192


def _check_name(name) -> str:
    if not isinstance(name, str) or name.strip().lower() not in LINEAR_BACKENDS:
        raise ValueError(f"linear backend {name!r} is not one of {', '.join(map(repr, LINEAR_BACKENDS))}")
    return name.strip().lower()


def _setting() -> str:
    if _chosen is None:
        raise ValueError(f"$VMAMBA_LINEAR: {_setting_error}")
    return _chosen


# activation name -> (oneDNN post-op, its algorithm, the eager function)
_POST_OPS = {"gelu": ("gelu", "none", F.gelu), "silu": ("swish", "", F.silu)}
ACTIVATIONS = tuple(_POST_OPS)


def onednn_available() -> bool:
    """Whether oneDNN's linear op exists in this PyTorch and agrees with ``F.linear`` (checked
    once, on a small product with a transposed operand as the backward uses)."""
    global _onednn_ok, _onednn_why
    if _onednn_ok is None:
        _onednn_ok, _onednn_why = _probe_onednn()
    return _onednn_ok


def _probe_onednn() -> tuple[bool, str]:
    if not torch.backends.mkldnn.is_available():
        return False, "this PyTorch is built without oneDNN (torch.backends.mkldnn.is_available() is False)"
    op = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    if op is None:
        return False, "this PyTorch has no torch.ops.mkldnn._linear_pointwise"
    try:
        g = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(s, generator=g) for s in ((37, 24), (20, 24), (20,)))
        y, r = F.linear(x, w, b), torch.randn(37, 20, generator=g)
        close = lambda a, ref: torch.allclose(a, ref, rtol=1e-4, atol=1e-4)  # noqa: E731
        ok = (close(op(x, w, b, "none", [], ""), y)
              and close(op(x.t(), x.t(), None, "none", [], ""), x.t() @ x)
              and all(close(op(x, w, b, attr, [], algo), fn(y)) for attr, algo, fn in _POST_OPS.values())
              and close(op.binary(x, r, w, b, "add"), y + r))
    except Exception as e:  # an op that exists but fails on this CPU: ATen's product still works
        return False, f"oneDNN's linear failed its self-check: {type(e).__name__}: {e}"
    return (True, "") if ok else (False, "oneDNN's linear disagreed with F.linear in its self-check")


def set_linear_backend(name: str) -> None:
    """Choose the engine of CPU float32 products: ``"auto"``, ``"onednn"`` or ``"aten"``.

    ``"onednn"`` raises ``RuntimeError`` when oneDNN's op is missing or fails its self-check
    (``"auto"`` would use ``"aten"`` there)."""
    global _chosen
    name = _check_name(name)
    if name == "onednn" and not onednn_available():
        raise RuntimeError(f"linear backend 'onednn' is not usable here: {_onednn_why}")
    _chosen = name


@contextlib.contextmanager
def linear_backend(name: str) -> Iterator[None]:
    """``set_linear_backend(name)`` for the duration of a ``with`` block (for A/B comparisons)."""
    global _chosen
    before = _chosen  # may be None (an invalid $VMAMBA_LINEAR), restored as it was
    set_linear_backend(name)
    try:
        yield
    finally:
        _chosen = before


def active_linear_backend() -> str:
    """The engine CPU float32 products use now: ``"onednn"`` or ``"aten"``."""
    setting = _setting()
    if setting == "onednn" and not onednn_available():
        raise RuntimeError(f"$VMAMBA_LINEAR=onednn, but oneDNN's linear is not usable here: {_onednn_why}")
    if setting == "auto":
        return "onednn" if _amd and onednn_available() else "aten"
    return setting


def fused_on_onednn() -> bool:
    """Whether inference products with an activation or a residual add run as one oneDNN call:
    under ``"onednn"``, and under ``"auto"`` on x86-64 CPUs where oneDNN's op is usable."""
    setting = _setting()
    if setting == "onednn":
        return active_linear_backend() == "onednn"
    return setting == "auto" and _x86 and onednn_available()


def _onednn_has_avx512() -> bool:
    """AVX-512 F/BW/DQ/VL on this CPU, and oneDNN not held below it by its environment."""
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").upper()
    allowed = not cap or cap in ("ALL", "DEFAULT") or "AVX512" in cap or "AVX10" in cap
    return allowed and {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= cpu_flags()


def linear_info() -> dict:
    """The setting, the engine it gives for CPU float32 products, whether oneDNN's op is usable,
    and the reason for the engine."""
    engine, setting = active_linear_backend(), _setting()
    if engine == "onednn":
        reason = "set to 'onednn'" if setting == "onednn" else "an AMD CPU, where MKL's sgemm runs its AVX2 code"
    elif setting == "aten":
        reason = "set to 'aten'"
    elif not _amd:
        reason = "not an AMD x86-64 CPU: ATen's BLAS (MKL on Intel) is kept"
    else:
        reason = _onednn_why
    return dict(setting=setting, engine=engine, onednn_available=onednn_available(), reason=reason,
                fused_inference=fused_on_onednn())


def _onednn_product(a: Tensor, w: Tensor, bias: Optional[Tensor]) -> Tensor:
    """``a @ w^T + bias`` for 2D ``a`` (M, K), ``w`` (N, K); either may be a transposed view."""
    return torch.ops.mkldnn._linear_pointwise(a, w, bias, "none", [], "")


def _weight_grad(gy: Tensor, x2d: Tensor) -> Tensor:
    """``gy^T @ x2d``, (N, M) @ (M, K), on whichever library was faster for such a product."""
    if _avx512 and gy.shape[0] <= WEIGHT_GRAD_MAX_ROWS:
        return _onednn_product(gy.t(), x2d.t(), None)
    return gy.t().mm(x2d)


def _setup(ctx, inputs, output):
    x2d, weight, bias = inputs
    ctx.save_for_backward(x2d, weight)
    ctx.has_bias = bias is not None


def _rules_backward(grad_input, grad_weight):
    """The backward of ``x2d @ weight^T + bias`` with the two products given: ``grad_input(gy,
    weight)`` (M, N) @ (N, K) and ``grad_weight(gy, x2d)`` (N, M) @ (M, K)."""
    def backward(ctx, gy):
        x2d, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        gx = grad_input(gy, weight) if need_x else None
        gw = grad_weight(gy, x2d) if need_w else None
        gb = gy.sum(0) if need_b and ctx.has_bias else None
        return gx, gw, gb

    return backward


def _grad_input(gy: Tensor, weight: Tensor) -> Tensor:
    return _onednn_product(gy, weight.t(), None)


# ``x2d @ weight^T + bias`` with the forward and input-gradient products on oneDNN (eager)
_OneDNNLinear = eager_function("_OneDNNLinear", lambda x2d, weight, bias: _onednn_product(x2d, weight, bias),
                               _setup, _rules_backward(_grad_input, _weight_grad))


# The engine as a torch.library op, for torch.compile: the graph keeps it as one call (with its
# input-gradient op in the backward graph) instead of a plain linear that Inductor sends to MKL.
# Same rules as the eager Function; the weight gradient is left to Inductor.
@torch.library.custom_op("vmamba::onednn_linear", mutates_args=(), device_types="cpu")
def _onednn_linear_op(x2d: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    return _onednn_product(x2d, weight, bias)


@_onednn_linear_op.register_fake
def _onednn_linear_fake(x2d, weight, bias):
    return x2d.new_empty((x2d.shape[0], weight.shape[0]))


@torch.library.custom_op("vmamba::onednn_linear_grad_input", mutates_args=(), device_types="cpu")
def _onednn_grad_input_op(gy: Tensor, weight: Tensor) -> Tensor:
    return _grad_input(gy, weight)


@_onednn_grad_input_op.register_fake
def _onednn_grad_input_fake(gy, weight):
    return gy.new_empty((gy.shape[0], weight.shape[1]))


_onednn_linear_op.register_autograd(
    _rules_backward(lambda gy, weight: torch.ops.vmamba.onednn_linear_grad_input(gy, weight),
                    lambda gy, x2d: gy.t().mm(x2d)),
    setup_context=_setup)


@register_flop_formula(torch.ops.vmamba.onednn_linear)
def _onednn_linear_flops(x_shape, w_shape, *args, **kwargs) -> int:
    return 2 * x_shape[0] * x_shape[1] * w_shape[0]


@register_flop_formula(torch.ops.vmamba.onednn_linear_grad_input)
def _onednn_grad_input_flops(gy_shape, w_shape, *args, **kwargs) -> int:
    return 2 * gy_shape[0] * gy_shape[1] * w_shape[1]


def _takes(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> bool:
    """Whether the call is a CPU float32 product the oneDNN engine covers."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and weight.device.type == "cpu" and weight.dim() == 2 and x.dim() >= 1 and x.numel() > 0
            and x.shape[-1] == weight.shape[1]
            and (bias is None or (bias.dtype == torch.float32 and bias.device.type == "cpu"
                                  and bias.shape == weight.shape[:1]))
            and not torch.is_autocast_enabled("cpu"))


def _plain_call() -> bool:
    """Whether this call is being compiled, exported or traced (then only ATen-level ops)."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, *, activation: Optional[str] = None,
           residual: Optional[Tensor] = None) -> Tensor:
    """``F.linear(x, weight, bias)``: x (..., K), weight (N, K), bias (N,) or None -> (..., N).

    With ``activation`` (``"gelu"``, exact, or ``"silu"``) the result is ``activation(F.linear(...))``;
    with ``residual`` (broadcastable to (..., N)) it is ``residual + F.linear(...)``; not both.

    CPU float32 products run on the engine :func:`active_linear_backend` names (under
    ``torch.compile`` as the op ``vmamba::onednn_linear``); everything else, and every call traced
    for export, FLOP counting or a functorch transform, is ``F.linear``. Where no gradient is
    needed and :func:`fused_on_onednn` holds, a product with an activation is one oneDNN call with
    the activation in its epilogue, and so is a product with a residual of the output's shape
    where oneDNN is also the engine of plain products. Otherwise the activation or the add is a
    separate pass, in place when no gradient is needed. Same values up to float32 rounding, same
    autograd."""
    if activation is not None and activation not in _POST_OPS:
        raise ValueError(f"linear: activation {activation!r} is not one of {', '.join(map(repr, ACTIVATIONS))}")
    if activation is not None and residual is not None:
        raise ValueError("linear: give an activation or a residual, not both")
    if activation is None and residual is None:
        return _linear(x, weight, bias)
    # eager and without gradients: the fused call, or else the pass in place on the fresh product
    inference = (not needs_grad(x, weight, bias, residual) and not _plain_call()
                 and not traced(x, weight, bias, residual))
    if inference and _takes(x, weight, bias) and fused_on_onednn():
        x2d = x.reshape(-1, x.shape[-1])
        out_shape = (*x.shape[:-1], weight.shape[0])
        if activation is not None:
            attr, algorithm, _ = _POST_OPS[activation]
            return torch.ops.mkldnn._linear_pointwise(x2d, weight, bias, attr, [], algorithm).view(out_shape)
        # the add only where oneDNN runs the plain products too: on Intel MKL's product plus an
        # in-place add measured faster than oneDNN's product with the add fused
        if (residual.shape == out_shape and residual.dtype == torch.float32
                and residual.device.type == "cpu" and active_linear_backend() == "onednn"):
            return torch.ops.mkldnn._linear_pointwise.binary(
                x2d, residual.reshape(-1, weight.shape[0]), weight, bias, "add").view(out_shape)
    y = _linear(x, weight, bias)
    if activation is not None:
        if not inference:
            return _POST_OPS[activation][2](y)
        return torch.ops.aten.gelu_(y) if activation == "gelu" else F.silu(y, inplace=True)
    if inference and residual.dtype == y.dtype and _broadcasts_to(residual.shape, y.shape):
        return y.add_(residual)
    return residual + y


def _broadcasts_to(shape, target) -> bool:
    """Whether ``shape`` broadcasts to ``target`` without enlarging it (``torch.broadcast_shapes``
    does the same through the symbolic-shape machinery, ~60 us a call: 1.8 ms per batch-1 forward)."""
    if len(shape) > len(target):
        return False
    return all(s == 1 or s == t for s, t in zip(reversed(shape), reversed(target)))


def _linear(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """The plain product on the active engine (see :func:`linear`)."""
    if not _takes(x, weight, bias) or active_linear_backend() != "onednn":
        return F.linear(x, weight, bias)
    compiling = torch.compiler.is_compiling()
    if torch.compiler.is_exporting() if compiling else (torch.jit.is_tracing() or traced(x, weight, bias)):
        return F.linear(x, weight, bias)
    x2d = x.reshape(-1, x.shape[-1])
    if compiling:
        return torch.ops.vmamba.onednn_linear(x2d, weight, bias).view(*x.shape[:-1], weight.shape[0])
    if needs_grad(x, weight, bias):
        y = _OneDNNLinear.apply(x2d, weight, bias)
    else:
        y = _onednn_product(x2d, weight, bias)
    return y.view(*x.shape[:-1], weight.shape[0])


class Linear(torch.nn.Linear):
    """``torch.nn.Linear`` whose product is :func:`linear`: the same parameters, initialisation
    and state-dict keys, so checkpoints and ``isinstance(m, nn.Linear)`` checks are unchanged."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)


def convert_linears(model: torch.nn.Module) -> torch.nn.Module:
    """Make every plain ``nn.Linear`` of ``model`` a :class:`Linear` (in place; returns ``model``).

    Parameters, buffers and state-dict keys stay as they are; only the product's engine changes.
    For running another library's model (e.g. a timm backbone) on the same engine."""
    for m in model.modules():
        if type(m) is torch.nn.Linear:
            m.__class__ = Linear
    return model


def _resolve_at_import() -> None:
    """Read ``$VMAMBA_LINEAR`` and the CPU vendor, and probe oneDNN where ``auto`` or ``onednn``
    may use it (a few ms), once at import: never inside a ``torch.compile`` trace, which cannot
    read files or run the probe."""
    global _chosen, _setting_error, _amd, _x86, _avx512, _onednn_ok, _onednn_why
    try:
        _chosen = _check_name(os.environ.get("VMAMBA_LINEAR", "auto") or "auto")
    except ValueError as e:
        _chosen, _setting_error = None, str(e)
    _x86 = platform.machine().lower() in ("x86_64", "amd64")
    _amd = _x86 and cpu_info().get("vendor_id") == "AuthenticAMD"
    _avx512 = _onednn_has_avx512()
    if _chosen == "onednn" or (_chosen == "auto" and _x86):
        _onednn_ok, _onednn_why = _probe_onednn()


_resolve_at_import()

