"""LayerNorm on CPU: ATen's kernel against vmamba's (``vmamba.ops.layer_norm``).

Part 1, per shape (the rows the zoo normalises at 224 and 512 px, batch 1 and 8): the forward
(``native_layer_norm``) and the backward (``native_layer_norm_backward``, all three gradients)
of ATen against the kernel's ops, interleaved, median microseconds, and the largest difference
of the outputs and gradients.

Part 2 (``--models``): whole inference and training steps (forward, cross-entropy, backward) of
zoo models with the kernel's LayerNorm on and off, interleaved rounds, each timed step after an
untimed one of the same variant, median.

Usage: ``python benchmarks/bench_layer_norm.py [--threads 2] [--rounds 31] [--models vmamba_tiny_s1l8]
[--model-batch 1] [--model-size 224 512]``. The kernel's build follows ``$VMAMBA_CPU_ISA``; ATen's
follows ``ATEN_CPU_CAPABILITY``.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))

import vmamba  # noqa: E402
import vmamba.ops.norm as norm_mod  # noqa: E402
from vmamba.ops.scan_cpu import extension_info, load_extension  # noqa: E402
from ab import median_pair, model_step, setting_ab  # noqa: E402  (benchmarks/ab.py, beside this script)

# (rows, C): vmamba_tiny_s1l8's stages at 224 px batch 1 and 8, its stem, stage 1 at 512 px
SHAPES = [(3136, 96), (784, 192), (196, 384), (49, 768), (12544, 48), (25088, 96), (1568, 384), (16384, 96)]


def bench_shape(rows: int, c: int, rounds: int, ext) -> tuple[float, float, float, float, float]:
    """(ATen / kernel us forward, ATen / kernel us backward, largest difference)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, c, generator=g) * 2 + 0.5
    w, b, dy = torch.randn(c, generator=g), torch.randn(c, generator=g), torch.randn(rows, c, generator=g)
    y, mean, rstd = torch.ops.aten.native_layer_norm(x, [c], w, b, 1e-5)
    y2, mean2, rstd2 = ext.layer_norm(x, w, b, 1e-5)
    ref = torch.ops.aten.native_layer_norm_backward(dy, x, [c], mean, rstd, w, b, [True, True, True])
    got = ext.layer_norm_backward(dy, x, mean2, rstd2, w, True, True, True)
    err = max(((r - n).abs().max() / r.abs().max().clamp_min(1e-12)).item() for r, n in zip((y, *ref), (y2, *got)))
    fwd = median_pair(lambda: torch.ops.aten.native_layer_norm(x, [c], w, b, 1e-5),
                      lambda: ext.layer_norm(x, w, b, 1e-5), rounds)
    bwd = median_pair(lambda: torch.ops.aten.native_layer_norm_backward(dy, x, [c], mean, rstd, w, b, [True] * 3),
                      lambda: ext.layer_norm_backward(dy, x, mean2, rstd2, w, True, True, True), rounds)
    return (*(t * 1e6 for t in fwd), *(t * 1e6 for t in bwd), err)


def bench_model(name: str, batch: int, size: int, mode: str, rounds: int) -> tuple[float, float]:
    """(ms per step with ATen's LayerNorm, with the kernel's) for a zoo model."""
    step = model_step(vmamba.create_model(name, drop_path_rate=0.0), torch.randn(batch, 3, size, size),
                      mode == "train")
    ms = setting_ab(step, norm_mod, "load_extension", {"ATen": lambda: None, "kernel": norm_mod.load_extension},
                    rounds)
    return ms["ATen"], ms["kernel"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=31)
    p.add_argument("--models", nargs="*", default=[], help="zoo models for whole-step A/Bs")
    p.add_argument("--model-batch", type=int, nargs="+", default=[1])
    p.add_argument("--model-size", type=int, nargs="+", default=[224])
    p.add_argument("--model-rounds", type=int, default=15)
    p.add_argument("--no-shapes", action="store_true", help="only the whole-model A/Bs")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    ext = load_extension()
    if ext is None:
        sys.exit(f"the CPU kernel is unavailable: {extension_info().get('error')}")
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads, "
          f"kernel build {extension_info()['isa']}, ATen CPU capability {torch.backends.cpu.get_cpu_capability()}")
    if not args.no_shapes:
        bench_shape(*SHAPES[0], 3, ext)  # untimed warm-up: thread pool, allocator, caches
        print(f"{'rows x C':>12} {'forward ATen/kernel us':>23} {'x':>6} {'backward ATen/kernel us':>24} {'x':>6} "
              f"{'max diff':>9}")
        for rows, c in SHAPES:
            fa, fb, ba, bb, err = bench_shape(rows, c, args.rounds, ext)
            print(f"{f'{rows}x{c}':>12} {f'{fa:.1f} / {fb:.1f}':>23} {fa / fb:>5.2f}x {f'{ba:.1f} / {bb:.1f}':>24} "
                  f"{ba / bb:>5.2f}x {err:>9.1e}", flush=True)
    for name in args.models:
        for size in args.model_size:
            for batch in args.model_batch:
                for mode in ("infer", "train"):
                    a, b = bench_model(name, batch, size, mode, args.model_rounds)
                    print(f"{name} {mode} step, {size} px, batch {batch}: ATen {a:.1f} ms, kernel {b:.1f} ms, "
                          f"{a / b:.3f}x", flush=True)


if __name__ == "__main__":
    main()
