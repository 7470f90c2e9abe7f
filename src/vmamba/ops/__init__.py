"""Operators: the selective scan and the SS2D core (cross-scan, scan, merge), with swappable backends.

Layout, for a backend author:

* ``selective_scan.py``, ``cross_selective_scan.py``: the public ops (argument checks, dispatch);
* ``backends.py``: the registry, and the contract each backend declares (device, dtypes,
  largest d_state, empty inputs, an optional self-check) that dispatch reads and enforces;
* ``kernel_common.py``: what the kernel backends share (autograd glue, FLOP formulas, scan-mode
  ids, argument conversions); a kernel backend imports that and ``backends`` only;
* ``cross_scan.py``: cross-scan / cross-merge and the scan orders;
* ``dense.py``: the dense layers' product, on oneDNN for CPU float32 where it is usable;
* ``conv.py``: ``Conv2d``, ``nn.Conv2d`` with the CPU kernel's depthwise 3x3 convolution on small
  channel-last maps and an im2col backward for its wide strided training calls;
* ``norm.py``: ``LayerNorm``, ``nn.LayerNorm`` on the CPU kernel's LayerNorm for CPU float32 rows;
* the backends: ``scan_reference.py`` and ``scan_torch.py`` (portable, on ``scan_common.py``),
  ``scan_cpu.py`` (C++ kernel in ``cpu/``) and ``scan_triton.py`` (``triton_kernels.py``).
"""
from .backends import ScanBackend, available_backends, get_backend, register_backend
from .cross_scan import SCAN_MODES, cross_merge, cross_scan, scan_order
from .cross_selective_scan import cross_selective_scan
from .conv import Conv2d
from .norm import LayerNorm, layer_norm
from .dense import Linear, active_linear_backend, linear, linear_backend, linear_info, set_linear_backend
from .scan_reference import selective_scan_reference
from .scan_torch import selective_scan_torch
from .selective_scan import check_scan_inputs, selective_scan
from . import scan_cpu  # noqa: F401  (registers the "cpu" backend; compiles lazily on first use)
from . import scan_triton  # noqa: F401  (registers "triton" where Triton and a GPU are present)

__all__ = [
    "selective_scan", "selective_scan_reference", "selective_scan_torch", "check_scan_inputs",
    "available_backends", "register_backend", "get_backend", "ScanBackend",
    "cross_scan", "cross_merge", "cross_selective_scan", "scan_order", "SCAN_MODES",
    "Conv2d", "LayerNorm", "layer_norm", "Linear", "linear", "linear_backend", "linear_info", "set_linear_backend", "active_linear_backend",
]
