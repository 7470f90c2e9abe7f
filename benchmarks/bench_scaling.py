"""Input-size scaling on this machine: VMamba against timm peers, with fitted exponents.

Runs `vmamba bench` (inference, batch 1) over a range of sizes and writes
outputs/scaling_cpu/{bench.csv,bench.json,bench.png}. On a CPU-only torch, the registry's
torchvision (which timm imports) needs a CPU shim: pass the folder holding
torchvision_cpu_shim.py with --shim.

    python benchmarks/bench_scaling.py --shim DIR
"""
from __future__ import annotations

import argparse
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shim", help="folder holding torchvision_cpu_shim.py (CPU-only torch + timm)")
    parser.add_argument("--sizes", nargs="+", default=["224", "384", "512", "768", "1024"])
    parser.add_argument("--models", nargs="+", default=["vanilla_vmamba_tiny", "vmamba_tiny_s1l8"])
    parser.add_argument("--peers", nargs="*", default=["deit_small", "swin_tiny", "convnext_tiny", "resnet50"])
    parser.add_argument("--reps", default="3")
    parser.add_argument("--out", default="outputs/scaling_cpu")
    args = parser.parse_args()
    if args.shim:
        sys.path.insert(0, args.shim)
        import torchvision_cpu_shim  # noqa: F401
    from vmamba.cli import main as vmamba_main

    return vmamba_main(["bench", "--models", *args.models, "--peers", *args.peers, "--sizes", *args.sizes,
                        "--reps", args.reps, "--warmup", "1", "--out", args.out])


if __name__ == "__main__":
    sys.exit(main())
