"""The ``"triton"`` selective-scan backend: GPU kernels written in Triton, no build step.

``pip install triton`` (CUDA builds of torch depend on it) is all it needs: the kernels
(``triton_kernels.py``) are compiled by Triton on first use for the GPU at hand. Triton stays an
optional dependency: this module does not import it (only a launch does), and the backend lists
itself in ``available_backends()`` only where Triton imports and a CUDA GPU is present; ``"auto"``
then picks it for CUDA tensors (fp32, fp16, bf16). See docs/gpu.md.

How the kernels work (details in ``triton_kernels.py``): a program owns a block of channels of one
batch element and walks the sequence in chunks of a few steps; each chunk is a register tile
(steps, d_state, channels), channels over the GPU's lanes, scanned in parallel along time
(``tl.associative_scan``) with the state in fp32. The forward stores only the state at the end of
every chunk, (batch, D, L/chunk, N); the backward walks the chunks in reverse, recomputes each
chunk's states from the saved one and runs the adjoint recurrence, so nothing of size
batch * D * L * N is ever stored. Gradients summed over channels (dB, dC) or time (dA, dD,
d delta_bias) go to per-program slots summed by torch afterwards: no atomics, so results are
deterministic. Each d_state class has its own tile shape (``CONFIGS``; d_state 1, the v2 models:
128 channels per program). The backend's contract: CUDA tensors, fp32/fp16/bf16, d_state up to
``MAX_STATE``, no empty input; ``"auto"`` takes the ``"torch"`` backend for anything else.

Until they have run on the GPU at hand, the kernels are not trusted: before the backend's first
use on a device with a dtype, :func:`self_check` runs them on a small problem against the
``"torch"`` backend (forward and backward). If compiling, launching or the comparison fails,
``"auto"`` uses the next backend there, with one warning, and naming ``"triton"`` is an error.

Four ops are registered with ``torch.library`` (fake implementations, autograd formulas and FLOP
formulas included, so ``torch.compile`` traces through them without graph breaks):

* ``vmamba::selective_scan_triton`` (backward ``vmamba::selective_scan_triton_backward``);
* ``vmamba::cross_selective_scan_triton`` (backward ``..._backward``): SS2D's four scan orders
  of a (B, D, H, W) map read by the kernel itself (and the merge done in place), so the four
  direction copies of cross-scan / cross-merge are never made, forward or backward.

Testing without a GPU: with ``TRITON_INTERPRET=1`` in the environment, the ops also accept CPU
tensors and run the same kernels under Triton's interpreter (slowly: for small test shapes).
The variable may be set at any time: the module compiles a separate interpreted copy of the
kernels for it. ``VMAMBA_TRITON=0`` disables the backend.
"""
from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import threading
import warnings
from pathlib import Path
from typing import NamedTuple, Optional

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from .backends import register_backend
from .kernel_common import (
    MODE_IDS, check_scan_mode, cross_scan_op_flops, f32, needs_grad, pixel_map,
    register_cross_autograd, register_scan_autograd, scan_op_flops,
)

__all__ = [
    "selective_scan_triton", "cross_selective_scan_triton", "is_available", "triton_info", "self_check",
    "SCAN_OP", "CROSS_SCAN_OP", "MAX_STATE", "CONFIGS",
]

SCAN_OP = "vmamba::selective_scan_triton"
CROSS_SCAN_OP = "vmamba::cross_selective_scan_triton"
MAX_STATE = 32  # largest d_state the kernels take (the contract's max_d_state)
_KERNEL_SOURCE = Path(__file__).with_name("triton_kernels.py")
_MAX_GRID_YZ = 65535  # CUDA's limit on grid dimensions 1 and 2 (groups, batch)


class Config(NamedTuple):
    """Tile shape of the kernels for one d_state class.

    chunk: time steps per tile, and the spacing of the states saved for the backward.
    fwd_d / bwd_d: channels per program; fwd_warps / bwd_warps: warps per program.
    """
    chunk: int
    fwd_d: int
    fwd_warps: int
    bwd_d: int
    bwd_warps: int


# GPU tile shapes by padded d_state. A tile is (chunk, d_state, channels) with the channels over
# the lanes (and, where d_state is large, the warps over d_state), time and state inside each
# thread; sized from the register use and instruction counts of the kernels compiled for sm_90
# (no spills in the forward, at most small ones in the backward). chunk is also the spacing of the
# states saved for the backward: they take d_state / chunk times the memory of u in fp32.
# Starting points, to be tuned on the GPU: `benchmarks/bench_gpu.py --tune` times alternatives.
CONFIGS: dict[int, Config] = {
    1: Config(8, 128, 4, 128, 4),
    2: Config(8, 128, 4, 64, 4),
    4: Config(8, 64, 4, 64, 4),
    8: Config(16, 32, 4, 32, 8),
    16: Config(16, 32, 4, 32, 8),
    32: Config(8, 32, 4, 32, 8),
}
# Under the interpreter (CPU tensors): small tiles, so small test shapes cross chunk boundaries
# and hold several channel blocks per program.
INTERPRET_CONFIG = Config(8, 4, 1, 4, 1)

_lock = threading.Lock()
_kernel_modules: dict[bool, object] = {}
_state: dict = {}


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _env_flag(name: str, default: str = "0") -> bool:
    return os.environ.get(name, default).strip().lower() in ("1", "true", "yes", "on")


def _interpret_requested() -> bool:
    return _env_flag("TRITON_INTERPRET")


def _load_kernels(interpret: bool):
    """The kernels module, compiled for the GPU or (``interpret``) run by Triton's interpreter.

    Triton decides at ``@triton.jit`` time whether a kernel is interpreted (from the
    ``TRITON_INTERPRET`` setting), so each flavour is its own copy of the module, loaded with the
    setting forced and then restored.
    """
    mod = _kernel_modules.get(interpret)
    if mod is not None:
        return mod
    with _lock:
        mod = _kernel_modules.get(interpret)
        if mod is not None:
            return mod
        import triton  # noqa: F401  (ImportError here means: pip install triton)

        name = f"vmamba.ops._triton_kernels_{'interpreted' if interpret else 'compiled'}"
        spec = importlib.util.spec_from_file_location(name, _KERNEL_SOURCE)
        mod = importlib.util.module_from_spec(spec)
        knobs = getattr(triton, "knobs", None)
        if knobs is not None and hasattr(knobs.runtime, "scope"):  # triton >= 3.4
            with knobs.runtime.scope():
                knobs.runtime.interpret = interpret
                spec.loader.exec_module(mod)
        else:  # older triton reads the environment variable when a kernel is decorated
            old = os.environ.get("TRITON_INTERPRET")
            os.environ["TRITON_INTERPRET"] = "1" if interpret else "0"
            try:
                spec.loader.exec_module(mod)
            finally:
                if old is None:
                    os.environ.pop("TRITON_INTERPRET", None)
                else:
                    os.environ["TRITON_INTERPRET"] = old
        _kernel_modules[interpret] = mod
        return mod


def is_available() -> bool:
    """Whether the backend runs here: Triton importable, a CUDA GPU present, not disabled.

    Cheap after the first call; never imports Triton on a machine without a GPU.
    """
    if "available" in _state:
        return _state["available"]
    ok = False
    if not _env_flag("VMAMBA_TRITON", "1"):
        _state["error"] = "disabled by VMAMBA_TRITON=0"
    elif not torch.cuda.is_available():
        _state["error"] = "no CUDA GPU"
    elif importlib.util.find_spec("triton") is None:
        _state["error"] = "triton is not installed (pip install triton)"
    else:
        try:
            _load_kernels(False)
            ok = True
        except Exception as e:  # noqa: BLE001 - a broken triton install must not break vmamba
            _state["error"] = f"{type(e).__name__}: {e}"
            warnings.warn(f"vmamba: the Triton scan kernels cannot be loaded ({_state['error']}); "
                          "the 'torch' backend is used on GPU instead", RuntimeWarning, stacklevel=2)
    _state["available"] = ok
    return ok


def triton_info() -> dict:
    """Availability, the Triton version, and why the backend is unavailable (if it is)."""
    info = {"available": is_available(), "error": _state.get("error")}
    if importlib.util.find_spec("triton") is not None and (info["available"] or _interpret_requested()):
        import triton
        info["triton"] = triton.__version__
    return info


def _kernels_for(t: Tensor):
    """The kernels module for tensors on ``t``'s device (interpreted on CPU, or when asked)."""
    interpret = _interpret_requested()
    if t.device.type != "cuda" and not interpret:
        raise RuntimeError(
            f"vmamba triton scan: the kernels run on CUDA tensors, got {t.device.type} tensors "
            "(CPU tensors run only under Triton's interpreter, for tests: set TRITON_INTERPRET=1)")
    return _load_kernels(interpret)


def config_for(d_state: int, device_type: str) -> Config:
    """The tile shape used for this d_state on this device type ("cuda", or "cpu": interpreter)."""
    if device_type != "cuda":
        return INTERPRET_CONFIG
    return CONFIGS[_next_pow2(d_state)]


def _n_chunks(length: int, chunk: int) -> int:
    return max(1, -(-length // chunk))


def _n_split(batch: int, groups: int, n_blocks: int, device: torch.device) -> int:
    """Programs per (batch, group) in the backward: enough for the GPU to be busy, few enough
    that the per-program dB/dC partials (batch, G, n_split, N, L) stay small."""
    if device.type != "cuda":
        return min(2, n_blocks)
    key = ("sms", device.index)
    if key not in _state:
        _state[key] = torch.cuda.get_device_properties(device).multi_processor_count
    sms = _state[key]
    return max(1, min(n_blocks, math.ceil(8 * sms / max(1, batch * groups))))


def _check_launch(batch: int, groups: int, *tensors: Optional[Tensor]) -> None:
    """Grid limits, and offsets inside one batch element that fit the kernels' 32-bit arithmetic."""
    if batch > _MAX_GRID_YZ or groups > _MAX_GRID_YZ:
        raise ValueError(f"vmamba triton scan: batch ({batch}) and groups ({groups}) must be at most {_MAX_GRID_YZ}")
    for t in tensors:
        if t is not None and sum((s - 1) * abs(st) for s, st in zip(t.shape[1:], t.stride()[1:])) >= 2 ** 31:
            raise ValueError(f"vmamba triton scan: a tensor of shape {tuple(t.shape)} holds more than 2**31 "
                             "values per batch element; split the channels or the batch")


def _on_device(t: Tensor):
    """Triton launches on the current CUDA device: make it t's (a no-op context on CPU)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def _flags(N, D, delta_bias, z, delta_softplus, kdir, mode_id):
    """The kernels' compile-time switches."""
    return dict(N=N, BLOCK_N=_next_pow2(N), KDIR=kdir, MODE=mode_id, HAS_D=D is not None,
                HAS_BIAS=delta_bias is not None, HAS_Z=z is not None, SOFTPLUS=bool(delta_softplus))


def _forward(kern, u, su, delta, sd, A, B, sB, C, sC, D, delta_bias, z, sz, y, sy, *, groups, dg, L, H, W,
             delta_softplus, save, kdir, mode_id):
    """Launch the forward kernel; returns (last, states). u: (batch, channels, ...) as su says."""
    batch, n = u.shape[0], A.shape[1]
    kd = A.shape[0]
    cfg = config_for(n, u.device.type)
    nc = _n_chunks(L, cfg.chunk)
    last = u.new_empty((batch, kd, n), dtype=torch.float32)
    states = u.new_empty((batch, kd, nc, n) if save else (0,), dtype=torch.float32)
    _check_launch(batch, groups, u, delta, B, C, z, y, states)
    A32, D32, b32 = f32(A), f32(D), f32(delta_bias)
    dummy = A32
    grid = (-(-dg // cfg.fwd_d), groups, batch)
    with _on_device(u):
        kern.scan_fwd_kernel[grid](
            u, delta, A32, B, C, D32 if D32 is not None else dummy, b32 if b32 is not None else dummy,
            z if z is not None else u, y, last, states if save else last,
            L, dg, kd, H, W, nc, *su, *sd, *sB, *sC, *sz, *sy,
            BLOCK_D=cfg.fwd_d, T=cfg.chunk, SAVE=bool(save), num_warps=cfg.fwd_warps,
            **_flags(n, D, delta_bias, z, delta_softplus, kdir, mode_id),
        )
    return last, states


def _backward(kern, dy, sy, dlast, u, su, delta, sd, A, B, sB, C, sC, D, delta_bias, z, sz, states,
              du, sdu, ddelta, sdd, dz, sdz, *, groups, dg, L, H, W, delta_softplus, kdir, mode_id):
    """Launch the backward kernel (du, ddelta, dz written in place); returns fp32
    (dA (KD, N), dB (batch, GT, N, L), dC, dD (KD,), dbias (KD,)), GT = groups * kdir."""
    batch, n = u.shape[0], A.shape[1]
    kd = A.shape[0]
    cfg = config_for(n, u.device.type)
    nc = _n_chunks(L, cfg.chunk)
    if states.shape != (batch, kd, nc, n):
        raise RuntimeError(f"vmamba triton scan: saved states have shape {tuple(states.shape)}, expected "
                           f"{(batch, kd, nc, n)} (the forward ran without saving them, or with another chunk size)")
    gt = groups * kdir
    n_blocks = -(-dg // cfg.bwd_d)
    n_split = _n_split(batch, groups, n_blocks, u.device)
    fp32 = dict(dtype=torch.float32, device=u.device)
    gc = (dlast.float().contiguous().clone() if dlast is not None else torch.zeros((batch, kd, n), **fp32))
    dA = torch.zeros((batch, kd, n), **fp32)
    dD = torch.zeros((batch, kd), **fp32)
    db = torch.zeros((batch, kd), **fp32)
    dB = torch.empty((batch, gt, n_split, n, L), **fp32)
    dC = torch.empty((batch, gt, n_split, n, L), **fp32)
    A32, D32, b32 = f32(A), f32(D), f32(delta_bias)
    dummy = A32
    _check_launch(batch, groups, u, delta, B, C, z, dy, du, ddelta, dz, states, dB)
    grid = (n_split, groups, batch)
    with _on_device(u):
        kern.scan_bwd_kernel[grid](
            u, delta, A32, B, C, D32 if D32 is not None else dummy, b32 if b32 is not None else dummy,
            z if z is not None else u, dy, states, gc, du, ddelta, dz if dz is not None else du, dA, dD, db, dB, dC,
            L, dg, kd, gt, H, W, nc, n_split, *su, *sd, *sB, *sC, *sz, *sy, *sdu, *sdd, *sdz,
            BLOCK_D=cfg.bwd_d, T=cfg.chunk, num_warps=cfg.bwd_warps,
            **_flags(n, D, delta_bias, z, delta_softplus, kdir, mode_id),
        )
    return dA.sum(0), dB.sum(2), dC.sum(2), dD.sum(0), db.sum(0)


_NO_STRIDES = (0, 0, 0)


# ----------------------------------------------------------------------------- plain scan op

def _plain_strides(u, delta, B, C, z):
    su = (u.stride(0), u.stride(1), u.stride(2))
    sd = (delta.stride(0), 0, delta.stride(1), delta.stride(2))
    sz = (z.stride(0), z.stride(1), z.stride(2)) if z is not None else _NO_STRIDES
    return su, sd, tuple(B.stride()), tuple(C.stride()), sz


@torch.library.custom_op(SCAN_OP, mutates_args=())
def _scan_op(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
             delta_bias: Optional[Tensor], z: Optional[Tensor], delta_softplus: bool, save_states: bool,
             out_float: bool) -> tuple[Tensor, Tensor, Tensor]:
    """y (batch, D, L) (fp32 if out_float else u's dtype), last state (batch, D, N) fp32 and the
    states saved for the backward (batch, D, n_chunks, N) fp32 (empty unless save_states).
    B, C: (batch, G, N, L)."""
    kern = _kernels_for(u)
    batch, dch, L = u.shape
    groups = B.shape[1]
    y = u.new_empty((batch, dch, L), dtype=torch.float32 if out_float else u.dtype)
    su, sd, sB, sC, sz = _plain_strides(u, delta, B, C, z)
    last, states = _forward(kern, u, su, delta, sd, A, B, sB, C, sC, D, delta_bias, z, sz, y, tuple(y.stride()),
                            groups=groups, dg=dch // groups, L=L, H=1, W=L, delta_softplus=delta_softplus,
                            save=save_states, kdir=1, mode_id=0)
    return y, last, states


@_scan_op.register_fake
def _scan_op_fake(u, delta, A, B, C, D, delta_bias, z, delta_softplus, save_states, out_float):
    b, d, length = u.shape
    n = A.shape[1]
    nc = _n_chunks(length, config_for(n, u.device.type).chunk)
    y = u.new_empty((b, d, length), dtype=torch.float32 if out_float else u.dtype)
    last = u.new_empty((b, d, n), dtype=torch.float32)
    states = u.new_empty((b, d, nc, n) if save_states else (0,), dtype=torch.float32)
    return y, last, states


@torch.library.custom_op(SCAN_OP + "_backward", mutates_args=())
def _scan_bwd_op(dy: Tensor, dlast: Optional[Tensor], u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                 D: Optional[Tensor], delta_bias: Optional[Tensor], z: Optional[Tensor], states: Tensor,
                 delta_softplus: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of u, delta, z (in their dtypes; dz empty without z) and, in fp32, of A (D, N),
    B, C (batch, G, N, L), D and delta_bias (D,)."""
    kern = _kernels_for(u)
    batch, dch, L = u.shape
    groups = B.shape[1]
    du = u.new_empty((batch, dch, L))
    ddelta = delta.new_empty((batch, dch, L))
    dz = z.new_empty((batch, dch, L)) if z is not None else None
    su, sd, sB, sC, sz = _plain_strides(u, delta, B, C, z)
    sy = tuple(dy.stride())
    dA, dB, dC, dD, db = _backward(
        kern, dy, sy, dlast, u, su, delta, sd, A, B, sB, C, sC, D, delta_bias, z, sz, states,
        du, tuple(du.stride()), ddelta, (ddelta.stride(0), 0, ddelta.stride(1), ddelta.stride(2)),
        dz, tuple(dz.stride()) if dz is not None else _NO_STRIDES,
        groups=groups, dg=dch // groups, L=L, H=1, W=L, delta_softplus=delta_softplus, kdir=1, mode_id=0)
    return du, ddelta, dA, dB, dC, dD, db, dz if dz is not None else u.new_empty((0,))


@_scan_bwd_op.register_fake
def _scan_bwd_fake(dy, dlast, u, delta, A, B, C, D, delta_bias, z, states, delta_softplus):
    f = torch.float32
    d = u.shape[1]
    return (u.new_empty(u.shape), delta.new_empty(u.shape), A.new_empty(A.shape, dtype=f),
            B.new_empty(B.shape, dtype=f), C.new_empty(C.shape, dtype=f), u.new_empty((d,), dtype=f),
            u.new_empty((d,), dtype=f), z.new_empty(u.shape) if z is not None else u.new_empty((0,)))


register_scan_autograd(_scan_op, _scan_bwd_op, "triton scan")


def selective_scan_triton(
    u, delta, A, B, C, *, D=None, delta_bias=None, delta_softplus=False, z=None,
    return_last_state=False, out_float=False,
):
    """The ``"triton"`` backend: same signature, shapes and semantics as ``selective_scan``.

    Args:
        u, delta: (batch, D, L); fp32, fp16 or bf16, any strides.
        A: (D, N). B, C: (batch, G, N, L), G dividing D (the public op makes 3-D ones 4-D).
        D, delta_bias: (D,) or None. z: (batch, D, L) or None.
        delta_softplus, return_last_state, out_float: as in ``selective_scan``.

    Returns:
        y (batch, D, L), fp32 if ``out_float`` else u's dtype; with ``return_last_state`` also the
        last state (batch, D, N) in fp32. The public op calls it only inside the backend's contract
        (d_state at most ``MAX_STATE``, no float64, no empty input).
    """
    save = needs_grad(u, delta, A, B, C, D, delta_bias, z)
    y, last, _ = _scan_op(u, delta, A, B, C, D, delta_bias, z, bool(delta_softplus), save, bool(out_float))
    return (y, last) if return_last_state else y


# ----------------------------------------------------------------------------- fused cross scan op

def _cross_strides(x, delta, B, C):
    """Strides of the pixel-layout inputs with (H, W) flattened to one pixel stride."""
    su = (x.stride(0), x.stride(1), x.stride(3))
    sd = (delta.stride(0), delta.stride(1), delta.stride(2), delta.stride(4))
    sB = (B.stride(0), B.stride(1), B.stride(2), B.stride(4))
    sC = (C.stride(0), C.stride(1), C.stride(2), C.stride(4))
    return su, sd, sB, sC


@torch.library.custom_op(CROSS_SCAN_OP, mutates_args=())
def _cross_op(x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
              delta_bias: Optional[Tensor], delta_softplus: bool, mode: str,
              save_states: bool) -> tuple[Tensor, Tensor]:
    """Merged y (batch, D, H, W) fp32 and the saved states (batch, 4*D, n_chunks, N) fp32.
    x (batch, D, H, W); delta (batch, 4, D, H, W); B, C (batch, 4, N, H, W); A (4*D, N)."""
    kern = _kernels_for(x)
    x, delta, B, C = pixel_map(x), pixel_map(delta), pixel_map(B), pixel_map(C)
    b, d, h, w = x.shape
    y = x.new_empty((b, d, h, w), dtype=torch.float32)
    su, sd, sB, sC = _cross_strides(x, delta, B, C)
    _, states = _forward(kern, x, su, delta, sd, A, B, sB, C, sC, D, delta_bias, None, _NO_STRIDES,
                         y, (d * h * w, h * w, 1), groups=1, dg=d, L=h * w, H=h, W=w,
                         delta_softplus=delta_softplus, save=save_states, kdir=4, mode_id=MODE_IDS[mode])
    return y, states


@_cross_op.register_fake
def _cross_op_fake(x, delta, A, B, C, D, delta_bias, delta_softplus, mode, save_states):
    b, d, h, w = x.shape
    n = A.shape[1]
    nc = _n_chunks(h * w, config_for(n, x.device.type).chunk)
    y = x.new_empty((b, d, h, w), dtype=torch.float32)
    states = x.new_empty((b, 4 * d, nc, n) if save_states else (0,), dtype=torch.float32)
    return y, states


@torch.library.custom_op(CROSS_SCAN_OP + "_backward", mutates_args=())
def _cross_bwd_op(dy: Tensor, x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                  delta_bias: Optional[Tensor], states: Tensor, delta_softplus: bool,
                  mode: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of x (fp32), delta (its dtype), and in fp32 of A, B, C (pixel layout), D, delta_bias."""
    kern = _kernels_for(x)
    x, delta, B, C, dy = pixel_map(x), pixel_map(delta), pixel_map(B), pixel_map(C), pixel_map(dy)
    b, d, h, w = x.shape
    L = h * w
    dx = x.new_empty((b, d, h, w), dtype=torch.float32)
    ddelta = delta.new_empty((b, 4, d, h, w))
    su, sd, sB, sC = _cross_strides(x, delta, B, C)
    sy = (dy.stride(0), dy.stride(1), dy.stride(3))
    dA, dB, dC, dD, db = _backward(
        kern, dy, sy, None, x, su, delta, sd, A, B, sB, C, sC, D, delta_bias, None, _NO_STRIDES, states,
        dx, (d * L, L, 1), ddelta, (4 * d * L, d * L, L, 1), None, _NO_STRIDES,
        groups=1, dg=d, L=L, H=h, W=w, delta_softplus=delta_softplus, kdir=4, mode_id=MODE_IDS[mode])
    n = A.shape[1]
    return dx, ddelta, dA, dB.reshape(b, 4, n, h, w), dC.reshape(b, 4, n, h, w), dD, db


@_cross_bwd_op.register_fake
def _cross_bwd_fake(dy, x, delta, A, B, C, D, delta_bias, states, delta_softplus, mode):
    f = torch.float32
    kd = A.shape[0]
    return (x.new_empty(x.shape, dtype=f), delta.new_empty(delta.shape), A.new_empty(A.shape, dtype=f),
            B.new_empty(B.shape, dtype=f), C.new_empty(C.shape, dtype=f), x.new_empty((kd,), dtype=f),
            x.new_empty((kd,), dtype=f))


register_cross_autograd(_cross_op, _cross_bwd_op, "triton cross scan")


def cross_selective_scan_triton(x, delta, A, B, C, *, D=None, delta_bias=None, delta_softplus=False,
                                mode="cross2d", out_float=False):
    """Fused ``cross_selective_scan`` (the backend's ``cross_fn``), same signature and shapes:
    x (batch, D, H, W); delta (batch, 4, D, H, W); A (4*D, N); B, C (batch, 4, N, H, W);
    D, delta_bias (4*D,). Returns y (batch, D, H, W), fp32 if ``out_float`` else x's dtype.

    The kernel walks the four scan orders of ``mode`` on the pixel-layout inputs and accumulates
    the merged output itself. Called, like the plain op, only inside the backend's contract.
    """
    check_scan_mode(mode)
    save = needs_grad(x, delta, A, B, C, D, delta_bias)
    y, _ = _cross_op(x, delta, A, B, C, D, delta_bias, bool(delta_softplus), mode, save)
    return y if out_float else y.to(x.dtype)


# FLOP formulas, so torch.utils.flop_counter sees the kernels.
register_flop_formula(torch.ops.vmamba.selective_scan_triton)(scan_op_flops)
register_flop_formula(torch.ops.vmamba.cross_selective_scan_triton)(cross_scan_op_flops)


# ----------------------------------------------------------------------------- self-check

# Largest max|kernel - torch backend| / max|torch backend| that passes, by input dtype: fp32 leaves
# room for the GPU's approximate exp2; half-precision gradients are rounded to their dtype.
SELF_CHECK_TOL = {torch.float32: 1e-3, torch.float16: 1e-2, torch.bfloat16: 3e-2}


def _rel_err(a: Tensor, b: Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / (b.double().abs().max() + 1e-6)).item()


def _check_problem(device: torch.device, dtype: torch.dtype):
    """A small fused cross-scan problem (d_state 16 on a GPU) and a plain one (d_state 1, gated),
    fixed seed; both several chunks long. Tiny under the interpreter (CPU), which is slow."""
    g = torch.Generator().manual_seed(0)

    def r(*shape, scale=1.0, cast=True):
        t = torch.randn(*shape, generator=g) * scale
        return t.to(device, dtype if cast else torch.float32)

    b, d, h, w, n, length = (2, 8, 5, 7, 16, 37) if device.type == "cuda" else (1, 4, 3, 4, 2, 19)
    cross = dict(x=r(b, d, h, w), delta=r(b, 4, d, h, w, scale=0.5), A=-(r(4 * d, n, cast=False).abs() + 0.1),
                 B=r(b, 4, n, h, w), C=r(b, 4, n, h, w), D=r(4 * d, cast=False),
                 delta_bias=r(4 * d, scale=0.3, cast=False))
    plain = dict(u=r(b, d, length), delta=r(b, d, length, scale=0.5), A=-(r(d, 1, cast=False).abs() + 0.1),
                 B=r(b, 2, 1, length), C=r(b, 2, 1, length), D=r(d, cast=False), z=r(b, d, length))
    return cross, plain


def self_check(device: torch.device, dtype: torch.dtype) -> str | None:
    """Run the kernels on a small problem on ``device`` with ``dtype`` inputs against the
    ``"torch"`` backend: the fused cross scan forward and backward (d_state 16) and the plain gated
    scan forward (d_state 1). Returns None when every output and gradient agrees within
    :data:`SELF_CHECK_TOL`, else what failed (an exception from compiling or launching, or the
    largest disagreement). The registry runs it once per device and dtype, before first use.
    """
    from torch.utils._python_dispatch import _disable_current_modes

    # The public ops give the "torch" backend's answer (imported late: the package imports this module).
    from .cross_selective_scan import cross_selective_scan
    from .selective_scan import selective_scan

    tol = SELF_CHECK_TOL.get(dtype, 1e-3)
    # Real tensors and autograd even when called while a model is traced or run under no_grad.
    with _disable_current_modes(), torch.inference_mode(False), torch.enable_grad(), \
            torch.autocast(device.type, enabled=False):
        try:
            cross, plain = _check_problem(device, dtype)
            leaves = {k: v.requires_grad_() for k, v in cross.items()}
            kw = dict(delta_softplus=True, out_float=True)
            y = cross_selective_scan_triton(*[leaves[k] for k in ("x", "delta", "A", "B", "C")], D=leaves["D"],
                                            delta_bias=leaves["delta_bias"], **kw)
            y_ref = cross_selective_scan(*[leaves[k] for k in ("x", "delta", "A", "B", "C")], D=leaves["D"],
                                         delta_bias=leaves["delta_bias"], backend="torch", **kw)
            gy = torch.randn(y_ref.shape, generator=torch.Generator().manual_seed(1)).to(device)
            grads = torch.autograd.grad((y * gy).sum(), list(leaves.values()))
            grads_ref = torch.autograd.grad((y_ref * gy).sum(), list(leaves.values()))
            p = plain
            y_plain = selective_scan_triton(p["u"], p["delta"], p["A"], p["B"], p["C"], D=p["D"], z=p["z"], **kw)
            y_plain_ref = selective_scan(p["u"], p["delta"], p["A"], p["B"], p["C"], D=p["D"], z=p["z"],
                                         backend="torch", **kw)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        except Exception as e:  # noqa: BLE001 - a compile or launch error is a failed check
            return f"{type(e).__name__}: {str(e).strip()[:400]}"
    results = [("cross-scan y", y, y_ref), ("plain scan y", y_plain, y_plain_ref)]
    results += [(f"cross-scan d{name}", a, r) for name, a, r in zip(leaves, grads, grads_ref)]
    for what, got, want in results:
        err = _rel_err(got, want)
        if not err <= tol:  # also catches NaN
            return f"{what} differs from the 'torch' backend by {err:.3g} (relative; allowed {tol:g})"
    return None


register_backend(
    "triton", selective_scan_triton, devices=("cuda",), dtypes=(torch.float32, torch.bfloat16, torch.float16),
    max_d_state=MAX_STATE, empty_inputs=False, priority=20, is_available=is_available, self_check=self_check,
    cross_fn=cross_selective_scan_triton,
    description="Triton GPU kernels (chunked parallel scan, fp32 state), compiled by Triton on first use",
)
