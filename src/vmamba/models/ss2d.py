"""SS2D: the 2D selective-scan mixer of VMamba (arXiv 2401.10166).

One module covers both families of the authors' release:

* v0 ("vanilla", ``forward_type='v0'``): in_proj to 2*d_inner (x and gate z), conv with bias,
  y = out_norm(scan(x)) * silu(z);
* v2 (``forward_type='v05_noz'``): in_proj to d_inner, conv without bias, no gate.

Parameter names equal the authors' (``op.x_proj_weight``, ``op.A_logs``, ...).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import SCAN_MODES, Conv2d, LayerNorm, Linear, cross_selective_scan, get_backend, linear
from .layers import channels_last_conv, check_arg, is_identity, is_int, to_channels_first

K_DIRECTIONS = 4


def check_ss2d_args(d_model, d_state, ssm_ratio, dt_rank, d_conv, dropout, scan_mode, scan_backend) -> None:
    """``ValueError`` naming the first SS2D setting that cannot build a working mixer."""
    check_arg(is_int(d_model) and d_model > 0, "d_model", d_model, "a positive int")
    check_arg(is_int(d_state) and d_state > 0, "d_state", d_state, "a positive int (the SSM state size)")
    check_arg(isinstance(ssm_ratio, (int, float)) and not isinstance(ssm_ratio, bool) and ssm_ratio > 0
              and int(ssm_ratio * d_model) > 0, "ssm_ratio", ssm_ratio,
              f"a positive number with int(ssm_ratio * {d_model}) >= 1 inner channels")
    check_arg(dt_rank == "auto" or (is_int(dt_rank) and dt_rank > 0), "dt_rank", dt_rank, "'auto' or a positive int")
    check_arg(is_int(d_conv) and d_conv >= 0 and (d_conv < 2 or d_conv % 2 == 1), "d_conv", d_conv,
              "an odd kernel size, or 0/1 for no conv")
    check_arg(isinstance(dropout, (int, float)) and 0 <= dropout < 1, "dropout", dropout, "in [0, 1)")
    check_arg(scan_mode in SCAN_MODES, "scan_mode", scan_mode, f"one of {', '.join(map(repr, SCAN_MODES))}")
    if scan_backend != "auto":
        try:
            get_backend(scan_backend)
        except (ValueError, TypeError) as e:
            raise ValueError(f"scan_backend={scan_backend!r} is not allowed: {e}") from None


class SS2D(nn.Module):
    """Cross-scan selective-scan mixer on channel-last maps: (B, H, W, C) -> (B, H, W, C).

    Args:
        d_model: channels C in and out.
        d_state: SSM state size N.
        ssm_ratio: d_inner = int(ssm_ratio * C).
        dt_rank: rank R of the step-size projection; ``"auto"`` = ceil(C / 16).
        d_conv: depthwise conv kernel (< 2 disables the conv).
        conv_bias: bias on the depthwise conv.
        z_gate: gate the output with silu(z) from a second half of in_proj (v0).
        dropout: dropout after out_proj.
        scan_mode: cross-scan mode ('cross2d', 'unidi', 'bidi').
        scan_backend: selective-scan backend name or 'auto'.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        ssm_ratio: float = 2.0,
        dt_rank: int | str = "auto",
        d_conv: int = 3,
        conv_bias: bool = True,
        z_gate: bool = True,
        dropout: float = 0.0,
        scan_mode: str = "cross2d",
        scan_backend: str = "auto",
    ):
        super().__init__()
        check_ss2d_args(d_model=d_model, d_state=d_state, ssm_ratio=ssm_ratio, dt_rank=dt_rank, d_conv=d_conv,
                        dropout=dropout, scan_mode=scan_mode, scan_backend=scan_backend)
        d_inner = int(ssm_ratio * d_model)
        self.d_inner, self.d_state = d_inner, d_state
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.z_gate = z_gate
        self.scan_mode = scan_mode
        self.scan_backend = scan_backend
        k, r, n = K_DIRECTIONS, self.dt_rank, d_state

        self.in_proj = Linear(d_model, d_inner * (2 if z_gate else 1), bias=False)
        self.conv2d = (
            channels_last_conv(Conv2d(d_inner, d_inner, kernel_size=d_conv, padding=(d_conv - 1) // 2,
                                      groups=d_inner, bias=conv_bias))
            if d_conv > 1 else None
        )
        self.act = nn.SiLU()
        self.x_proj_weight = nn.Parameter(torch.empty(k, r + 2 * n, d_inner))
        self.dt_projs_weight = nn.Parameter(torch.empty(k, d_inner, r))
        self.dt_projs_bias = nn.Parameter(torch.empty(k, d_inner))
        self.A_logs = nn.Parameter(torch.empty(k * d_inner, n))
        self.Ds = nn.Parameter(torch.empty(k * d_inner))
        self.out_norm = LayerNorm(d_inner, eps=1e-5)
        self.out_proj = Linear(d_inner, d_model, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.reset_ssm_parameters()
        # Stored as its transpose (k, r, d) in memory, the layout its product in forward_core
        # reads and its gradient comes back in (no copy per step; DDP buckets match it).
        self.dt_projs_weight.data = torch.empty(k, r, d_inner).transpose(1, 2).copy_(self.dt_projs_weight.data)

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min: float = 1e-3, dt_max: float = 0.1, dt_floor: float = 1e-4) -> None:
        """The authors' 'v0' initialisation of the SSM parameters."""
        d_inner, r, n = self.d_inner, self.dt_rank, self.d_state
        bound = d_inner ** -0.5  # nn.Linear's default for the stacked x projections
        self.x_proj_weight.uniform_(-bound, bound)
        self.dt_projs_weight.uniform_(-r ** -0.5, r ** -0.5)
        dt = torch.exp(torch.rand(K_DIRECTIONS, d_inner) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=dt_floor)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.A_logs.copy_(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(K_DIRECTIONS * d_inner, 1))
        self.Ds.fill_(1.0)
        self.A_logs._no_weight_decay = True
        self.Ds._no_weight_decay = True

    def forward_core(self, x: torch.Tensor) -> torch.Tensor:
        """The 4-direction selective scan: (B, d_inner, H, W) -> (B, H, W, d_inner), fp32.

        ``x`` is best channel-last in memory (as the depthwise conv leaves it). The projections
        run per pixel on channel-last rows (the same numbers as projecting each scan sequence)
        and the step sizes' low-rank inputs are strided views of them, so the op reads every
        input in pixel layout without a copy and may fold the scan orders into its kernel.
        """
        r, n = self.dt_rank, self.d_state
        b, d, h, w = x.shape
        k = self.x_proj_weight.shape[0]
        # Plain matmuls rather than einsum: the same arithmetic, and fast in ONNX runtimes.
        x_dbl = linear(x.permute(0, 2, 3, 1), self.x_proj_weight.reshape(-1, d)).view(b * h * w, k, r + 2 * n)
        dts, Bs, Cs = torch.split(x_dbl, [r, n, n], dim=2)
        dts = dts.view(b, h, w, k, r).permute(0, 3, 4, 1, 2)
        Bs = Bs.view(b, h, w, k, n).permute(0, 3, 4, 1, 2)
        Cs = Cs.view(b, h, w, k, n).permute(0, 3, 4, 1, 2)
        # The step sizes' projection (dt_proj) goes with them: the "cpu" kernel applies it per
        # step, so the (B, k, d, H, W) step sizes are never stored; other backends get them
        # projected first (the same products).
        y = cross_selective_scan(
            x, dts, -torch.exp(self.A_logs.float()), Bs, Cs, D=self.Ds.float(),
            delta_bias=self.dt_projs_bias.float().reshape(-1), delta_softplus=True,
            mode=self.scan_mode, out_float=True, backend=self.scan_backend, delta_proj_weight=self.dt_projs_weight,
        )
        return y.permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C), in the dtype of ``x`` (the scan runs in fp32); plus
        ``residual`` when given (the block's skip connection, added in out_proj's product at
        inference)."""
        d = self.d_inner
        inplace = not torch.is_grad_enabled()  # inference: activations overwrite fresh buffers
        if self.z_gate:  # two products from row slices of in_proj: x and z come out dense
            z = linear(x, self.in_proj.weight[d:], activation="silu")
            x = linear(x, self.in_proj.weight[:d])
        else:
            x = self.in_proj(x)
        x = to_channels_first(x)  # a view: channel-last memory, which the conv runs fastest on
        if self.conv2d is not None:
            x = self.conv2d(x)
        x = F.silu(x, inplace=True) if inplace else self.act(x)
        y = self.forward_core(x)
        y = self.out_norm(y.to(self.out_norm.weight.dtype)).to(x.dtype)
        if self.z_gate:
            y = y.mul_(z) if inplace else y * z
        if residual is not None and is_identity(self.dropout):
            return linear(y, self.out_proj.weight, self.out_proj.bias, residual=residual)
        y = self.dropout(self.out_proj(y))
        return y if residual is None else residual + y

    def extra_repr(self) -> str:
        return (f"d_inner={self.d_inner}, d_state={self.d_state}, dt_rank={self.dt_rank}, "
                f"z_gate={self.z_gate}, scan_mode={self.scan_mode!r}, scan_backend={self.scan_backend!r}")
