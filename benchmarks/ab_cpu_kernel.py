"""A/B timing of two versions of the CPU scan kernel, interleaved in one process.

On a shared or virtual machine, two benchmark runs minutes apart can differ by more than the
change being measured. This script builds both versions of ``vmamba/ops/cpu/selective_scan.cpp``
(each under its own op namespace, so both load into one process), then calls them alternately on
the same inputs for a number of rounds and reports each version's minimum forward and backward
time and the ratio new / old. It also checks that the two versions' gradients agree.

Usage (from the repository root):

    PYTHONPATH=src python benchmarks/ab_cpu_kernel.py --old HEAD~3          # working tree vs a revision
    PYTHONPATH=src python benchmarks/ab_cpu_kernel.py --old e4310c0~1 --new e4310c0 --shapes s1,s2,v2

Shapes: s1..s4 are the stage shapes of vanilla_vmamba_tiny at 224 px (batch 1, N = 16), v2 the
stage-1 shape of vmamba_tiny_s1l8 (N = 1), s2z stage 2 with the z gate, v2b8 the v2 shape at
batch 8, s2sub stage 2 with decays exp(dt * A) in the subnormal range (dt ~ 20, A ~ -5, as large
steps with a steep A give in trained models). Single thread unless --threads. The kernel ops are called directly (no autograd).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SOURCE = "src/vmamba/ops/cpu/selective_scan.cpp"
SHAPES = {  # name: (D, L, N, batch, z gate)
    "s1": (768, 3136, 16, 1, False), "s2": (1536, 784, 16, 1, False), "s3": (3072, 196, 16, 1, False),
    "s4": (6144, 49, 16, 1, False), "v2": (384, 3136, 1, 1, False), "s2z": (1536, 784, 16, 1, True),
    "v2b8": (384, 3136, 1, 8, False), "s2sub": (1536, 784, 16, 1, False),
}


def kernel_source(rev: str | None) -> str:
    """The kernel source at a git revision, or in the working tree when rev is None."""
    if rev is None:
        return (ROOT / SOURCE).read_text()
    return subprocess.run(["git", "show", f"{rev}:{SOURCE}"], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout


def build(tag: str, source: str):
    """Compile source with its ops renamed to namespace ``vmamba_ab_<tag>``; returns that namespace."""
    from torch.utils import cpp_extension
    from vmamba.ops.scan_cpu import _attempts, cache_dir

    namespace = f"vmamba_ab_{tag}"
    source = source.replace("TORCH_LIBRARY(vmamba_cpu_kernel", f"TORCH_LIBRARY({namespace}")
    key = hashlib.sha256(source.encode()).hexdigest()[:12]
    build_dir = cache_dir().parent / "ab" / f"{tag}-{key}"
    build_dir.mkdir(parents=True, exist_ok=True)
    path = build_dir / f"{tag}.cpp"
    path.write_text(source)
    cflags, ldflags = _attempts()[0]
    cpp_extension.load(name=f"vmamba_ab_{tag}_{key}", sources=[str(path)], extra_cflags=cflags,
                       extra_ldflags=ldflags, build_directory=str(build_dir), is_python_module=False)
    return getattr(torch.ops, namespace)


def inputs(name: str, seed: int = 0):
    D, L, N, batch, gate = SHAPES[name]
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, D, L, generator=g)
    delta = torch.randn(batch, D, L, generator=g) * 0.5 - 1
    A = -torch.rand(D, N, generator=g) - 0.5
    Bt = torch.randn(batch, 4, L, N, generator=g)  # rows layout (batch, G, L, N), as the kernel reads it
    Ct = torch.randn(batch, 4, L, N, generator=g)
    Dv, bias = torch.ones(D), torch.randn(D, generator=g) * 0.1
    if name.endswith("sub"):
        delta = torch.randn(batch, D, L, generator=g) * 0.1 + 20.0
        A = -(torch.rand(D, N, generator=g) * 0.2 + 5.0)
    z = torch.randn(batch, D, L, generator=g) if gate else None
    gy = torch.randn(batch, D, L, generator=g)
    return (u, delta, A, Bt, Ct, Dv, bias, z), gy


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True, help="git revision of the baseline kernel")
    ap.add_argument("--new", default=None, help="git revision of the new kernel (default: working tree)")
    ap.add_argument("--shapes", default="s1,s2,s3,v2,s2z")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    ops = {"old": build("old", kernel_source(args.old)), "new": build("new", kernel_source(args.new))}
    torch.set_num_threads(args.threads)
    print(f"old = {args.old}, new = {args.new or 'working tree'}; {args.rounds} rounds, {args.threads} thread(s); "
          f"minimum ms per call")
    print("| shape | old fwd | old bwd | new fwd | new bwd | new/old fwd | new/old bwd | max grad diff |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.shapes.split(","):
        ins, gy = inputs(name)
        best = {tag: [float("inf"), float("inf")] for tag in ops}
        grads = {}
        for _ in range(args.rounds):
            for tag, op in ops.items():
                t = time.perf_counter()
                y, _, states = op.forward(*ins, True, True, 1, 0)
                t_fwd = time.perf_counter() - t
                t = time.perf_counter()
                out = op.backward(gy, None, *ins, states, True, 1, 0)
                t_bwd = time.perf_counter() - t
                best[tag] = [min(best[tag][0], t_fwd), min(best[tag][1], t_bwd)]
                grads[tag] = [o.sum(2) if i in (3, 4) else o for i, o in enumerate(out)]  # dB/dC: sum partials
                del y, states, out
        diff = max(((a - b).abs().max() / (a.abs().max() + 1e-30)).item()
                   for a, b in zip(grads["old"], grads["new"]) if a.numel())
        (of, ob), (nf, nb) = best["old"], best["new"]
        print(f"| {name} | {of * 1e3:.2f} | {ob * 1e3:.2f} | {nf * 1e3:.2f} | {nb * 1e3:.2f} | {nf / of:.3f} | "
              f"{nb / ob:.3f} | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
