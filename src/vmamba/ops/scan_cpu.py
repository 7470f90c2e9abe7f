"""The ``"cpu"`` selective-scan backend: a fused C++ kernel, compiled on first use.

The kernel (``cpu/selective_scan.cpp``, shipped inside the package) keeps the state in SIMD
registers, vectorised over channels (16 per vector with AVX-512), runs parallel over
(batch, channel block) with torch's intra-op threads (``torch.set_num_threads``) and sequential in
time, in fp32 arithmetic for fp32/bf16/fp16 inputs. Its backward recomputes the states of each
chunk of 32 steps from the state saved at the chunk's start (a reverse scan), so training memory
stays O(batch * D * L) instead of storing every state.

Build: ``torch.utils.cpp_extension.load`` compiles the source the first time the backend is asked
for (``is_available()``, i.e. the first ``"auto"`` selection on a CPU tensor), with ``-O3`` and
OpenMP for one instruction set chosen from the CPU at run time (``avx512``, ``avx2`` or
``generic``; ``$VMAMBA_CPU_ISA`` forces one), into a cache directory keyed on the source, the
instruction set, torch, Python and the CPU (``$VMAMBA_CACHE`` or ``~/.cache/vmamba``); later
processes load the cached build in milliseconds. The same build carries the depthwise 3x3
convolution that ``vmamba.ops.Conv2d`` runs on small channel-last maps (``cpu/depthwise_conv.cpp``)
and the LayerNorm of ``vmamba.ops.LayerNorm`` (``cpu/layer_norm.cpp``); the sources share
``cpu/vec.h``. The largest d_state (``MAX_STATE``) is defined
here only and compiled in (``-DVMAMBA_MAXN``). Where no working compiler is present, one warning is
issued and the backend reports itself unavailable, so ``"auto"`` uses the ``"torch"`` backend
instead. Importing vmamba never compiles anything. ``VMAMBA_CPU_KERNEL=0`` disables the kernel.

Two ops are registered with ``torch.library`` (fake implementations and autograd formulas
included, so ``torch.compile`` and FLOP counters see them):

* ``vmamba::selective_scan_cpu`` (backward: ``vmamba::selective_scan_cpu_backward``);
* ``vmamba::cross_selective_scan_cpu`` (backward: ``vmamba::cross_selective_scan_cpu_backward``):
  the four scan orders of a (B, D, H, W) map read directly by the kernel and merged in place,
  so the four direction copies of cross-scan are never materialised.

Eager calls on plain tensors run the same Python functions through an ``autograd.Function`` with
the same autograd rules instead (``kernel_common.traced``): the ops' Python wrapper imports
``torch._dynamo`` on its first call, about 70 MB of resident memory and a second that a model
which is never compiled should not pay. Under ``torch.compile``/``export``, FLOP counting, fake
tensors and functorch transforms the calls go through the ops.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import sys
import threading
import warnings
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

try:  # OS file locks for the build cache
    import fcntl
    msvcrt = None
except ImportError:  # Windows
    fcntl = None
    import msvcrt

from ..utils import cpu_flags, cpu_info
from .backends import register_backend
from .kernel_common import (
    MODE_IDS, check_scan_mode, cross_scan_op_flops, f32, kernel_output, needs_grad, pixel_map, project_steps,
    direction_rows, register_cross_autograd, register_scan_autograd, scan_op_flops, traced,
)

__all__ = [
    "selective_scan_cpu", "cross_selective_scan_cpu", "is_available", "load_extension",
    "SCAN_OP", "CROSS_SCAN_OP", "MAX_STATE", "ISAS", "selected_isa", "supported_isas",
]

SCAN_OP = "vmamba::selective_scan_cpu"
CROSS_SCAN_OP = "vmamba::cross_selective_scan_cpu"
MAX_STATE = 64  # largest d_state the kernel takes (compiled in as VMAMBA_MAXN); larger ones go to "torch"
MAX_RANK = 64   # largest step-size rank the kernel projects itself (its MAXR); larger ones are projected first
_CPU_DIR = Path(__file__).parent / "cpu"
_SOURCES = tuple(_CPU_DIR / f for f in ("selective_scan.cpp", "depthwise_conv.cpp", "layer_norm.cpp"))  # compiled
_FILES = _SOURCES + (_CPU_DIR / "vec.h",)  # copied into the build directory, part of its key

_lock = threading.Lock()
_ext = None
_ext_failed = False
_ext_info: dict = {}


ISAS = ("avx512", "avx2", "generic")
_X86 = ("x86_64", "amd64", "i686", "i386", "x86")
# What each x86 instruction-set build needs from the CPU (/proc/cpuinfo flag names) and the
# compiler flags that enable exactly that much: never -march=native, so a forced build does not
# pick up more than it asked for (an "avx2" build on an AVX-512 CPU stays 8 lanes wide).
_X86_ISA = {
    "avx512": (("avx512f", "avx512bw", "avx512dq", "avx512vl", "avx2", "fma", "f16c"),
               ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx2", "-mfma", "-mf16c"]),
    "avx2": (("avx2", "fma", "f16c"), ["-mavx2", "-mfma", "-mf16c"]),
}


def supported_isas() -> list:
    """The kernel builds this CPU can run, best first (always ending with ``"generic"``)."""
    if platform.machine().lower() not in _X86:
        return ["generic"]  # ARM & co.: NEON/SVE come from the compiler's auto-vectorisation
    flags = cpu_flags()
    if flags:
        found = [isa for isa, (need, _) in _X86_ISA.items() if all(f in flags for f in need)]
    else:  # no /proc/cpuinfo: ask ATen what it dispatches to on this CPU
        cap = torch.backends.cpu.get_cpu_capability().upper()
        found = ["avx512", "avx2"] if cap.startswith("AVX512") else ["avx2"] if cap == "AVX2" else []
    return found + ["generic"]


def selected_isa() -> str:
    """The kernel build to use: ``$VMAMBA_CPU_ISA`` if set (``avx512``, ``avx2`` or ``generic``),
    else the best one this CPU supports."""
    forced = os.environ.get("VMAMBA_CPU_ISA", "").strip().lower()
    supported = supported_isas()
    if not forced or forced == "auto":
        return supported[0]
    if forced not in ISAS:
        raise ValueError(f"VMAMBA_CPU_ISA={forced!r} is not a kernel build; use one of {', '.join(ISAS)} "
                         "(or leave it unset to choose from the CPU)")
    if forced not in supported:
        raise ValueError(f"VMAMBA_CPU_ISA={forced!r}: this CPU cannot run that build (it supports "
                         f"{', '.join(supported)})")
    return forced


def _cpu_signature() -> str:
    """A string that changes when the build would not run on (or be tuned for) this CPU."""
    return "|".join([platform.system(), platform.machine(), platform.processor(), " ".join(sorted(cpu_flags())),
                     cpu_info().get("model name", "")])


def cache_dir() -> Path:
    """Where builds are cached: ``$VMAMBA_CACHE`` or ``~/.cache/vmamba`` (``$XDG_CACHE_HOME``)."""
    root = os.environ.get("VMAMBA_CACHE")
    if not root:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
                            "vmamba")
    return Path(root) / "cpu_ext"


def _build_key(isa: str) -> str:
    # The torch installation's path is part of the key: a build's ninja file names that torch's
    # include and library paths, so two virtual environments sharing one cache would otherwise
    # rebuild each other's build (about 20 s) every time the other one had loaded it.
    h = hashlib.sha256()
    for f in _FILES:
        h.update(f.read_bytes())
    for part in (torch.__version__, os.path.dirname(torch.__file__), sys.version, _cpu_signature(), isa,
                 repr(build_attempts(isa))):
        h.update(part.encode())
    return h.hexdigest()[:16]


def build_attempts(isa: str) -> list:
    """(cflags, ldflags) for building the kernel for ``isa``, fastest first; the first that builds wins.

    ``-DVMAMBA_MAXN`` hands the kernel its largest d_state (``MAX_STATE``, defined only here)."""
    if isa not in ISAS:
        raise ValueError(f"unknown kernel build {isa!r}; use one of {', '.join(ISAS)}")
    defines = [f"-DVMAMBA_MAXN={MAX_STATE}"]
    if sys.platform == "win32":
        arch = {"avx512": ["/arch:AVX512"], "avx2": ["/arch:AVX2"]}.get(isa, [])
        return [(["/O2", "/openmp"] + arch + [d.replace("-D", "/D") for d in defines], [])]
    base = ["-O3", "-ffp-contract=fast", "-fno-math-errno"] + defines
    if platform.machine().lower() in _X86:
        target = _X86_ISA[isa][1] + ["-mtune=native"] if isa in _X86_ISA else []  # generic: the baseline (SSE2)
        fallback = _X86_ISA[isa][1] if isa in _X86_ISA else []
    else:
        target, fallback = ["-mcpu=native"], []  # not x86: the compiler vectorises for this CPU (NEON, SVE)
    attempts = [(base + target + ["-fopenmp"], ["-fopenmp"]), (base + target, []), (base + fallback, [])]
    return [a for i, a in enumerate(attempts) if a not in attempts[:i]]


@contextlib.contextmanager
def build_lock(build: Path):
    """Hold the build directory of one kernel build against other processes.

    ``cpp_extension.load`` guards its build with a ``lock`` file that a killed build leaves behind,
    after which every later build of that directory waits forever. Builds here first take an OS
    file lock (released by the OS when its holder dies, however it dies), and the holder removes a
    ``lock`` file left by a dead build: it cannot belong to a live one, which would hold the OS lock.
    """
    build.mkdir(parents=True, exist_ok=True)
    with open(build / "vmamba-build.lock", "a+b") as f:
        if fcntl is not None:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        elif msvcrt is not None:
            while True:
                try:
                    msvcrt.locking(f.fileno(), msvcrt.LK_LOCK, 1)
                    break
                except OSError:  # LK_LOCK gives up after ~10 s: keep waiting for a live builder
                    continue
        try:
            (build / "lock").unlink(missing_ok=True)
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
            elif msvcrt is not None:
                f.seek(0)
                msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)


def _sources_in(build: Path) -> list:
    """The kernel sources (and their header), copied into their build directory (the key covers
    their content): the build records its sources' paths, so compiling the package's own files
    would rebuild the cached kernel whenever another installation or checkout loads it."""
    for f in _FILES:
        copy = build / f.name
        text = f.read_bytes()
        if not copy.is_file() or copy.read_bytes() != text:
            copy.write_bytes(text)
    return [str(build / f.name) for f in _SOURCES]


def load_extension():
    """The compiled kernel module (built on the first call, then cached); None if it cannot be built.

    Raises ValueError when ``$VMAMBA_CPU_ISA`` names a build that does not exist or this CPU cannot run."""
    global _ext, _ext_failed
    if _ext is not None or _ext_failed:
        return _ext
    with _lock:
        if _ext is not None or _ext_failed:
            return _ext
        if os.environ.get("VMAMBA_CPU_KERNEL", "1").strip().lower() in ("0", "false", "no", "off"):
            _ext_failed = True
            _ext_info["error"] = "disabled by VMAMBA_CPU_KERNEL=0"
            return None
        isa = selected_isa()
        errors = []
        try:
            from torch.utils import cpp_extension
            key = _build_key(isa)
            for i, (cflags, ldflags) in enumerate(build_attempts(isa)):
                build = cache_dir() / f"{key}-{i}"
                try:
                    with warnings.catch_warnings(), build_lock(build):
                        warnings.simplefilter("ignore")
                        cpp_extension.load(
                            name=f"vmamba_cpu_scan_{key}_{i}", sources=_sources_in(build),
                            extra_cflags=cflags, extra_ldflags=ldflags, build_directory=str(build),
                            verbose=False, is_python_module=False,
                        )
                    mod = torch.ops.vmamba_cpu_kernel
                    if int(mod.max_state()) != MAX_STATE:
                        raise RuntimeError(f"the build's largest d_state {int(mod.max_state())} is not {MAX_STATE}")
                    _ext_info.update(isa=isa, flags=" ".join(cflags), lanes=int(mod.lanes()), chunk=int(mod.chunk()),
                                     openmp=bool(mod.openmp()), max_state=MAX_STATE, build_dir=str(build))
                    _ext = mod
                    return _ext
                except Exception as e:  # noqa: BLE001 - any build failure means "try the next flags"
                    text = str(e).strip().splitlines() or [type(e).__name__]
                    first_error = next((ln for ln in text if "error" in ln.lower()), text[-1])
                    errors.append(f"{' '.join(cflags)}: {first_error.strip()[:300]}")
        except Exception as e:  # noqa: BLE001 - no cpp_extension/ninja/compiler at all
            errors.append(f"{type(e).__name__}: {e}")
        _ext_failed = True
        _ext_info["error"] = "; ".join(errors)
        warnings.warn(
            "vmamba: the fused CPU selective-scan kernel could not be compiled (is a C++ compiler "
            "installed?), so the slower portable 'torch' backend is used instead (and ATen for the "
            "models' depthwise convolutions and LayerNorms). "
            f"Details: {_ext_info['error'][:600]}",
            RuntimeWarning, stacklevel=2,
        )
        return None


def is_available() -> bool:
    """Whether the kernel builds and loads here (the first call may compile it, once)."""
    return load_extension() is not None


def extension_info() -> dict:
    """Build facts: instruction set, compiler flags, SIMD lanes, chunk length, OpenMP, largest d_state;
    or the build error."""
    load_extension()
    return dict(_ext_info)


def _ext_or_raise():
    mod = load_extension()
    if mod is None:
        raise RuntimeError(f"vmamba: the CPU scan kernel is unavailable: {_ext_info.get('error')}")
    return mod


def _lanes() -> int:
    return _ext_info.get("lanes") or int(_ext_or_raise().lanes())


def _chunk() -> int:
    return _ext_info.get("chunk") or int(_ext_or_raise().chunk())


def _rows(m: Tensor) -> Tensor:
    """(..., N, L) -> (..., L, N) contiguous fp32: the kernel reads B_t / C_t as rows."""
    return m.float().transpose(-1, -2).contiguous()


def _states_shape(batch, k, groups, dg, length, n):
    w, t = _lanes(), _chunk()
    return (batch, k, groups * (-(-dg // w)), -(-length // t), n, w)


# ----------------------------------------------------------------------------- plain scan op

def _scan_forward(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
             delta_bias: Optional[Tensor], z: Optional[Tensor], delta_softplus: bool,
             save_states: bool) -> tuple[Tensor, Tensor, Tensor]:
    """y (fp32, before the output cast), last state (b, D, N) and the saved chunk states."""
    y, last, states = _ext_or_raise().forward(
        u, delta.to(u.dtype), f32(A), _rows(B), _rows(C), f32(D), f32(delta_bias),
        None if z is None else z.to(u.dtype), delta_softplus, save_states, 1, 0, False, None)
    return y, last, states


_scan_op = torch.library.custom_op(SCAN_OP, _scan_forward, mutates_args=(), device_types="cpu")


@_scan_op.register_fake
def _scan_op_fake(u, delta, A, B, C, D, delta_bias, z, delta_softplus, save_states):
    b, d, length = u.shape
    n, g = A.shape[1], B.shape[1]
    y = u.new_empty((b, d, length), dtype=torch.float32)
    last = u.new_empty((b, d, n), dtype=torch.float32)
    states = (u.new_empty(_states_shape(b, 1, g, d // g, length, n), dtype=torch.float32)
              if save_states else u.new_empty((0,), dtype=torch.float32))
    return y, last, states


def _scan_backward(dy: Tensor, dlast: Optional[Tensor], u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                 D: Optional[Tensor], delta_bias: Optional[Tensor], z: Optional[Tensor], states: Tensor,
                 delta_softplus: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients (fp32) of u, delta, A, B, C, D, delta_bias, z (empty for absent optionals)."""
    du, ddelta, dAp, dBp, dCp, dDp, dbp, dz = _ext_or_raise().backward(
        dy.float().contiguous(), None if dlast is None else f32(dlast), u,
        delta.to(u.dtype), f32(A), _rows(B), _rows(C), f32(D), f32(delta_bias),
        None if z is None else z.to(u.dtype), states, delta_softplus, 1, 0, False, None)
    dB = dBp.sum(2).transpose(-1, -2).contiguous()
    dC = dCp.sum(2).transpose(-1, -2).contiguous()
    return du, ddelta, dAp.sum(0), dB, dC, dDp.sum(0), dbp.sum(0), dz


_scan_bwd_op = torch.library.custom_op(SCAN_OP + "_backward", _scan_backward, mutates_args=(), device_types="cpu")


@_scan_bwd_op.register_fake
def _scan_bwd_fake(dy, dlast, u, delta, A, B, C, D, delta_bias, z, states, delta_softplus):
    f = torch.float32
    b, d, length = u.shape
    return (u.new_empty(u.shape, dtype=f), u.new_empty(u.shape, dtype=f), A.new_empty(A.shape, dtype=f),
            B.new_empty(B.shape, dtype=f), C.new_empty(C.shape, dtype=f), u.new_empty((d,), dtype=f),
            u.new_empty((d,), dtype=f), u.new_empty(u.shape if z is not None else (0,), dtype=f))


# Eager calls on plain tensors run the same functions through an autograd.Function (see `traced`).
_ScanFunction = register_scan_autograd(_scan_op, _scan_bwd_op, "cpu scan", _scan_forward, _scan_backward)


def selective_scan_cpu(
    u, delta, A, B, C, *, D=None, delta_bias=None, delta_softplus=False, z=None,
    return_last_state=False, out_float=False,
):
    """The ``"cpu"`` backend: same signature, shapes and semantics as ``selective_scan``.

    B and C arrive 4-D (batch, G, N, L) from the public op, which calls it only inside its
    contract: CPU tensors, fp32/bf16/fp16, d_state at most ``MAX_STATE``, no empty input.
    """
    save = needs_grad(u, delta, A, B, C, D, delta_bias, z)
    if traced(u, delta, A, B, C, D, delta_bias, z):
        op = _scan_op
    else:  # without gradients the kernel function itself, none of autograd.Function's bookkeeping
        op = _ScanFunction.apply if save else _scan_forward
    y, last, _ = op(u, delta, A, B, C, D, delta_bias, z, bool(delta_softplus), save)
    return kernel_output(y, last, u, out_float, return_last_state)


# ----------------------------------------------------------------------------- fused cross scan op

# The kernel reads B and C as rows in scan order; SS2D gives them per pixel. The reorder (and its
# adjoint for their gradients) is one gather along the map with a cached index, rather than the
# stack of transposes and flips of `scan_order`: on the small maps of the late stages those
# dozen small ops cost more than the kernel call itself.
_ORDERS: dict = {}


def _scan_index(mode: str, h: int, w: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """(4, L) int64 ``read`` (step t of direction k reads pixel read[k, t], row-major) and its
    inverse ``back`` (pixel p is step back[k, p] of direction k), for ``mode`` on an h x w map."""
    key = (mode, h, w, device)
    found = _ORDERS.get(key)
    if found is None:
        with torch.inference_mode(False):  # normal tensors even when first asked for in inference mode
            found = _make_scan_index(mode, h, w, device)
        if len(_ORDERS) >= 64:
            _ORDERS.clear()
        _ORDERS[key] = found
    return found


def _make_scan_index(mode: str, h: int, w: int, device: torch.device) -> tuple[Tensor, Tensor]:
    pixel = torch.arange(h * w, device=device)
    row, col = pixel, pixel.view(h, w).t().reshape(-1)
    orders = {"cross2d": (row, col, row.flip(0), col.flip(0)), "bidi": (row, row, row.flip(0), row.flip(0)),
              "unidi": (row, row, row, row)}[mode]
    read = torch.stack(orders)
    return read, read.argsort(dim=1)


def _scan_rows(m: Tensor, mode: str) -> Tensor:
    """(b, 4, N, H, W) pixel layout -> (b, 4, L, N) fp32 rows in scan order (contiguous)."""
    b, k, n, h, w = m.shape
    rows = m.float().flatten(3).transpose(2, 3)  # (b, 4, L, N), a view where m's pixels flatten
    if mode == "unidi":
        return rows.contiguous()
    read = _scan_index(mode, h, w, m.device)[0]
    return torch.gather(rows, 2, read.view(1, k, h * w, 1).expand(b, k, h * w, n))


def _pixel_grad(partials: Tensor, mode: str, h: int, w: int) -> Tensor:
    """The kernel's dB or dC partials (b, 4, nsb, L, N), summed, back to B's pixel layout
    (b, 4, N, H, W): the adjoint of :func:`_scan_rows`."""
    t = partials[:, :, 0] if partials.shape[2] == 1 else partials.sum(2)  # (b, 4, L, N) in scan order
    b, k, length, n = t.shape
    if mode != "unidi":
        back = _scan_index(mode, h, w, t.device)[1]
        t = torch.gather(t, 2, back.view(1, k, length, 1).expand(b, k, length, n))
    # contiguous, as the registered backward op's fake says (a copy only for N > 1)
    return t.transpose(2, 3).contiguous().view(b, k, n, h, w)


def _y_format(x: Tensor) -> torch.memory_format:
    """The layout of the fused kernel's y (and of the dy it reads) when it follows its input's:
    channel-last for a channel-last map ``x`` (SS2D's), so that y goes on to out_norm without a
    copy; else contiguous."""
    return torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


def _cross_forward_impl(x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                        delta_bias: Optional[Tensor], delta_softplus: bool, mode: str,
                        save_states: bool, follow_layouts: bool,
                        proj: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Merged y (b, d, H, W) fp32 and the saved chunk states. y is contiguous, or with
    ``follow_layouts`` (eager calls) channel-last for a channel-last ``x``. With ``proj`` (the
    step-size projection as :func:`_proj_weight` lays it out) ``delta`` is the low-rank dts."""
    y, _, states = _ext_or_raise().forward(
        pixel_map(x), pixel_map(delta.to(x.dtype)), f32(A), _scan_rows(B, mode), _scan_rows(C, mode),
        f32(D), f32(delta_bias), None, delta_softplus, save_states, 4, MODE_IDS[mode], follow_layouts, proj)
    return y, states


# The registered ops (what compiled and exported graphs call) give contiguous outputs whatever
# their inputs' strides: a compiled graph may hand an op inputs in other strides than it traced
# with, and the fake functions below must describe the real outputs. Eager calls, which nothing
# re-lays out, let the outputs follow the inputs' layouts (the `_eager` functions).
def _cross_forward(x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                   delta_bias: Optional[Tensor], delta_softplus: bool, mode: str,
                   save_states: bool) -> tuple[Tensor, Tensor]:
    return _cross_forward_impl(x, delta, A, B, C, D, delta_bias, delta_softplus, mode, save_states, False)


_cross_op = torch.library.custom_op(CROSS_SCAN_OP, _cross_forward, mutates_args=(), device_types="cpu")


@_cross_op.register_fake
def _cross_op_fake(x, delta, A, B, C, D, delta_bias, delta_softplus, mode, save_states):
    b, d, h, w = x.shape
    n = A.shape[1]
    y = x.new_empty((b, d, h, w), dtype=torch.float32)
    states = (x.new_empty(_states_shape(b, 4, 1, d, h * w, n), dtype=torch.float32)
              if save_states else x.new_empty((0,), dtype=torch.float32))
    return y, states


def _cross_backward_impl(dy: Tensor, x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                         D: Optional[Tensor], delta_bias: Optional[Tensor], states: Tensor, delta_softplus: bool,
                         mode: str, follow_layouts: bool, proj: Optional[Tensor] = None) -> tuple[Tensor, ...]:
    """Gradients (fp32) of x, delta, A, B, C, D, delta_bias. With ``follow_layouts`` d delta has
    delta's strides when its channels are contiguous and dense, and dy is read in y's layout;
    else both are contiguous. With ``proj`` (see :func:`_cross_forward_impl`) ``delta`` is the
    low-rank dts, and the gradient returned in its place is d delta, (b, 4, D, H, W) in
    (4, b, H, W, D) memory."""
    h, w = x.shape[-2:]
    dd, xm = pixel_map(delta.to(x.dtype)), pixel_map(x)
    dy_format = _y_format(xm) if follow_layouts else torch.contiguous_format
    dx, ddelta, dAp, dBp, dCp, dDp, dbp, _ = _ext_or_raise().backward(
        dy.float().contiguous(memory_format=dy_format), None, xm, dd, f32(A),
        _scan_rows(B, mode), _scan_rows(C, mode), f32(D), f32(delta_bias), None, states,
        delta_softplus, 4, MODE_IDS[mode], follow_layouts, proj)
    dB, dC = _pixel_grad(dBp, mode, h, w), _pixel_grad(dCp, mode, h, w)
    return dx, ddelta, dAp.sum(0), dB, dC, dDp.sum(0), dbp.sum(0)


def _cross_backward(dy: Tensor, x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                    delta_bias: Optional[Tensor], states: Tensor, delta_softplus: bool,
                    mode: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _cross_backward_impl(dy, x, delta, A, B, C, D, delta_bias, states, delta_softplus, mode, False)


_cross_bwd_op = torch.library.custom_op(CROSS_SCAN_OP + "_backward", _cross_backward, mutates_args=(),
                                        device_types="cpu")


@_cross_bwd_op.register_fake
def _cross_bwd_fake(dy, x, delta, A, B, C, D, delta_bias, states, delta_softplus, mode):
    f = torch.float32
    kd = A.shape[0]
    return (x.new_empty(x.shape, dtype=f), delta.new_empty(delta.shape, dtype=f), A.new_empty(A.shape, dtype=f),
            B.new_empty(B.shape, dtype=f), C.new_empty(C.shape, dtype=f), x.new_empty((kd,), dtype=f),
            x.new_empty((kd,), dtype=f))


def _cross_forward_eager(x, delta, A, B, C, D, delta_bias, delta_softplus, mode, save_states):
    return _cross_forward_impl(x, delta, A, B, C, D, delta_bias, delta_softplus, mode, save_states, True)


def _cross_backward_eager(dy, x, delta, A, B, C, D, delta_bias, states, delta_softplus, mode):
    return _cross_backward_impl(dy, x, delta, A, B, C, D, delta_bias, states, delta_softplus, mode, True)


_CrossScanFunction = register_cross_autograd(_cross_op, _cross_bwd_op, "cpu cross scan", _cross_forward_eager,
                                             _cross_backward_eager)


# ----------------------------------------------------------------------------- step sizes projected in the kernel
#
# With ``delta_proj_weight`` the op gets the step sizes' low-rank inputs dts (b, 4, R, H, W) and
# the projection (4, D, R) instead of delta (b, 4, D, H, W): the kernel forms each step's delta
# from the R values of its pixel, so delta (4 * D floats per pixel against 4 * R) is never
# written, read back or kept for the backward. The backward kernel recomputes it the same way
# and writes d delta, which two batched products turn into the gradients of dts and the
# projection. Eager calls let y, dy and the gradients follow the inputs' layouts; the registered
# ops (for compiled graphs) give contiguous outputs, as their fakes say.

def _proj_weight(weight: Tensor) -> Tensor:
    """(4, D, R) in fp32; any strides: the kernel reads it in place (SS2D's, stored as (4, R, D)
    memory, was copied into (4 * D, R) on every call until 2026-12-08, 0.7 ms per batch-1 forward)."""
    return weight.float()


def _cross_proj_forward_impl(x: Tensor, dts: Tensor, weight: Tensor, A: Tensor, B: Tensor, C: Tensor,
                             D: Optional[Tensor], delta_bias: Optional[Tensor], delta_softplus: bool, mode: str,
                             save_states: bool, follow_layouts: bool) -> tuple[Tensor, Tensor]:
    """Merged y (b, d, H, W) fp32 and the saved chunk states, as :func:`_cross_forward_impl`."""
    return _cross_forward_impl(x, dts, A, B, C, D, delta_bias, delta_softplus, mode, save_states, follow_layouts,
                               _proj_weight(weight))


def _cross_proj_backward_impl(dy: Tensor, x: Tensor, dts: Tensor, weight: Tensor, A: Tensor, B: Tensor, C: Tensor,
                              D: Optional[Tensor], delta_bias: Optional[Tensor], states: Tensor,
                              delta_softplus: bool, mode: str, follow_layouts: bool) -> tuple[Tensor, ...]:
    """Gradients (fp32) of x, dts, the projection, A, B, C, D, delta_bias. With ``follow_layouts``
    dy is read in y's layout and the projection's gradient comes in (4, R, D) memory, the layout
    SS2D stores the weight in; else every gradient is contiguous."""
    b, _, r, h, w = dts.shape
    k, d = weight.shape[:2]
    wk = _proj_weight(weight)
    dx, ddelta, dA, dB, dC, dD, dbias = _cross_backward_impl(
        dy, x, dts, A, B, C, D, delta_bias, states, delta_softplus, mode, follow_layouts, wk)
    dd = direction_rows(ddelta)  # a view: the kernel writes d delta as (4, b, H, W, D)
    d_dts = torch.bmm(dd, wk).view(k, b, h, w, r).permute(1, 0, 4, 2, 3)
    d_weight = torch.bmm(direction_rows(dts).float().transpose(1, 2), dd).transpose(1, 2)
    if not follow_layouts:
        d_dts, d_weight = d_dts.contiguous(), d_weight.contiguous()
    return dx, d_dts, d_weight, dA, dB, dC, dD, dbias


def _cross_proj_forward(x: Tensor, dts: Tensor, weight: Tensor, A: Tensor, B: Tensor, C: Tensor,
                        D: Optional[Tensor], delta_bias: Optional[Tensor], delta_softplus: bool, mode: str,
                        save_states: bool) -> tuple[Tensor, Tensor]:
    return _cross_proj_forward_impl(x, dts, weight, A, B, C, D, delta_bias, delta_softplus, mode, save_states, False)


_cross_proj_op = torch.library.custom_op(CROSS_SCAN_OP + "_projected", _cross_proj_forward, mutates_args=(),
                                         device_types="cpu")


@_cross_proj_op.register_fake
def _cross_proj_op_fake(x, dts, weight, A, B, C, D, delta_bias, delta_softplus, mode, save_states):
    return _cross_op_fake(x, dts, A, B, C, D, delta_bias, delta_softplus, mode, save_states)


def _cross_proj_backward(dy: Tensor, x: Tensor, dts: Tensor, weight: Tensor, A: Tensor, B: Tensor, C: Tensor,
                         D: Optional[Tensor], delta_bias: Optional[Tensor], states: Tensor, delta_softplus: bool,
                         mode: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _cross_proj_backward_impl(dy, x, dts, weight, A, B, C, D, delta_bias, states, delta_softplus, mode, False)


_cross_proj_bwd_op = torch.library.custom_op(CROSS_SCAN_OP + "_projected_backward", _cross_proj_backward,
                                             mutates_args=(), device_types="cpu")


@_cross_proj_bwd_op.register_fake
def _cross_proj_bwd_fake(dy, x, dts, weight, A, B, C, D, delta_bias, states, delta_softplus, mode):
    f = torch.float32
    dx, _, dA, dB, dC, dD, dbias = _cross_bwd_fake(dy, x, dts, A, B, C, D, delta_bias, states, delta_softplus, mode)
    return dx, dts.new_empty(dts.shape, dtype=f), weight.new_empty(weight.shape, dtype=f), dA, dB, dC, dD, dbias


def _cross_proj_forward_eager(x, dts, weight, A, B, C, D, delta_bias, delta_softplus, mode, save_states):
    return _cross_proj_forward_impl(x, dts, weight, A, B, C, D, delta_bias, delta_softplus, mode, save_states, True)


def _cross_proj_backward_eager(dy, x, dts, weight, A, B, C, D, delta_bias, states, delta_softplus, mode):
    return _cross_proj_backward_impl(dy, x, dts, weight, A, B, C, D, delta_bias, states, delta_softplus, mode, True)


_CrossProjFunction = register_cross_autograd(_cross_proj_op, _cross_proj_bwd_op, "cpu cross scan projected",
                                             _cross_proj_forward_eager, _cross_proj_backward_eager, projected=True)


def cross_selective_scan_cpu(x, delta, A, B, C, *, D=None, delta_bias=None, delta_softplus=False,
                             mode="cross2d", out_float=False, delta_proj_weight=None):
    """Fused ``cross_selective_scan`` (the backend's ``cross_fn``): inputs in pixel layout, the
    kernel walks the four scan orders of ``mode`` itself and accumulates the merged output; with
    ``delta_proj_weight`` (4, D, R), ``delta`` is (b, 4, R, H, W) and the kernel projects it.
    Called, like the plain op, only inside the backend's contract."""
    check_scan_mode(mode)
    if delta_proj_weight is not None and delta.shape[2] > MAX_RANK:
        delta, delta_proj_weight = project_steps(delta, delta_proj_weight), None
    if delta_proj_weight is not None:
        tensors = (x, delta, delta_proj_weight, A, B, C, D, delta_bias)
        save = needs_grad(*tensors)
        if traced(*tensors):
            op = _cross_proj_op
        else:
            op = _CrossProjFunction.apply if save else _cross_proj_forward_eager
        y, _ = op(x, delta, delta_proj_weight, A, B, C, D, delta_bias, bool(delta_softplus), mode, save)
        return y if out_float else y.to(x.dtype)
    save = needs_grad(x, delta, A, B, C, D, delta_bias)
    if traced(x, delta, A, B, C, D, delta_bias):
        op = _cross_op
    else:  # as in selective_scan_cpu
        op = _CrossScanFunction.apply if save else _cross_forward_eager
    y, _ = op(x, delta, A, B, C, D, delta_bias, bool(delta_softplus), mode, save)
    return y if out_float else y.to(x.dtype)


# FLOP formulas, so torch.utils.flop_counter sees the kernels.
register_flop_formula(torch.ops.vmamba.selective_scan_cpu)(scan_op_flops)
register_flop_formula(torch.ops.vmamba.cross_selective_scan_cpu)(cross_scan_op_flops)


@register_flop_formula(torch.ops.vmamba.cross_selective_scan_cpu_projected)
def _cross_proj_op_flops(x_shape, dts_shape, w_shape, A_shape, *args, **kwargs) -> int:
    """The scan's FLOPs plus the step sizes' projection's, 2 * (b*H*W) * 4 * D * R, as the batched
    product that projects them first counts."""
    b, k, r, h, w = dts_shape
    return cross_scan_op_flops(x_shape, None, A_shape) + 2 * b * h * w * k * w_shape[1] * r


register_backend(
    "cpu", selective_scan_cpu, devices=("cpu",), dtypes=(torch.float32, torch.bfloat16, torch.float16),
    max_d_state=MAX_STATE, empty_inputs=False, priority=10, is_available=is_available,
    cross_fn=cross_selective_scan_cpu, cross_projects=True,
    description="fused C++ kernel (SIMD over channels, OpenMP over batch x channels), compiled on first use",
)
