"""Per-call cost of the CPU cross scan on a tiny map, where the Python and autograd around the
kernel dominate: mean microseconds per ``cross_selective_scan`` call, without and with gradients.

Usage: ``python benchmarks/bench_call_overhead.py [--calls 500]`` (1 thread).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))

from vmamba.analysis.peers import machine_info  # noqa: E402
from vmamba.ops import cross_selective_scan  # noqa: E402


def per_call_us(fn, calls: int) -> float:
    """Mean wall microseconds of ``fn()`` over ``calls`` calls, after 50 warm-up calls."""
    for _ in range(50):
        fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=500)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    info = machine_info(kernel=False)
    print(f"CPU: {info['cpu']}; ISA: {', '.join(info['isa'])}; torch {torch.__version__}; 1 thread")
    print("| map (b x d x h x w, N) | no grad us/call | grad us/call |")
    print("|---|---|---|")
    for b, d, h, n in [(1, 16, 2, 1), (1, 384, 14, 1)]:
        x = torch.randn(b, d, h, h).contiguous(memory_format=torch.channels_last)
        delta = torch.randn(4, b, h, h, d).permute(1, 0, 4, 2, 3)
        A, B, C = -torch.rand(4 * d, n), torch.randn(b, 4, n, h, h), torch.randn(b, 4, n, h, h)
        D, bias = torch.ones(4 * d), torch.zeros(4 * d)
        xg = x.clone().requires_grad_()

        def call(inp):
            return cross_selective_scan(inp, delta, A, B, C, D=D, delta_bias=bias, delta_softplus=True,
                                        out_float=True)

        with torch.no_grad():
            plain = per_call_us(lambda: call(x), args.calls)
        graded = per_call_us(lambda: call(xg), args.calls)
        print(f"| {b} x {d} x {h} x {h}, {n} | {plain:.1f} | {graded:.1f} |", flush=True)


if __name__ == "__main__":
    main()
