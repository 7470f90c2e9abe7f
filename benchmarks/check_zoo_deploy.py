"""Compile and export every zoo model at full size (depths and widths as released), in one run.

The tests compile and export a small model of each family; this script covers the nine registered
models themselves, on a small input (64x64 by default: compile and export time grows with the
number of blocks, not with the pixels). For each model:

* ``compile_model`` (torch.compile, fullgraph) in eval on the scan backend given by ``--backend``:
  outputs at batch 2 and 3 against eager, and whether batch 3 reused batch 2's graph;
* a compiled training step (forward + backward of the summed logits): loss and the largest
  relative gradient difference against eager;
* ``export_program`` (torch.export, dynamic batch): the program at batch 2 against eager.

Prints one row per model with times and differences and exits non-zero if any check fails.
Usage: ``python benchmarks/check_zoo_deploy.py [--models ...] [--size 64] [--no-train] [--no-export]``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))

import vmamba  # noqa: E402
from vmamba.deploy import compile_model, export_program  # noqa: E402


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest |a - b| relative to max(1, max |b|)."""
    return float((a - b).abs().max() / b.abs().max().clamp_min(1.0))


def check(name: str, size: int, backend: str, train: bool, export: bool) -> dict:
    """Run the checks on one model; returns the row of results."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = vmamba.create_model(name, scan_backend=backend).eval()
    x2, x3 = torch.randn(2, 3, size, size), torch.randn(3, 3, size, size)
    row = {"model": name}
    with torch.no_grad():
        ref2, ref3 = model(x2), model(x3)
        compiled = compile_model(model)
        t = time.perf_counter()
        out2 = compiled(x2)
        row["compile s"] = time.perf_counter() - t
        frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        out3 = compiled(x3)
        row["batch 3 recompiled"] = torch._dynamo.utils.counters["stats"]["unique_graphs"] > frames
        row["eval diff"] = max(rel_diff(out2, ref2), rel_diff(out3, ref3))
    if train:
        model.train()
        torch.manual_seed(1)
        model(x2).sum().backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        t = time.perf_counter()
        compile_model(model)(x2).sum().backward()
        row["train compile s"] = time.perf_counter() - t
        row["grad diff"] = max(rel_diff(p.grad, grads[k]) for k, p in model.named_parameters() if k in grads)
        model.zero_grad(set_to_none=True)
        model.eval()
    if export:
        t = time.perf_counter()
        program = export_program(model, size=(size, size), batch=2)
        row["export s"] = time.perf_counter() - t
        with torch.no_grad():
            row["export diff"] = rel_diff(program.module()(x3), ref3)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=vmamba.list_models())
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--no-train", action="store_true")
    ap.add_argument("--no-export", action="store_true")
    ap.add_argument("--tolerance", type=float, default=1e-5, help="eval and export; gradients get 10x")
    args = ap.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, input {args.size}x{args.size}, "
          f"scan backend {args.backend}")
    failed = []
    for name in args.models:
        row = check(name, args.size, args.backend, not args.no_train, not args.no_export)
        ok = (row["eval diff"] <= args.tolerance and not row["batch 3 recompiled"]
              and row.get("grad diff", 0.0) <= 10 * args.tolerance and row.get("export diff", 0.0) <= args.tolerance)
        if not ok:
            failed.append(name)
        print("| " + " | ".join(f"{k}: {v:.3g}" if isinstance(v, float) else f"{k}: {v}" for k, v in row.items())
              + f" | {'ok' if ok else 'FAILED'} |", flush=True)
    print("all passed" if not failed else f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
