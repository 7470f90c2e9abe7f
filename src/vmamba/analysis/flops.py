"""Parameters and FLOPs in the paper's convention, on torch's own FLOP counter.

Convention (the authors' table, fvcore-style): one multiply-add = one FLOP for convolutions,
linear layers, matmuls and einsums; LayerNorm counts 5 per element (4 without affine), global
average pooling 1 per input element; element-wise activations and additions count 0; each
selective scan counts 9*B*D*L*N + B*D*L (+ B*D*L for the skip term when D is used... included
in the second term, as the authors count it).

The model runs on the ``meta`` device, so counting a base model at 1024x1024 costs no compute.
A copy of the model scans through a private custom op ("vmamba::scan_flop_probe") that torch's
``FlopCounterMode`` sees as one operation with the formula above: the copy is given the probe as
its scan backend object (:class:`vmamba.ops.ScanBackend`, never registered), so counting leaves the
op's registry as it was.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

from ..ops import ScanBackend, selective_scan_torch
from ..ops.scan_common import scan_flops

aten = torch.ops.aten
# Module names whose FLOPs make up the per-part breakdown, and the part each belongs to.
_PART = re.compile(r"^(patch_embed|classifier|outnorm\d+|layers\.\d+)(?:\.blocks\.\d+|\.downsample|\.norm)?$")


@torch.library.custom_op("vmamba::scan_flop_probe", mutates_args=())
def _scan_probe(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                D: torch.Tensor | None, delta_bias: torch.Tensor | None, delta_softplus: bool,
                out_float: bool) -> torch.Tensor:
    return selective_scan_torch(u, delta, A, B, C, D=D, delta_bias=delta_bias, delta_softplus=delta_softplus,
                                out_float=out_float).clone()


@_scan_probe.register_fake
def _(u, delta, A, B, C, D, delta_bias, delta_softplus, out_float):
    return u.new_empty(u.shape, dtype=torch.float32 if out_float else u.dtype)


def _probe_scan(u, delta, A, B, C, *, D=None, delta_bias=None, delta_softplus=False, z=None,
                return_last_state=False, out_float=False):
    if z is not None or return_last_state:
        raise ValueError("the FLOP probe supports neither z nor return_last_state")
    return _scan_probe(u, delta, A, B, C, D, delta_bias, delta_softplus, out_float)


# The scan backend of the model copy being counted; deliberately not in the registry.
PROBE_BACKEND = ScanBackend("flop probe", _probe_scan, description="counts the scan as one op for FlopCounterMode")


# FlopCounterMode counts 2 per multiply-add; these formulas follow the same unit, and the
# total is halved at the end.
@register_flop_formula(torch.ops.vmamba.scan_flop_probe)
def _scan_formula(u_shape, delta_shape, A_shape, *args, **kwargs) -> int:
    b, d, length = u_shape
    return 2 * scan_flops(b, d, length, A_shape[1])


def _layer_norm_formula(input_shape, normalized_shape, weight_shape=None, *args, **kwargs) -> int:
    numel = 1
    for s in input_shape:
        numel *= s
    return 2 * numel * (5 if weight_shape is not None else 4)


def _mean_formula(input_shape, *args, **kwargs) -> int:
    numel = 1
    for s in input_shape:
        numel *= s
    return 2 * numel


# The paper's convention for ops torch counts differently (LayerNorm, pooling), keyed by
# overload packet as FlopCounterMode looks them up; it passes shapes for tensors.
_CUSTOM = {
    aten.native_layer_norm: _layer_norm_formula,
    aten.mean: _mean_formula,
}


@dataclass
class FlopReport:
    """Parameters and FLOPs of one forward pass, with breakdowns."""

    model: str
    input_size: tuple[int, int, int, int]
    params: int
    flops: int
    by_module: dict[str, int] = field(default_factory=dict)
    by_op: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return dict(model=self.model, input_size=list(self.input_size), params=self.params,
                    flops=self.flops, gflops=self.flops / 1e9, by_module=self.by_module, by_op=self.by_op)


def count_flops(model: nn.Module, size: tuple[int, int] = (224, 224), batch: int = 1) -> FlopReport:
    """FLOPs (paper convention) and parameters of ``model`` on a (batch, C, H, W) input.

    ``by_module`` breaks the total down by the model's top-level parts and stages
    (patch_embed, layers.0, ..., classifier); ``by_op`` by operator (the scan is
    'vmamba.scan_flop_probe').
    """
    params = sum(p.numel() for p in model.parameters())
    probe = copy.deepcopy(model).to("meta").eval()
    for m in probe.modules():  # every SS2D of the copy scans through the probe
        if hasattr(m, "scan_backend"):
            m.scan_backend = PROBE_BACKEND
    x = torch.empty(batch, getattr(model, "in_chans", 3), *size, device="meta")
    counter = FlopCounterMode(display=False, custom_mapping=_CUSTOM)
    with counter, torch.no_grad():
        probe(x)
    counts = counter.get_flop_counts()
    root = type(probe).__name__ + "."
    by_module: dict[str, int] = {}
    for name, ops in counts.items():  # blocks and downsamplers add up to their stage
        part = _PART.match(name[len(root):]) if name.startswith(root) else None
        if part:
            by_module[part.group(1)] = by_module.get(part.group(1), 0) + sum(ops.values()) // 2
    by_op = {str(op): n // 2 for op, n in counts.get("Global", {}).items()}
    name = getattr(model, "model_name", type(model).__name__)
    return FlopReport(name, (batch, x.shape[1], *size), params, counter.get_total_flops() // 2,
                      by_module, by_op)
