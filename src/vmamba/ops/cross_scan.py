"""Cross-scan and cross-merge: a 2D map to K = 4 sequences and back (VMamba's CSM).

Scan orders for x: (B, C, H, W), L = H * W, ``row`` = row-major flatten, ``col`` = column-major:

=========  ===============================  =============================================
mode       cross_scan -> (B, 4, C, L)       cross_merge (B, 4, C, H, W) -> (B, C, L)
=========  ===============================  =============================================
cross2d    row, col, flip(row), flip(col)   y0 + flip(y2) + T(y1 + flip(y3))
unidi      row, row, row, row               y0 + y1 + y2 + y3
bidi       row, row, flip(row), flip(row)   y0 + y1 + flip(y2 + y3)
=========  ===============================  =============================================

T maps a column-major sequence back to row-major. :func:`scan_order` reads tensors that carry one
map per direction, (B, 4, X, H, W), each slot in its own direction's order. Both maps are linear and cross_merge is the
adjoint of cross_scan, so each is the other's backward; autograd derives them here.
"""
from __future__ import annotations

import torch

SCAN_MODES = ("cross2d", "unidi", "bidi")


def check_scan_mode(mode: str) -> None:
    """Raise a ValueError naming the choices unless ``mode`` is one of :data:`SCAN_MODES`."""
    if mode not in SCAN_MODES:
        raise ValueError(f"unknown scan mode {mode!r}; choose one of {SCAN_MODES}")


def cross_scan(x: torch.Tensor, mode: str = "cross2d") -> torch.Tensor:
    """(B, C, H, W) -> (B, 4, C, H*W): the four scan sequences of ``mode`` (see module doc)."""
    check_scan_mode(mode)
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"cross_scan: x must have shape (B, C, H, W), got {got}")
    row = x.flatten(2)
    if mode == "cross2d":
        col = x.transpose(2, 3).flatten(2)
        return torch.stack([row, col, row.flip(-1), col.flip(-1)], dim=1)
    if mode == "unidi":
        return torch.stack([row, row, row, row], dim=1)
    return torch.stack([row, row, row.flip(-1), row.flip(-1)], dim=1)


def cross_merge(ys: torch.Tensor, mode: str = "cross2d", size: tuple[int, int] | None = None) -> torch.Tensor:
    """(B, 4, C, H, W) -> (B, C, H*W): sum the four sequences back in row-major order.

    ``ys`` may also be (B, 4, C, L) when ``size=(H, W)`` is given.
    """
    check_scan_mode(mode)
    if not isinstance(ys, torch.Tensor) or ys.dim() not in (4, 5) or ys.shape[1] != 4:
        got = tuple(ys.shape) if isinstance(ys, torch.Tensor) else type(ys).__name__
        raise ValueError(f"cross_merge: ys must have shape (B, 4, C, H, W), got {got}")
    if ys.dim() == 5:
        h, w = ys.shape[-2:]
        if size is not None and tuple(size) != (h, w):
            raise ValueError(f"cross_merge: size={tuple(size)} disagrees with ys of shape {tuple(ys.shape)}")
    else:
        if size is None:
            raise ValueError("cross_merge: (B, 4, C, L) input needs size=(H, W)")
        h, w = size
        if h * w != ys.shape[-1]:
            raise ValueError(f"cross_merge: size={tuple(size)} does not match L={ys.shape[-1]}")
    b, _, c = ys.shape[:3]
    ys = ys.reshape(b, 4, c, h * w)
    if mode == "cross2d":
        col = ys[:, 1] + ys[:, 3].flip(-1)
        col = col.reshape(b, c, w, h).transpose(2, 3).reshape(b, c, h * w)
        return ys[:, 0] + ys[:, 2].flip(-1) + col
    if mode == "unidi":
        return ys.sum(dim=1)
    return ys[:, 0] + ys[:, 1] + (ys[:, 2] + ys[:, 3]).flip(-1)


def scan_order(t: torch.Tensor, mode: str = "cross2d") -> torch.Tensor:
    """Per-direction maps (B, 4, X, H, W) -> (B, 4, X, H*W), slot k read in scan order k of ``mode``."""
    check_scan_mode(mode)
    row = t.flatten(3)
    if mode == "unidi":
        return row
    if mode == "bidi":
        return torch.cat([row[:, :2], row[:, 2:].flip(-1)], dim=1)
    col = t.transpose(3, 4).flatten(3)
    return torch.stack([row[:, 0], col[:, 1], row[:, 2].flip(-1), col[:, 3].flip(-1)], dim=1)
