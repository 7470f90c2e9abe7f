"""Input-resolution scaling of a trained model: accuracy and FLOPs at several input sizes.

The paper trains at one resolution and evaluates at larger ones: VMamba's accuracy holds up
while its FLOPs grow linearly in the pixel count.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..utils import pyplot


def resolution_scaling(checkpoint: str | os.PathLike, sizes, data: str = "fashion-mnist", split: str = "val",
                       model: str | None = None, batch_size: int = 100, device: str = "cpu",
                       progress: bool = True) -> list[dict]:
    """Top-1/top-5 accuracy and GFLOPs of ``checkpoint`` at each input side in ``sizes``."""
    from ..train.inference import evaluate_checkpoint, load_for_inference
    from .flops import count_flops

    net, _, _ = load_for_inference(checkpoint, model=model)
    rows = []
    for size in sizes:
        if progress:
            print(f"  evaluating at {size}x{size} ...", flush=True)
        res = evaluate_checkpoint(checkpoint, data=data, split=split, img_size=size, batch_size=batch_size,
                                  model=model, device=device)
        rows.append(dict(size=size, top1=res["acc1"], top5=res["acc5"],
                         gflops=count_flops(net, (size, size)).flops / 1e9))
    return rows


def plot_resolution_scaling(rows: list[dict], path: str | Path, title: str = "") -> Path | None:
    """Accuracy (left axis) and GFLOPs (right axis) against input size."""
    plt = pyplot()
    if plt is None:
        return None
    sizes = [r["size"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(sizes, [r["top1"] for r in rows], marker="o", color="tab:blue", label="top-1")
    ax.set_xlabel("input side (pixels)")
    ax.set_ylabel("top-1 accuracy (%)", color="tab:blue")
    right = ax.twinx()
    right.plot(sizes, [r["gflops"] for r in rows], marker="s", color="tab:red", label="GFLOPs")
    right.set_ylabel("GFLOPs", color="tab:red")
    ax.set_title(title or "Accuracy and cost against input resolution")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
