"""Operators: the selective scan (with its backends registry) and cross-scan/merge."""
from .backends import ScanBackend, available_backends, get_backend, register_backend
from .cross_scan import SCAN_MODES, cross_merge, cross_scan
from .cross_selective_scan import cross_selective_scan, scan_order
from .scan_reference import selective_scan_reference
from .scan_torch import selective_scan_torch
from .selective_scan import check_scan_inputs, selective_scan
from . import scan_cpu  # noqa: F401  (registers the "cpu" backend; compiles lazily on first use)
from . import scan_triton  # noqa: F401  (registers "triton" where Triton and a GPU are present)

__all__ = [
    "selective_scan", "selective_scan_reference", "selective_scan_torch", "check_scan_inputs",
    "available_backends", "register_backend", "get_backend", "ScanBackend",
    "cross_scan", "cross_merge", "cross_selective_scan", "scan_order", "SCAN_MODES",
]
