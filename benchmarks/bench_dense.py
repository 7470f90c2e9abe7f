"""The dense layers' products on ATen (MKL's sgemm) against oneDNN, per shape, interleaved in one process.

For the products of ``vmamba_tiny_s1l8`` at 224 px (batch 1 and 8: M = tokens, K = in, N = out)
and a 1024^3 reference, times the three products of a linear layer on each engine, alternating
the engines round by round, and prints the median GFLOP/s and the speed of oneDNN over ATen:

* forward ``x @ W^T``: ``F.linear`` against ``torch.ops.mkldnn._linear_pointwise``;
* input gradient ``dY @ W``: ``mm`` against the oneDNN op on ``W``'s transposed view;
* weight gradient ``dY^T @ X``: ``mm`` against the oneDNN op on transposed views
  (``vmamba.ops.dense`` sends it to oneDNN only with AVX-512 and up to ``WEIGHT_GRAD_MAX_ROWS``
  rows; shown so the choice can be rechecked).

Usage: ``python benchmarks/bench_dense.py [--threads 1] [--rounds 9]``. To see what an AVX2-only
CPU of the same vendor would get, limit both libraries: ``ONEDNN_MAX_CPU_ISA=AVX2
MKL_ENABLE_INSTRUCTIONS=AVX2``.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))

from vmamba.analysis.peers import machine_info  # noqa: E402

# (label, M, K, N)
SHAPES = [
    ("stage-1 in/out_proj, b1", 3136, 96, 96),
    ("stage-1 fc1, b1", 3136, 96, 384),
    ("stage-1 fc2, b1", 3136, 384, 96),
    ("stage-2 fc1, b1", 784, 192, 768),
    ("stage-3 fc2, b1", 196, 1536, 384),
    ("stage-4 fc1, b1", 49, 768, 3072),
    ("stage-1 fc1, b8", 25088, 96, 384),
    ("1024^3", 1024, 1024, 1024),
]


def _onednn(a, w):
    return torch.ops.mkldnn._linear_pointwise(a, w, None, "none", [], "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    info = machine_info(kernel=False)
    print(f"CPU: {info['cpu']} ({platform.machine()}); ISA: {', '.join(info['isa'])}; ATen: {info['aten_capability']}; "
          f"torch {torch.__version__}; {args.threads} thread(s), {args.rounds} interleaved rounds; "
          f"ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', '-')}, "
          f"MKL_ENABLE_INSTRUCTIONS={os.environ.get('MKL_ENABLE_INSTRUCTIONS', '-')}")
    print("| product | M x K x N | fwd ATen | fwd oneDNN | x | dX ATen | dX oneDNN | x | dW ATen | dW oneDNN | x |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for label, m, k, n in SHAPES:
        g = torch.Generator().manual_seed(0)
        x, w, dy = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g), torch.randn(m, n, generator=g)
        pairs = {
            "fwd": (lambda: F.linear(x, w), lambda: _onednn(x, w)),
            "dX": (lambda: dy.mm(w), lambda: _onednn(dy, w.t())),
            "dW": (lambda: dy.t().mm(x), lambda: _onednn(dy.t(), x.t())),
        }
        cells = []
        for name, (aten, onednn) in pairs.items():
            torch.testing.assert_close(onednn(), aten(), rtol=1e-3, atol=1e-3 * k ** 0.5)
            times = {0: [], 1: []}
            for fn in (aten, onednn, aten, onednn):
                fn()
            for r in range(args.rounds):
                for i in ((0, 1) if r % 2 == 0 else (1, 0)):
                    fn = (aten, onednn)[i]
                    t = time.perf_counter()
                    fn()
                    times[i].append(time.perf_counter() - t)
            flops = 2.0 * m * k * n
            ga, go = (flops / statistics.median(times[i]) / 1e9 for i in (0, 1))
            cells += [f"{ga:.0f}", f"{go:.0f}", f"{go / ga:.2f}"]
        print(f"| {label} | {m} x {k} x {n} | " + " | ".join(cells) + " |")
    print("GFLOP/s, median of the rounds; x = oneDNN / ATen (> 1: oneDNN faster).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
