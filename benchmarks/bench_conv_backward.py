"""Strided convolutions: oneDNN against the im2col path of ``vmamba.ops.Conv2d``.

Part 1, per shape (the 3x3 stride-2 downsamplers and stems of the zoo at 224 px and a few
larger maps), channel-last input and weight as in the models: one inference forward, and one
forward and backward, of oneDNN (``F.conv2d``) against the im2col product
(``vmamba.ops.conv._im2col_conv``) and the im2col autograd function
(``vmamba.ops.conv._Im2colConv``), interleaved, median ms, a 64 MB buffer written before each
call so the weight comes from memory as it does inside a model; prints the speed-ups (> 1:
im2col faster), the largest relative gradient difference and whether ``im2col_wins`` picks the
im2col path for the shape.

Part 2 (``--models``): whole training steps (forward, cross-entropy, backward) and inference
forwards of zoo models with the im2col path switched on and off (its threshold raised out of
reach), interleaved rounds, each timed step after an untimed one of the same variant, median.

Usage: ``python benchmarks/bench_conv_backward.py [--threads 2] [--batch 1 8] [--rounds 7]
[--models vmamba_tiny_s1l8] [--model-batch 1 8]``. To see the AVX2 figures on an AVX-512
machine, hold ATen, oneDNN and MKL to AVX2: ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
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

import vmamba  # noqa: E402
import vmamba.ops.conv as conv_mod  # noqa: E402
from ab import model_step, setting_ab  # noqa: E402  (benchmarks/ab.py, beside this script)

# (C_in, C_out, input H = W): 3x3 stride 2 padding 1 convolutions of the zoo (tiny at 224 px: the
# stem's two, the three downsamplers; base's last two; the last one at 512 and 1024 px)
SHAPES = [(3, 48, 224), (48, 96, 112), (96, 192, 56), (192, 384, 28), (384, 768, 14),
          (256, 512, 28), (512, 1024, 14), (384, 768, 32), (384, 768, 64)]


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last)


def bench_shape(cin: int, cout: int, size: int, batch: int, rounds: int) -> tuple[float, ...]:
    """(oneDNN ms, im2col ms) forward + backward, the largest relative gradient difference, and
    (oneDNN ms, im2col ms) of an inference forward, for one shape."""
    g = torch.Generator().manual_seed(0)
    x = _channels_last(torch.randn(batch, cin, size, size, generator=g))
    w = _channels_last(torch.randn(cout, cin, 3, 3, generator=g) * 0.05).requires_grad_()
    b = torch.zeros(cout, requires_grad=True)
    x_ref, x_new = x.clone().requires_grad_(), x.clone().requires_grad_()
    gy = _channels_last(torch.randn(batch, cout, (size + 1) // 2, (size + 1) // 2, generator=g))

    def run(variant: str) -> list[torch.Tensor]:
        for t in (x_ref, x_new, w, b):
            t.grad = None
        if variant == "oneDNN":
            F.conv2d(x_ref, w, b, 2, 1).backward(gy)
            return [x_ref.grad, w.grad, b.grad]
        conv_mod._Im2colConv.apply(x_new, w, b, (2, 2), (1, 1)).backward(gy)
        return [x_new.grad, w.grad, b.grad]

    ref, new = run("oneDNN"), run("im2col")
    err = max(((r - n).abs().max() / r.abs().max().clamp_min(1e-12)).item() for r, n in zip(ref, new))
    xd, wd, bd = x.detach(), w.detach(), b.detach()
    forward = {"oneDNN": lambda: F.conv2d(xd, wd, bd, 2, 1),
               "im2col": lambda: conv_mod._im2col_conv(xd, wd, bd, (2, 2), (1, 1))}
    flush = torch.empty(16 << 20)
    times: dict[str, list[float]] = {k: [] for k in ("oneDNN", "im2col", "oneDNN fwd", "im2col fwd")}
    for r in range(rounds):
        for variant in (("oneDNN", "im2col") if r % 2 == 0 else ("im2col", "oneDNN")):
            flush.fill_(1.0)
            t0 = time.perf_counter()
            run(variant)
            times[variant].append(time.perf_counter() - t0)
            flush.fill_(1.0)
            with torch.inference_mode():
                t0 = time.perf_counter()
                forward[variant]()
                times[variant + " fwd"].append(time.perf_counter() - t0)
    ms = {k: statistics.median(t) * 1e3 for k, t in times.items()}
    return ms["oneDNN"], ms["im2col"], err, ms["oneDNN fwd"], ms["im2col fwd"]


def bench_model(name: str, batch: int, rounds: int, train: bool) -> tuple[float, float]:
    """(ms per training step or inference forward with oneDNN's convolution, with the im2col
    path) for a zoo model."""
    step = model_step(vmamba.create_model(name, drop_path_rate=0.0), torch.randn(batch, 3, 224, 224), train)
    ms = setting_ab(step, conv_mod, "IM2COL_MIN_K", {"oneDNN": 1 << 30, "im2col": conv_mod.IM2COL_MIN_K}, rounds)
    return ms["oneDNN"], ms["im2col"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--models", nargs="*", default=[], help="zoo models for whole-model A/Bs")
    p.add_argument("--modes", nargs="+", choices=["train", "infer"], default=["train", "infer"])
    p.add_argument("--model-batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--no-shapes", action="store_true", help="only the whole-model A/Bs")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads, "
          f"ATen CPU capability {torch.backends.cpu.get_cpu_capability()}")
    if not args.no_shapes:
        print(f"{'C_in -> C_out':>14} {'map':>5} {'batch':>5} {'oneDNN ms':>10} {'im2col ms':>10} "
              f"{'speed-up':>9} {'grad diff':>10} {'fwd oneDNN':>11} {'fwd im2col':>11} {'speed-up':>9}  chosen")
        for cin, cout, size in SHAPES:
            for batch in args.batch:
                a, b, err, fa, fb = bench_shape(cin, cout, size, batch, args.rounds)
                chosen = conv_mod.im2col_wins((batch, cin, size, size), (cout, cin, 3, 3), (2, 2), (1, 1),
                                              (1, 1), 1)
                print(f"{cin:>6} -> {cout:<5} {size:>5} {batch:>5} {a:>10.2f} {b:>10.2f} {a / b:>8.2f}x "
                      f"{err:>10.1e} {fa:>11.2f} {fb:>11.2f} {fa / fb:>8.2f}x  {'yes' if chosen else 'no'}",
                      flush=True)
    for name in args.models:
        for mode in args.modes:
            for batch in args.model_batch:
                a, b = bench_model(name, batch, args.rounds, mode == "train")
                kind = "training step" if mode == "train" else "inference"
                print(f"{name} {kind}, batch {batch}: oneDNN {a:.1f} ms, im2col {b:.1f} ms, {a / b:.3f}x",
                      flush=True)


if __name__ == "__main__":
    main()
