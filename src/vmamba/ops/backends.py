"""The registry of selective-scan backends.

Every backend implements the full semantics of :func:`vmamba.ops.selective_scan` with the same
keyword signature (minus ``backend``), on inputs that the public op has already validated and
normalised (B and C always 4-D: (batch, G, N, L)). ``"auto"`` picks, among the backends that are
available and accept the tensors' device type and dtype, the one with the highest priority.

Kernel backends (a fused CPU kernel, Triton on GPU) register themselves here with a higher
priority than the portable ``"torch"`` path; ``"reference"`` has the lowest priority and is never
picked by ``"auto"`` unless nothing else accepts the input.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch


@dataclass(frozen=True)
class ScanBackend:
    """One registered implementation of the selective scan.

    Attributes:
        name: the name users pass as ``backend=...``.
        fn: the implementation (same signature as ``selective_scan`` without ``backend``).
        devices: device types it runs on (``"cpu"``, ``"cuda"``, ...); ``None`` means any.
        dtypes: input dtypes it accepts; ``None`` means any floating dtype.
        priority: ``"auto"`` prefers higher values.
        is_available: a cheap check that the backend can run here (compiler, package, GPU).
        description: one line for listings.
        cross_fn: optional fused ``cross_selective_scan`` (scan orders folded into the kernel's
            indexing, same signature as ``cross_selective_scan`` without ``backend``); when
            absent, that op is composed from cross_scan, ``fn`` and cross_merge.
    """

    name: str
    fn: Callable
    devices: tuple[str, ...] | None = None
    dtypes: tuple[torch.dtype, ...] | None = None
    priority: int = 0
    is_available: Callable[[], bool] = field(default=lambda: True)
    description: str = ""
    cross_fn: Callable | None = None

    def accepts(self, device_type: str, dtype: torch.dtype) -> bool:
        """Whether this backend runs on ``device_type`` with inputs of ``dtype``."""
        if self.devices is not None and device_type not in self.devices:
            return False
        return self.dtypes is None or dtype in self.dtypes


_BACKENDS: dict[str, ScanBackend] = {}


def register_backend(
    name: str,
    fn: Callable,
    *,
    devices: Iterable[str] | None = None,
    dtypes: Iterable[torch.dtype] | None = None,
    priority: int = 0,
    is_available: Callable[[], bool] | None = None,
    description: str = "",
    cross_fn: Callable | None = None,
) -> ScanBackend:
    """Register (or replace) a selective-scan backend under ``name`` and return its record."""
    if name == "auto":
        raise ValueError('"auto" is reserved for automatic backend selection')
    backend = ScanBackend(
        name=name,
        fn=fn,
        devices=tuple(devices) if devices is not None else None,
        dtypes=tuple(dtypes) if dtypes is not None else None,
        priority=priority,
        is_available=is_available or (lambda: True),
        description=description,
        cross_fn=cross_fn,
    )
    _BACKENDS[name] = backend
    return backend


def _available(backend: ScanBackend) -> bool:
    try:
        return bool(backend.is_available())
    except Exception:  # an availability probe must never take the op down with it
        return False


def available_backends(device: str | torch.device | None = None) -> list[str]:
    """Names of the backends usable here, best first; only those for ``device`` if given.

    Names starting with "_" are private tools (e.g. the FLOP-counting probe) and not listed.
    """
    device_type = None if device is None else torch.device(device).type
    found = [
        b for b in _BACKENDS.values()
        if not b.name.startswith("_") and _available(b) and (device_type is None or b.devices is None or device_type in b.devices)
    ]
    return [b.name for b in sorted(found, key=lambda b: -b.priority)]


def get_backend(name: str) -> ScanBackend:
    """The registered backend called ``name``; a ValueError listing the choices otherwise."""
    if name not in _BACKENDS:
        raise ValueError(
            f"unknown selective-scan backend {name!r}; registered: {sorted(_BACKENDS)} (or 'auto')"
        )
    return _BACKENDS[name]


def _resolved_name(name: str, device_type: str, dtype: torch.dtype) -> str:
    """The name of the backend for a call; a constant for torch.compile (decided at trace time)."""
    return _resolve(name, device_type, dtype).name


# What torch.compiler.assume_constant_result sets; set directly because that function imports
# torch._dynamo, which would double the time of `import vmamba` (tests/test_ops_scan.py checks
# that compiling through "auto" still works).
_resolved_name._dynamo_marked_constant = True


def resolve_backend(name: str, device_type: str, dtype: torch.dtype) -> ScanBackend:
    """The backend that runs a call: ``name`` itself (checked) or the best one for ``"auto"``.

    Under torch.compile the choice is made once, at trace time, and baked into the graph.
    """
    return _BACKENDS[_resolved_name(name, device_type, dtype)]


def _resolve(name: str, device_type: str, dtype: torch.dtype) -> ScanBackend:
    if name == "auto":
        candidates = [b for b in _BACKENDS.values()
                      if not b.name.startswith("_") and b.accepts(device_type, dtype) and _available(b)]
        if not candidates:
            raise RuntimeError(f"no selective-scan backend accepts {dtype} tensors on {device_type}")
        return max(candidates, key=lambda b: b.priority)
    backend = get_backend(name)
    if not _available(backend):
        raise RuntimeError(f"selective-scan backend {name!r} is not available on this machine")
    if not backend.accepts(device_type, dtype):
        raise ValueError(
            f"selective-scan backend {name!r} does not accept {dtype} tensors on {device_type} "
            f"(devices: {backend.devices or 'any'}, dtypes: {backend.dtypes or 'any float'})"
        )
    return backend
