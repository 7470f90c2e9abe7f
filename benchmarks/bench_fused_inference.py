"""Whole-model A/B: inference with the fused oneDNN products against the same model unfused.

At inference ``vmamba.ops.linear`` runs fc1 + GELU, the v0 z-gate product + SiLU, and out_proj /
fc2 + the block's residual add as one oneDNN call each (``fused_on_onednn``). This script times
the zoo models with that on (``fused``, as shipped) and off (``unfused``: the same product
engine, the activation and the add as separate passes), in one process, interleaved rounds,
median, fp32, 224x224, batch 1 and 8. Logits of the two are compared first.

With ``--products``, times single products instead: ATen's product followed by an in-place
GELU or residual add, against the oneDNN call with the GELU or the add in its epilogue, at the
MLP shapes of the tiny models at 224 px (batch 1 and 8), with the caches flushed before each call
as inside a whole forward.

Usage: ``python benchmarks/bench_fused_inference.py [--models ...] [--threads 2] [--rounds 7] [--products]``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))

import vmamba  # noqa: E402
from vmamba.analysis.peers import machine_info  # noqa: E402
from vmamba.ops import dense, linear_info  # noqa: E402


def run(model, x, fused: bool) -> torch.Tensor:
    """One forward with fusion on or off."""
    saved = dense.fused_on_onednn
    if not fused:
        dense.fused_on_onednn = lambda: False
    try:
        with torch.no_grad():
            return model(x)
    finally:
        dense.fused_on_onednn = saved


# (M, K, N) of fc1 (K -> N); fc2 is the same with K and N exchanged
PRODUCTS = [(196, 96, 384), (3136, 96, 384), (25088, 96, 384), (784, 192, 768), (6272, 192, 768),
            (196, 384, 1536), (3136, 384, 1536), (49, 768, 3072), (784, 768, 3072)]


def time_products(rounds: int) -> None:
    """Per MLP product: ATen + in-place pass against the fused oneDNN call (ms, median)."""
    import torch.nn.functional as F

    op = torch.ops.mkldnn._linear_pointwise
    flush = torch.empty(48 * 2 ** 20 // 4)

    def median_ms(fn) -> float:
        ts = []
        for _ in range(rounds):
            flush.add_(1.0)
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return statistics.median(ts) * 1e3

    print("| M x K x N | ATen + gelu_ | fused GELU | x | ATen + add_ | fused add | x |")
    print("|---|---|---|---|---|---|---|")
    g = torch.Generator().manual_seed(0)
    for m, k, n in PRODUCTS:
        x, w, b = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g) / k ** 0.5, torch.randn(n, generator=g)
        h, w2, b2, r = (torch.randn(m, n, generator=g), torch.randn(k, n, generator=g) / n ** 0.5,
                        torch.randn(k, generator=g), torch.randn(m, k, generator=g))
        with torch.no_grad():
            cells = [median_ms(lambda: torch.ops.aten.gelu_(F.linear(x, w, b))),
                     median_ms(lambda: op(x, w, b, "gelu", [], "none")),
                     median_ms(lambda: F.linear(h, w2, b2).add_(r)),
                     median_ms(lambda: op.binary(h, r, w2, b2, "add"))]
        print(f"| {m} x {k} x {n} | {cells[0]:.3f} | {cells[1]:.3f} | {cells[0] / cells[1]:.2f} "
              f"| {cells[2]:.3f} | {cells[3]:.3f} | {cells[2] / cells[3]:.2f} |", flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["vmamba_tiny_s1l8", "vanilla_vmamba_tiny"])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--products", action="store_true", help="time single MLP products instead of models")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    info = machine_info()
    print(f"CPU: {info['cpu']}; ISA: {', '.join(info['isa'])}; torch {torch.__version__}; "
          f"{args.threads} thread(s), {args.rounds} interleaved rounds")
    print(f"dense layers: {linear_info()}")
    if not linear_info()["fused_inference"]:
        print("fusion is off here (setting 'aten', or no usable oneDNN): both variants are the same")
    if args.products:
        if not dense.onednn_available():
            raise SystemExit("oneDNN's linear op is not usable in this PyTorch: no fused products to time")
        time_products(args.rounds)
        return
    print("| model | batch | unfused ms | fused ms | x | max logit diff |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        model = vmamba.create_model(name).eval()
        for batch in args.batch:
            x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
            diff = (run(model, x, True) - run(model, x, False)).abs().max().item()
            times = {True: [], False: []}
            for r in range(args.rounds):
                for fused in ((True, False) if r % 2 else (False, True)):
                    run(model, x, fused)
                    t = time.perf_counter()
                    run(model, x, fused)
                    times[fused].append(time.perf_counter() - t)
            off, on = statistics.median(times[False]) * 1e3, statistics.median(times[True]) * 1e3
            print(f"| {name} | {batch} | {off:.1f} | {on:.1f} | {off / on:.3f} | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
