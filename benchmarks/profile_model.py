"""Where a whole model's CPU time goes: torch.profiler self-time per kind of op, zoo and timm side by side.

For each model (zoo names, or timm names with ``timm:`` in front), one warm-up and ``--reps``
profiled steps (inference, or a training step: forward, cross-entropy, backward) at the given
size, batch and thread count; prints the self CPU time per step of each op group (matmul, scan,
conv, norm, activation, copy/layout, elementwise, other) in ms and as a share of the step, so the
arithmetic every backbone shares (matmul) can be told from what only one of them pays; then the
per-step overhead figures: the profiled wall ms, the number of top-level ATen ops (those no other
op called) and the wall time outside them (Python and dispatch between the ops, inflated by the
profiler's own cost per op; for training steps approximate, autograd's backward ops running in
another thread).

Usage: ``python benchmarks/profile_model.py [--models vmamba_tiny_s1l8 timm:swin_tiny_patch4_window7_224 ...]
[--size 224] [--batch 1] [--threads 2] [--train] [--preload FILE]``
"""
from __future__ import annotations

import argparse
import collections
import os
import runpy
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))

import vmamba  # noqa: E402

# op name (substring, lower case) -> group; the first match wins
GROUPS = [
    ("norm", ("vmamba_cpu_kernel::layer_norm",)),      # the CPU kernel's other ops, before "scan"
    ("conv", ("vmamba_cpu_kernel::depthwise", "_depthwiseconv")),
    ("scan", ("selective_scan", "vmamba::", "vmamba_cpu")),
    ("matmul", ("addmm", "aten::mm", "aten::bmm", "matmul", "linear", "baddbmm", "_mkl")),
    ("conv", ("conv", "mkldnn_convolution")),
    ("norm", ("layer_norm", "batch_norm", "native_layer_norm", "group_norm")),
    ("activation", ("gelu", "silu", "relu", "softmax", "sigmoid", "softplus")),
    ("copy/layout", ("copy_", "contiguous", "clone", "cat", "stack", "permute", "transpose", "roll", "pad",
                     "index", "gather", "to_copy", "_to_copy", "fill_", "zero_")),
    ("elementwise", ("add", "mul", "div", "sub", "exp", "neg", "sum", "mean", "where", "masked")),
]


def group_of(name: str) -> str:
    """The op group a profiler event name belongs to."""
    low = name.lower()
    for group, keys in GROUPS:
        if any(k in low for k in keys):
            return group
    return "other"


def build(name: str, size: int):
    """A zoo model, or a timm one for ``timm:NAME``, with 1000 classes, for ``size`` x ``size``
    inputs (the peer benchmark's builder: position tables sized for ``size``), in eval mode."""
    from vmamba.analysis.peers import build_model

    if name.startswith("timm:"):
        import timm

        return build_model(name[5:], size, timm=timm).eval()
    return build_model(name, size).eval()


def profile(model, x, train: bool, reps: int) -> tuple[dict, float, dict]:
    """Self CPU ms per group per step, their total, and the step's overhead figures: profiled wall
    ms, top-level ops (those not called by another op) and the wall time outside them (Python and
    dispatch between the ops, inflated by the profiler's own cost per op), per step."""
    target = torch.zeros(x.shape[0], dtype=torch.long)

    def step():
        if train:
            model.train()
            model.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), target).backward()
        else:
            with torch.no_grad():
                model(x)

    step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(reps):
            step()
        wall = (time.perf_counter() - start) * 1e3 / reps
    per_group = collections.Counter()
    for ev in prof.key_averages():
        per_group[group_of(ev.key)] += ev.self_cpu_time_total / 1e3 / reps
    total = sum(per_group.values())
    # the main thread's top-level ops (autograd's backward runs in its own thread: training steps
    # count the forward's ops and the backward's nodes separately, so "between ops" is approximate)
    events = prof.events()
    main_thread = events[0].thread
    top = [ev for ev in events if ev.cpu_parent is None and ev.thread == main_thread]
    in_ops = sum(ev.cpu_time_total for ev in top) / 1e3 / reps
    overhead = {"wall (profiled)": wall, "top-level ops": len(top) / reps, "between ops": wall - in_ops}
    return dict(per_group), total, overhead


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["vmamba_tiny_s1l8", "vanilla_vmamba_tiny",
                                                   "timm:swin_tiny_patch4_window7_224", "timm:convnext_tiny"])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--train", action="store_true", help="profile a training step instead of inference")
    p.add_argument("--preload", help="a Python file run before timm is imported (a fix-up an installation needs)")
    args = p.parse_args(argv)
    if args.preload:
        runpy.run_path(args.preload)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size)
    groups = list(dict.fromkeys(g for g, _ in GROUPS)) + ["other"]
    rows = []
    for name in args.models:
        try:
            model = build(name, args.size)
        except Exception as e:  # timm missing or unimportable: say so, profile the rest
            print(f"{name}: skipped ({type(e).__name__}: {e})")
            continue
        per_group, total, overhead = profile(model, x, args.train, args.reps)
        rows.append((name, per_group, total, overhead))
    kind = "training step" if args.train else "inference"
    print(f"{kind}, {args.size}x{args.size}, batch {args.batch}, {args.threads} threads, torch {torch.__version__}; "
          "self CPU ms per step (share)")
    print(f"{'group':<12}" + "".join(f"{n.replace('timm:', '')[:22]:>24}" for n, _, _, _ in rows))
    for g in groups:
        print(f"{g:<12}" + "".join(f"{pg.get(g, 0.0):>15.1f} ({100 * pg.get(g, 0.0) / t:4.1f}%)"
                                   for _, pg, t, _ in rows))
    print(f"{'total':<12}" + "".join(f"{t:>24.1f}" for _, _, t, _ in rows))
    for key in ("wall (profiled)", "top-level ops", "between ops"):
        print(f"{key:<16}" + "".join(f"{o[key]:>20.1f}" + ("    " if key != "top-level ops" else "    ")
                                     for _, _, _, o in rows).rstrip())


if __name__ == "__main__":
    main()
