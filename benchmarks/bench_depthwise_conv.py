"""Depthwise 3x3 convolutions: oneDNN against vmamba's CPU kernel (``vmamba.ops.Conv2d``).

Part 1, per shape (SS2D's convolutions of the zoo at 224 and 512 px, batch 1 and 8): the
inference forward and a training forward + backward, channel-last maps as in the models,
oneDNN's (``F.conv2d``) against the kernel's (``vmamba.ops.conv._DepthwiseConv3x3``),
interleaved, median ms; prints the speed-ups (> 1: the kernel faster), the largest relative
difference of the outputs and gradients, and whether ``depthwise_kernel_wins`` sends the shape to
the kernel.

Part 2 (``--models``): whole inference and training steps (forward, cross-entropy, backward) of
zoo models with the kernel on and off (``DEPTHWISE_MAX_PIXELS`` set to 0), interleaved rounds,
each timed step after an untimed one of the same variant, median.

Usage: ``python benchmarks/bench_depthwise_conv.py [--threads 2] [--rounds 15]
[--models vmamba_tiny_s1l8] [--model-batch 1 8]``. The kernel's build follows ``$VMAMBA_CPU_ISA``;
to compare the AVX2 builds on an AVX-512 machine: ``VMAMBA_CPU_ISA=avx2 ONEDNN_MAX_CPU_ISA=AVX2``.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))

import vmamba  # noqa: E402
import vmamba.ops.conv as conv_mod  # noqa: E402
from vmamba.ops.scan_cpu import extension_info, load_extension  # noqa: E402
from ab import median_pair, model_step, setting_ab  # noqa: E402  (benchmarks/ab.py, beside this script)

# (batch, channels, map side): vmamba_tiny_s1l8's four stages at 224 px (batch 1 and 8) and 512 px
SHAPES = [(1, 96, 56), (1, 192, 28), (1, 384, 14), (1, 768, 7), (8, 96, 56), (8, 192, 28), (8, 384, 14),
          (8, 768, 7), (1, 96, 128), (1, 192, 64), (1, 384, 32), (1, 768, 16)]


def bench_shape(batch: int, channels: int, size: int, rounds: int, ext) -> tuple[float, float, float, float, float]:
    """(oneDNN / kernel ms inference, oneDNN / kernel ms training, largest relative difference)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, size, size, generator=g).contiguous(memory_format=torch.channels_last)
    w = (torch.randn(channels, 1, 3, 3, generator=g) * 0.3).requires_grad_()
    b = torch.randn(channels, generator=g).requires_grad_()
    gy = torch.randn(batch, channels, size, size, generator=g).contiguous(memory_format=torch.channels_last)
    x_ref, x_new = x.clone().requires_grad_(), x.clone().requires_grad_()

    def train(variant: str) -> list[torch.Tensor]:
        for t in (x_ref, x_new, w, b):
            t.grad = None
        if variant == "oneDNN":
            y = F.conv2d(x_ref, w, b, 1, 1, 1, channels)
            y.backward(gy)
            return [y.detach(), x_ref.grad, w.grad, b.grad]
        y = conv_mod._DepthwiseConv3x3.apply(x_new, w, b, ext)
        y.backward(gy)
        return [y.detach(), x_new.grad, w.grad, b.grad]

    ref, new = train("oneDNN"), train("kernel")
    err = max(((r - n).abs().max() / r.abs().max().clamp_min(1e-12)).item() for r, n in zip(ref, new))
    with torch.inference_mode():
        taps = conv_mod._taps(w)
        infer = median_pair(lambda: F.conv2d(x, w, b, 1, 1, 1, channels),
                            lambda: conv_mod._depthwise_forward(ext, x, taps, b), rounds)
    training = median_pair(lambda: train("oneDNN"), lambda: train("kernel"), rounds)
    return (*(t * 1e3 for t in infer), *(t * 1e3 for t in training), err)


def bench_model(name: str, batch: int, mode: str, rounds: int) -> tuple[float, float]:
    """(ms per step with oneDNN's depthwise convolutions, with the kernel's) for a zoo model."""
    step = model_step(vmamba.create_model(name, drop_path_rate=0.0), torch.randn(batch, 3, 224, 224), mode == "train")
    ms = setting_ab(step, conv_mod, "DEPTHWISE_MAX_PIXELS", {"oneDNN": 0, "kernel": conv_mod.DEPTHWISE_MAX_PIXELS},
                    rounds)
    return ms["oneDNN"], ms["kernel"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--models", nargs="*", default=[], help="zoo models for whole-step A/Bs")
    p.add_argument("--model-batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--no-shapes", action="store_true", help="only the whole-model A/Bs")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    ext = load_extension()
    if ext is None:
        sys.exit(f"the CPU kernel is unavailable: {extension_info().get('error')}")
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads, "
          f"kernel build {extension_info()['isa']}, oneDNN ISA limit {os.environ.get('ONEDNN_MAX_CPU_ISA', 'none')}")
    if not args.no_shapes:
        bench_shape(*SHAPES[0], 3, ext)  # untimed warm-up: thread pool, allocator, caches
        print(f"{'batch x C x map':>16} {'infer oneDNN/kernel ms':>23} {'x':>6} {'train oneDNN/kernel ms':>23} "
              f"{'x':>6} {'max diff':>9}  kernel chosen")
        for batch, channels, size in SHAPES:
            ia, ib, ta, tb, err = bench_shape(batch, channels, size, args.rounds, ext)
            chosen = conv_mod.depthwise_kernel_wins((batch, channels, size, size), (channels, 1, 3, 3), (1, 1),
                                                    (1, 1), (1, 1), channels)
            print(f"{f'{batch}x{channels}x{size}':>16} {f'{ia:.3f} / {ib:.3f}':>23} {ia / ib:>5.2f}x "
                  f"{f'{ta:.3f} / {tb:.3f}':>23} {ta / tb:>5.2f}x {err:>9.1e}  {'yes' if chosen else 'no'}", flush=True)
    for name in args.models:
        for batch in args.model_batch:
            for mode in ("infer", "train"):
                a, b = bench_model(name, batch, mode, args.rounds)
                print(f"{name} {mode} step, batch {batch}: oneDNN {a:.1f} ms, kernel {b:.1f} ms, {a / b:.3f}x",
                      flush=True)


if __name__ == "__main__":
    main()
