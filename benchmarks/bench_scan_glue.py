"""The Python around the CPU cross-scan kernel: B/C reordered by one cached-index gather against
the stack of transposes and flips of ``scan_order`` used before.

One process, interleaved rounds, median. Per call of ``cross_selective_scan`` (with the step
sizes projected by the kernel, as SS2D calls it) at the stage shapes of ``vmamba_tiny_s1l8`` and
``vanilla_vmamba_tiny`` (batch 1): the forward without gradients and forward + backward; then
whole ``vmamba_tiny_s1l8`` steps (inference at batch 1, training at batch 1). ``before`` swaps the
two reorder functions of ``vmamba.ops.scan_cpu`` for their earlier versions (kept below).

Usage: ``python benchmarks/bench_scan_glue.py [--rounds 7] [--threads 2]``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import vmamba  # noqa: E402
from vmamba.ops import cross_selective_scan, scan_cpu, scan_order  # noqa: E402
from vmamba.utils import cpu_info  # noqa: E402


def scan_rows_before(m, mode):
    return scan_order(m.float(), mode).transpose(-1, -2).contiguous()


def pixel_grad_before(partials, mode, h, w):
    t = partials.sum(2).transpose(-1, -2)
    b, k, x, _ = t.shape
    if mode == "unidi":
        return t.reshape(b, k, x, h, w)
    if mode == "bidi":
        return torch.cat([t[:, :2], t[:, 2:].flip(-1)], dim=1).reshape(b, k, x, h, w)
    row = torch.stack([t[:, 0], t[:, 2].flip(-1)], dim=1).reshape(b, 2, x, h, w)
    col = torch.stack([t[:, 1], t[:, 3].flip(-1)], dim=1).reshape(b, 2, x, w, h).transpose(-1, -2)
    return torch.stack([row[:, 0], col[:, 0], row[:, 1], col[:, 1]], dim=1).contiguous()


NOW = (scan_cpu._scan_rows, scan_cpu._pixel_grad)
BEFORE = (scan_rows_before, pixel_grad_before)


def use(fns) -> None:
    scan_cpu._scan_rows, scan_cpu._pixel_grad = fns


def scan_case(d, h, n, r):
    """A call as SS2D makes it, at batch 1: returns (no-grad call, forward + backward call)."""
    rows = torch.randn(h * h, 4, r + 2 * n)
    dts = rows[..., :r].view(1, h, h, 4, r).permute(0, 3, 4, 1, 2)
    B = rows[..., r:r + n].view(1, h, h, 4, n).permute(0, 3, 4, 1, 2)
    C = rows[..., r + n:].view(1, h, h, 4, n).permute(0, 3, 4, 1, 2)
    x = torch.randn(1, h, h, d).permute(0, 3, 1, 2).requires_grad_()
    weight = (torch.randn(4, r, d) * r ** -0.5).transpose(1, 2).requires_grad_()
    A, D, bias = -torch.rand(4 * d, n), torch.ones(4 * d), torch.zeros(4 * d)

    def call():
        return cross_selective_scan(x, dts, A, B, C, D=D, delta_bias=bias, delta_softplus=True,
                                    out_float=True, delta_proj_weight=weight)

    def infer():
        with torch.no_grad():
            call()

    def train():
        call().sum().backward()
    return infer, train


def timed(fn, reps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps * 1e3


def ab(name: str, fn, reps: int, rounds: int) -> None:
    for fns in (BEFORE, NOW):
        use(fns)
        fn()
    times = {"before": [], "now": []}
    for r in range(rounds):
        for label in (("before", "now") if r % 2 == 0 else ("now", "before")):
            use(BEFORE if label == "before" else NOW)
            times[label].append(timed(fn, reps))
    use(NOW)
    before, now = statistics.median(times["before"]), statistics.median(times["now"])
    print(f"| {name} | {before:.3f} | {now:.3f} | {before / now:.2f}x |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_info().get('model name', '?')}; torch {torch.__version__}; {args.threads} threads")
    print("| case | before ms | now ms | speed-up |")
    print("|---|---|---|---|")
    for label, (d, h, n, r) in {"s1l8 stage 1": (96, 56, 1, 6), "s1l8 stage 3": (384, 14, 1, 24),
                                "s1l8 stage 4": (768, 7, 1, 48), "vanilla stage 3": (768, 14, 16, 24)}.items():
        infer, train = scan_case(d, h, n, r)
        ab(f"{label} call, no grad", infer, 20, args.rounds)
        ab(f"{label} call, fwd + bwd", train, 10, args.rounds)
    model = vmamba.create_model("vmamba_tiny_s1l8")
    x = torch.randn(1, 3, 224, 224)
    target = torch.zeros(1, dtype=torch.long)

    def infer_model():
        with torch.no_grad():
            model.eval()(x)

    def train_model():
        F.cross_entropy(model.train()(x), target).backward()
        model.zero_grad(set_to_none=True)
    ab("vmamba_tiny_s1l8 inference, batch 1", infer_model, 5, args.rounds)
    ab("vmamba_tiny_s1l8 training step, batch 1", train_model, 2, args.rounds)


if __name__ == "__main__":
    main()
