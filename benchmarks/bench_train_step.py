"""Two parts of a CPU training step: the AdamW step, and the drop path's residual add.

1. The optimizer step alone over a zoo model's parameters (random gradients): PyTorch's default
   AdamW, ``foreach=True`` and ``fused=True`` (what ``vmamba.utils.adamw`` picks), median ms.
2. Whole training steps (forward, cross-entropy, backward; no optimizer) of the model with its
   default drop-path rates, ``DropPath.add_to`` as it is (one ``addcmul``) against
   ``residual + drop_path(x)`` (a multiply and an add over the branch), interleaved rounds, each
   timed step after an untimed one of the same variant, median.

Usage: ``python benchmarks/bench_train_step.py [--model vmamba_tiny_s1l8] [--threads 2]
[--batch 1 8] [--rounds 9]``.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))

import vmamba  # noqa: E402
from vmamba.models.layers import DropPath  # noqa: E402
from vmamba.utils import cpu_info  # noqa: E402
from ab import model_step, setting_ab  # noqa: E402  (benchmarks/ab.py, beside this script)


def optimizer_step_ms(model, reps: int = 15) -> dict[str, float]:
    """Median ms of one AdamW step over ``model``'s parameters, per implementation."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p)
    out = {}
    for name, kwargs in (("default", {}), ("foreach", {"foreach": True}), ("fused", {"fused": True})):
        opt = torch.optim.AdamW(params, lr=1e-6, **kwargs)
        for _ in range(3):
            opt.step()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            opt.step()
            times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times) * 1e3
    for p in params:
        p.grad = None
    return out


def drop_path_ab(model, batch: int, rounds: int) -> tuple[float, float]:
    """(ms per training step with the unfused residual add, with ``DropPath.add_to``)."""
    fused = DropPath.add_to

    def unfused(self, residual, x):
        return residual + self(x)

    step = model_step(model, torch.randn(batch, 3, 224, 224), train=True)
    ms = setting_ab(step, DropPath, "add_to", {"unfused": unfused, "add_to": fused}, rounds)
    return ms["unfused"], ms["add_to"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="vmamba_tiny_s1l8")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--rounds", type=int, default=9)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{cpu_info().get('model name', platform.processor())}, torch {torch.__version__}, {args.threads} threads")
    model = vmamba.create_model(args.model)
    n = sum(p.numel() for p in model.parameters())
    steps = optimizer_step_ms(model)
    print(f"{args.model} AdamW step ({n / 1e6:.1f} M parameters, {len(list(model.parameters()))} tensors): "
          + ", ".join(f"{k} {v:.1f} ms" for k, v in steps.items()))
    for batch in args.batch:
        a, b = drop_path_ab(model, batch, args.rounds)
        print(f"{args.model} training step, batch {batch}: residual + drop_path {a:.1f} ms, "
              f"DropPath.add_to {b:.1f} ms, {a / b:.3f}x", flush=True)


if __name__ == "__main__":
    main()
