"""Whole-model A/B: inference with the fused oneDNN products against the same model unfused.

At inference ``vmamba.ops.linear`` runs fc1 + GELU, the v0 z-gate product + SiLU, and out_proj /
fc2 + the block's residual add as one oneDNN call each (``fused_on_onednn``). This script times
the zoo models with that on (``fused``, as shipped) and off (``unfused``: the same product
engine, the activation and the add as separate passes), in one process, interleaved rounds,
median, fp32, 224x224, batch 1 and 8. Logits of the two are compared first.

Usage: ``python benchmarks/bench_fused_inference.py [--models ...] [--threads 2] [--rounds 7]``.
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


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["vmamba_tiny_s1l8", "vanilla_vmamba_tiny"])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    info = machine_info()
    print(f"CPU: {info['cpu']}; ISA: {', '.join(info['isa'])}; torch {torch.__version__}; "
          f"{args.threads} thread(s), {args.rounds} interleaved rounds")
    print(f"dense layers: {linear_info()}")
    if not linear_info()["fused_inference"]:
        print("fusion is off here (setting 'aten', or no usable oneDNN): both variants are the same")
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
