"""Whole-model A/B on CPU: step sizes projected inside the scan kernel or by a product first.

One process, the same weights, interleaved rounds, median time per variant, fp32, 224x224,
``--threads`` threads (default 2). Variants, each a copy of the same model:

* ``before``: SS2D projects its step sizes in Python (one batched product writing the
  (B, 4, d, H, W) step sizes, which the kernel then reads);
* ``projection``: the library as it is (the projection inside the kernel, ``delta_proj_weight``).

(Until 2026-12-07 the script also had variants with oneDNN-packed convolution weights, which
the library no longer keeps: docs/cpu.md, "No packed weights at inference".)

Cases: inference at batch 1 and 8, and one training step (forward, cross-entropy, backward, no
optimizer) at batch 8. Before timing, the logits of every variant are compared with ``before``
(and, for the training case, the gradients). Prints the CPU, then per case the median ms of each
variant and its speed relative to ``before`` (> 1: faster).

Usage: ``python benchmarks/bench_projection_conv.py [--models vmamba_tiny_s1l8] [--rounds 7]``.
"""
from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import vmamba  # noqa: E402
from vmamba.models import SS2D  # noqa: E402
from vmamba.ops import cross_selective_scan, linear  # noqa: E402
from vmamba.ops.scan_common import project_steps  # noqa: E402
from vmamba.utils import cpu_info  # noqa: E402


def forward_core_projecting_first(self: SS2D, x: torch.Tensor) -> torch.Tensor:
    """SS2D.forward_core as it ran before: the step sizes projected by a batched product first."""
    r, n = self.dt_rank, self.d_state
    b, d, h, w = x.shape
    k = self.x_proj_weight.shape[0]
    x_dbl = linear(x.permute(0, 2, 3, 1), self.x_proj_weight.reshape(-1, d)).view(b * h * w, k, r + 2 * n)
    dts, Bs, Cs = torch.split(x_dbl, [r, n, n], dim=2)
    delta = project_steps(dts.view(b, h, w, k, r).permute(0, 3, 4, 1, 2), self.dt_projs_weight)
    Bs = Bs.view(b, h, w, k, n).permute(0, 3, 4, 1, 2)
    Cs = Cs.view(b, h, w, k, n).permute(0, 3, 4, 1, 2)
    y = cross_selective_scan(
        x, delta, -torch.exp(self.A_logs.float()), Bs, Cs, D=self.Ds.float(),
        delta_bias=self.dt_projs_bias.float().reshape(-1), delta_softplus=True,
        mode=self.scan_mode, out_float=True, backend=self.scan_backend,
    )
    return y.permute(0, 2, 3, 1)


def variant(model: nn.Module, projection: bool) -> nn.Module:
    m = copy.deepcopy(model)
    for mod in m.modules():
        if isinstance(mod, SS2D) and not projection:
            mod.forward_core = types.MethodType(forward_core_projecting_first, mod)
    return m


VARIANTS = {"before": False, "projection": True}


def step(model: nn.Module, x: torch.Tensor, train: bool) -> None:
    if train:
        F.cross_entropy(model(x), torch.zeros(x.shape[0], dtype=torch.long)).backward()
        model.zero_grad(set_to_none=True)
    else:
        with torch.no_grad():
            model(x)


def check(models: dict, x: torch.Tensor) -> None:
    ref = models["before"]
    with torch.no_grad():
        y0 = ref(x)
        for name, m in models.items():
            print(f"  {name}: max |logits - before| = {(m(x) - y0).abs().max().item():.2e}")
    F.cross_entropy(ref(x), torch.zeros(x.shape[0], dtype=torch.long)).backward()
    g0 = {n: p.grad.clone() for n, p in ref.named_parameters() if p.grad is not None}
    ref.zero_grad(set_to_none=True)
    for name, m in models.items():
        F.cross_entropy(m(x), torch.zeros(x.shape[0], dtype=torch.long)).backward()
        err = max(((p.grad - g0[n]).abs().max() / g0[n].abs().max().clamp_min(1e-12)).item()
                  for n, p in m.named_parameters() if p.grad is not None)
        m.zero_grad(set_to_none=True)
        print(f"  {name}: largest relative gradient difference to before = {err:.2e}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["vmamba_tiny_s1l8"])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_info().get('model name', platform.processor())}; torch {torch.__version__}, "
          f"{args.threads} threads")
    for name in args.models:
        torch.manual_seed(0)
        base = vmamba.create_model(name).eval()
        models = {v: variant(base, flag) for v, flag in VARIANTS.items()}
        print(f"{name}: checks at 64x64, batch 2")
        check(models, torch.randn(2, 3, 64, 64))
        for case, batch, train in (("infer b1", 1, False), ("infer b8", 8, False), ("train b8", 8, True)):
            x = torch.randn(batch, 3, 224, 224)
            reps = 5 if batch == 1 else 1
            times = {v: [] for v in models}
            for m in models.values():
                step(m, x, train)  # warm-up
            for r in range(args.rounds):
                order = list(models) if r % 2 == 0 else list(reversed(list(models)))
                for v in order:
                    t0 = time.perf_counter()
                    for _ in range(reps):
                        step(models[v], x, train)
                    times[v].append((time.perf_counter() - t0) / reps * 1e3)
            med = {v: statistics.median(t) for v, t in times.items()}
            print(f"{name} {case}: " + ", ".join(
                f"{v} {med[v]:.1f} ms ({med['before'] / med[v]:.3f}x)" for v in models))


if __name__ == "__main__":
    main()
