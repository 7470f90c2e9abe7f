"""Whole-model A/B on CPU: the SS2D glue before the layout rework against the current one.

One process, the same weights, interleaved rounds (old, new, new, old, ...), median time per
variant, fp32, 224x224, ``--threads`` threads (default 2). Cases: inference at batch 1 and 8 and
one training step (forward + backward of a loss on the logits, no optimizer) at batch 8.

* ``old``: the model as it ran before the rework, rebuilt from the current one: convolution
  weights in the default (NCHW) layout, and SS2D's earlier forward (one in_proj product split
  into x and z by ``chunk``, a contiguous NCHW copy for the depthwise conv, projections on
  channel-first maps), kept below as ``old_ss2d_forward``.
* ``new``: the current model (channel-last from in_proj to out_proj, convolution weights stored
  channel-last, see ``vmamba.models.layers.channels_last_conv``).
* ``compiled`` (with ``--compile``): ``vmamba.deploy.compile_model`` of the current model;
* ``frozen`` (with ``--freeze``): ``compile_model(..., freeze=True)``, Inductor's freezing
  (inference only; its column is its speed relative to ``new``).

Before timing, the logits of every variant and (for ``old`` and ``new``) the gradients of a
training step are compared; the largest differences are printed. Prints the CPU, then per model
and case the median ms of each variant and its speed relative to ``old`` (> 1: faster).
Usage: ``python benchmarks/bench_model_ab.py [--models ...] [--rounds 7] [--compile] [--freeze]``.
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
import types

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))

import vmamba  # noqa: E402
from vmamba.models import SS2D  # noqa: E402
from vmamba.ops import cross_selective_scan  # noqa: E402


# --- the SS2D forward before the rework, verbatim in behaviour --------------------------------
def old_ss2d_forward_core(self, x):
    r, n = self.dt_rank, self.d_state
    b, d, h, w = x.shape
    k = self.x_proj_weight.shape[0]
    x_dbl = torch.matmul(self.x_proj_weight.reshape(-1, d), x.reshape(b, d, h * w)).view(b, k, -1, h * w)
    dts, Bs, Cs = torch.split(x_dbl, [r, n, n], dim=2)
    dts = torch.matmul(self.dt_projs_weight, dts).view(b, k, -1, h, w)
    Bs, Cs = Bs.view(b, k, n, h, w), Cs.view(b, k, n, h, w)
    y = cross_selective_scan(
        x, dts, -torch.exp(self.A_logs.float()), Bs, Cs, D=self.Ds.float(),
        delta_bias=self.dt_projs_bias.float().reshape(-1), delta_softplus=True,
        mode=self.scan_mode, out_float=True, backend=self.scan_backend,
    )
    return y.permute(0, 2, 3, 1)


def old_ss2d_forward(self, x, residual=None):
    x = self.in_proj(x)
    if self.z_gate:
        x, z = x.chunk(2, dim=-1)
    x = x.permute(0, 3, 1, 2).contiguous()
    if self.conv2d is not None:
        x = self.conv2d(x)
    x = self.act(x)
    y = self.out_norm(old_ss2d_forward_core(self, x)).to(x.dtype)
    if self.z_gate:
        y = y * F.silu(z)
    y = self.dropout(self.out_proj(y))
    return y if residual is None else residual + y  # the block's skip connection, as the current SS2D takes it


def as_old(model: nn.Module) -> nn.Module:
    """A copy of ``model`` running the pre-rework glue (NCHW conv weights, old SS2D forward)."""
    old = copy.deepcopy(model)
    for m in old.modules():
        if isinstance(m, nn.Conv2d):
            m.weight.data = torch.empty(m.weight.shape, dtype=m.weight.dtype).copy_(m.weight.data)
        if isinstance(m, SS2D):
            m.forward = types.MethodType(old_ss2d_forward, m)
    return old


# --- timing -----------------------------------------------------------------------------------
def interleaved(fns: dict, rounds: int) -> dict:
    """Median seconds per variant; each round calls every variant once, the order alternating."""
    names = list(fns)
    for name in names:  # warm-up
        fns[name]()
    times = {name: [] for name in names}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            t = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def infer_fn(model, x):
    def run():
        with torch.no_grad():
            model(x)
    return run


def train_fn(model, x):
    def run():
        model(x).logsumexp(-1).mean().backward()
        model.zero_grad(set_to_none=True)
    return run


def grads_of(model, x):
    model.zero_grad(set_to_none=True)
    model(x).logsumexp(-1).mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["vmamba_tiny_s1l8", "vanilla_vmamba_tiny"])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--cases", nargs="+", default=["infer_b1", "infer_b8", "train_b8"],
                    help="infer_bN and/or train_bN")
    ap.add_argument("--compile", action="store_true", help="also time vmamba.deploy.compile_model (inference)")
    ap.add_argument("--freeze", action="store_true", help="also time compile_model(freeze=True) (inference)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from vmamba.ops.scan_cpu import extension_info, is_available

    print(f"CPU: {cpu_name()}; ATen capability {torch.backends.cpu.get_cpu_capability()}; "
          f"torch {torch.__version__}; {args.threads} threads; fp32, {args.size}x{args.size}")
    print(f"scan kernel: {extension_info() if is_available() else 'unavailable (torch backend)'}")
    print(f"{'model':<22} {'case':<9} {'old ms':>9} {'new ms':>9} {'new/old speed':>13}"
          + (f" {'compiled ms':>12} {'compiled/new':>12}" if args.compile else "")
          + (f" {'frozen ms':>12} {'frozen/new':>12}" if args.freeze else ""))
    for name in args.models:
        torch.manual_seed(0)
        new = vmamba.create_model(name)
        old = as_old(new)
        probe = torch.randn(2, 3, args.size, args.size)
        new.eval(), old.eval()
        with torch.no_grad():
            diff = (new(probe) - old(probe)).abs().max().item()
        new.train(), old.train()
        torch.manual_seed(1)
        gn = grads_of(new, probe[:1])
        torch.manual_seed(1)
        go = grads_of(old, probe[:1])
        gdiff = max(((gn[k] - go[k]).abs().max() / go[k].abs().max().clamp_min(1e-30)).item() for k in go)
        print(f"# {name}: max |logits new - old| = {diff:.2e}; max relative gradient difference = {gdiff:.2e}")
        compiled = {}
        for label, wanted, freeze in (("compiled", args.compile, False), ("frozen", args.freeze, True)):
            if not wanted:
                continue
            from vmamba.deploy import compile_model
            compiled[label] = compile_model(new.eval(), freeze=freeze)
            t = time.perf_counter()
            with torch.no_grad():
                cdiff = (compiled[label](probe) - new(probe)).abs().max().item()
            print(f"# {name}: {label} in {time.perf_counter() - t:.1f} s; max |logits {label} - eager| = {cdiff:.2e}")
        for case in args.cases:
            kind, batch = case.split("_b")
            x = torch.randn(int(batch), 3, args.size, args.size)
            fns = {}
            for label, model in (("old", old), ("new", new)):
                model.train(kind == "train")
                fns[label] = (train_fn if kind == "train" else infer_fn)(model, x)
            if kind == "infer":
                fns.update({label: infer_fn(c, x) for label, c in compiled.items()})
            t = interleaved(fns, args.rounds)
            line = f"{name:<22} {case:<9} {t['old'] * 1e3:9.1f} {t['new'] * 1e3:9.1f} {t['old'] / t['new']:13.2f}"
            for label in compiled:
                line += f" {t[label] * 1e3:12.1f} {t['new'] / t[label]:12.2f}"
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
