"""The registry of selective-scan backends, and the contract each one declares.

Every backend implements the full semantics of :func:`vmamba.ops.selective_scan` with the same
signature (minus ``backend``), on inputs that the public op has already validated and normalised
(B and C always 4-D: (batch, G, N, L)). It declares what it serves, once, at registration:

* ``devices``: device types (``"cpu"``, ``"cuda"``, ...), or any;
* ``dtypes``: input dtypes, or any floating dtype;
* ``max_d_state``: the largest state size N it takes, or any;
* ``empty_inputs``: whether it takes inputs with batch or length 0;
* ``self_check`` (optional): a test run on a small problem, once per device and dtype, for
  kernels that cannot be trusted before they have run on the hardware at hand.

A backend is only ever called on inputs inside its contract. ``"auto"`` picks, among the
available backends whose contract covers the call, the one with the highest priority (kernel
backends above the portable ``"torch"`` path, ``"reference"`` last); a named backend that does
not cover the call raises an error saying why, and never hands the call to another backend.
"""
from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch


@dataclass(frozen=True)
class ScanBackend:
    """One implementation of the selective scan and the contract it serves.

    Attributes:
        name: the name users pass as ``backend=...``.
        fn: the implementation (same signature as ``selective_scan`` without ``backend``).
        devices: device types it runs on (``"cpu"``, ``"cuda"``, ...); ``None`` means any.
        dtypes: input dtypes it accepts; ``None`` means any floating dtype.
        max_d_state: the largest d_state (N) it takes; ``None`` means any.
        empty_inputs: whether it takes inputs with a zero batch or length.
        priority: ``"auto"`` prefers higher values.
        is_available: a cheap check that the backend can run here (compiler, package, GPU).
        self_check: optional ``self_check(device, dtype) -> None or the reason it failed``, run
            once per device and dtype before the backend's first use there.
        description: one line for listings.
        cross_fn: optional fused ``cross_selective_scan`` (scan orders folded into the kernel's
            indexing, same signature as ``cross_selective_scan`` without ``backend``); when
            absent, that op is composed from cross_scan, ``fn`` and cross_merge.
        cross_projects: whether ``cross_fn`` also takes ``delta_proj_weight`` (the step sizes'
            projection, applied inside the kernel); else the public op projects first.
    """

    name: str
    fn: Callable
    devices: tuple[str, ...] | None = None
    dtypes: tuple[torch.dtype, ...] | None = None
    max_d_state: int | None = None
    empty_inputs: bool = True
    priority: int = 0
    is_available: Callable[[], bool] = field(default=lambda: True)
    self_check: Callable[[torch.device, torch.dtype], str | None] | None = None
    description: str = ""
    cross_fn: Callable | None = None
    cross_projects: bool = False

    def refusal(self, device_type: str, dtype: torch.dtype, d_state: int = 1, empty: bool = False) -> str | None:
        """Why a call with these properties is outside the contract; None when it is inside."""
        if self.devices is not None and device_type not in self.devices:
            return f"runs on {'/'.join(self.devices)} tensors, not {device_type}"
        if self.dtypes is not None and dtype not in self.dtypes:
            return f"takes {', '.join(str(d) for d in self.dtypes)} inputs, not {dtype}"
        if self.max_d_state is not None and d_state > self.max_d_state:
            return f"takes d_state (N) up to {self.max_d_state}, not {d_state}"
        if empty and not self.empty_inputs:
            return "does not take empty inputs (batch or length 0)"
        return None

    def accepts(self, device_type: str, dtype: torch.dtype, d_state: int = 1, empty: bool = False) -> bool:
        """Whether a call with these properties is inside the contract."""
        return self.refusal(device_type, dtype, d_state, empty) is None


_BACKENDS: dict[str, ScanBackend] = {}


def register_backend(
    name: str,
    fn: Callable,
    *,
    devices: Iterable[str] | None = None,
    dtypes: Iterable[torch.dtype] | None = None,
    max_d_state: int | None = None,
    empty_inputs: bool = True,
    priority: int = 0,
    is_available: Callable[[], bool] | None = None,
    self_check: Callable[[torch.device, torch.dtype], str | None] | None = None,
    description: str = "",
    cross_fn: Callable | None = None,
    cross_projects: bool = False,
) -> ScanBackend:
    """Register (or replace) a selective-scan backend under ``name`` and return its record.

    The keyword arguments are the fields of :class:`ScanBackend`: the contract and the rest.
    """
    if name == "auto":
        raise ValueError('"auto" is reserved for automatic backend selection')
    backend = ScanBackend(
        name=name,
        fn=fn,
        devices=tuple(devices) if devices is not None else None,
        dtypes=tuple(dtypes) if dtypes is not None else None,
        max_d_state=max_d_state,
        empty_inputs=empty_inputs,
        priority=priority,
        is_available=is_available or (lambda: True),
        self_check=self_check,
        description=description,
        cross_fn=cross_fn,
        cross_projects=cross_projects and cross_fn is not None,
    )
    _BACKENDS[name] = backend
    for key in [k for k in _self_checks if k[0] == name]:  # a new implementation is checked anew
        del _self_checks[key]
    return backend


def _available(backend: ScanBackend) -> bool:
    try:
        return bool(backend.is_available())
    except Exception:  # an availability probe must never take the op down with it
        return False


def available_backends(device: str | torch.device | None = None) -> list[str]:
    """Names of the backends usable here, best first; only those for ``device`` if given."""
    device_type = None if device is None else torch.device(device).type
    found = [
        b for b in _BACKENDS.values()
        if _available(b) and (device_type is None or b.devices is None or device_type in b.devices)
    ]
    return [b.name for b in sorted(found, key=lambda b: -b.priority)]


def get_backend(name: str) -> ScanBackend:
    """The registered backend called ``name``; a ValueError listing the choices otherwise."""
    if name not in _BACKENDS:
        raise ValueError(
            f"unknown selective-scan backend {name!r}; registered: {sorted(_BACKENDS)} (or 'auto')"
        )
    return _BACKENDS[name]


# ----------------------------------------------------------------------------- self-checks

_self_checks: dict[tuple[str, str, torch.dtype], str | None] = {}
_self_check_lock = threading.Lock()


def _checked_device(device: torch.device) -> torch.device:
    """``device`` with an index where the device type has several (a check is per device)."""
    if device.index is None and device.type == "cuda" and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return device


def self_check_failure(backend: ScanBackend, device: str | torch.device, dtype: torch.dtype) -> str | None:
    """Run ``backend``'s self-check for ``device`` and ``dtype`` (once; the result is kept) and
    return why it failed, or None when it passed or the backend has none.

    The first failure for a device and dtype issues one RuntimeWarning.
    """
    if backend.self_check is None:
        return None
    device = _checked_device(torch.device(device))
    key = (backend.name, str(device), dtype)
    if key in _self_checks:
        return _self_checks[key]
    with _self_check_lock:
        if key in _self_checks:
            return _self_checks[key]
        try:
            failure = backend.self_check(device, dtype)
        except Exception as e:  # noqa: BLE001 - a check that crashes has failed
            failure = f"{type(e).__name__}: {e}"
        if failure is not None:
            warnings.warn(
                f"vmamba: the {backend.name!r} selective-scan backend failed its self-check on {device} "
                f"with {dtype} inputs, so it is not used there ('auto' takes the next backend). "
                f"Details: {str(failure)[:600]}", RuntimeWarning, stacklevel=3)
        _self_checks[key] = failure
        return failure


# ----------------------------------------------------------------------------- resolution

def _candidates(name: str, device: torch.device, dtype: torch.dtype) -> tuple[str, ...]:
    """The backends that may run a call on ``device`` with ``dtype`` inputs, best first: for
    ``"auto"`` every available one that takes them and passed its self-check there; a named one
    alone, after those checks (which raise). A constant for torch.compile (run at trace time)."""
    if name == "auto":
        ranked = sorted(_BACKENDS.values(), key=lambda b: -b.priority)
        return tuple(b.name for b in ranked if b.accepts(device.type, dtype) and _available(b)
                     and self_check_failure(b, device, dtype) is None)
    backend = get_backend(name)
    refusal = backend.refusal(device.type, dtype)
    if refusal is not None:
        raise ValueError(f"selective-scan backend {name!r} {refusal}; backend='auto' picks one that does")
    if not _available(backend):
        raise RuntimeError(f"selective-scan backend {name!r} is not available on this machine")
    failure = self_check_failure(backend, device, dtype)
    if failure is not None:
        raise RuntimeError(f"selective-scan backend {name!r} failed its self-check on {device} with {dtype} "
                           f"inputs ({str(failure)[:300]}); use backend='auto' or 'torch'")
    return (name,)


# What torch.compiler.assume_constant_result sets; set directly because that function imports
# torch._dynamo, which would double the time of `import vmamba` (tests/test_ops_scan.py checks
# that compiling through "auto" still works).
_candidates._dynamo_marked_constant = True


def is_empty(t: torch.Tensor) -> bool:
    """Whether ``t`` has a zero-size dimension, as backend selection sees it: a size that is
    symbolic while tracing (a dynamic dimension, which torch.compile and torch.export never make
    0) counts as non-zero, so the answer is a constant for the traced graph."""
    return any(isinstance(s, int) and s == 0 for s in t.shape)


def resolve_backend(
    backend: str | ScanBackend,
    device: str | torch.device,
    dtype: torch.dtype,
    d_state: int = 1,
    empty: bool = False,
) -> ScanBackend:
    """The backend that runs a call on ``device`` with ``dtype`` inputs, state size ``d_state``
    (``empty``: a zero batch or length): the named one, checked against its contract, or the best
    one for ``"auto"``. A :class:`ScanBackend` record (registered or not) is checked and used as is.

    Raises ValueError when a named backend's contract does not cover the call, RuntimeError when
    it is unavailable here or failed its self-check. Under torch.compile the choice is made at
    trace time (a symbolic d_state is guarded on) and baked into the graph.
    """
    device = torch.device(device)
    if isinstance(backend, ScanBackend):
        refusal = backend.refusal(device.type, dtype, d_state, empty)
        if refusal is not None:
            raise ValueError(f"selective-scan backend {backend.name!r} {refusal}")
        return backend
    for name in _candidates(backend, device, dtype):
        record = _BACKENDS[name]
        refusal = record.refusal(device.type, dtype, d_state, empty)
        if refusal is None:
            return record
        if backend != "auto":
            raise ValueError(f"selective-scan backend {name!r} {refusal}; backend='auto' picks one that does")
    raise RuntimeError(f"no selective-scan backend takes {dtype} tensors on {device.type} "
                       f"with d_state {d_state}{' (empty input)' if empty else ''}")
