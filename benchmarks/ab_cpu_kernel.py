"""A/B timing of CPU scan kernel builds, interleaved in one process.

On a shared or virtual machine, two benchmark runs minutes apart can differ by more than the
change being measured. This script builds several versions of ``vmamba/ops/cpu/selective_scan.cpp``
(each under its own op namespace, so all load into one process): the kernel at a git revision
(``--old``, e.g. ``main``) and the working tree, each for one or more instruction sets
(``avx512``, ``avx2``, ``generic``; only those this CPU runs). It then calls them alternately on
the same inputs for a number of rounds, together with a fp32 matmul of the same run, and prints
per build the median forward and backward time, the ratio to the first build, the forward's
GFLOP/s (9 * B * D * L * N per call, as ``bench_cpu.py`` counts) and its fraction of the matmul's
GFLOP/s. It also checks that each build's gradients agree with the first's.

Usage (from the repository root):

    PYTHONPATH=src python benchmarks/ab_cpu_kernel.py --old main                   # main vs working tree
    PYTHONPATH=src python benchmarks/ab_cpu_kernel.py --old main --isas avx2,generic --shapes s1,c1k
    PYTHONPATH=src python benchmarks/ab_cpu_kernel.py --old HEAD~3 --new HEAD --shapes s1,s2,v2

Shapes (batch 1 unless named b8): s1..s4 are the plain-scan stage shapes of vanilla_vmamba_tiny at
224 px (N = 16), v2 the stage-1 shape of vmamba_tiny_s1l8 (N = 1), s2z stage 2 with the z gate,
v2b8 the v2 shape at batch 8, s2sub stage 2 with decays exp(dt * A) in the subnormal range.
The c* shapes run the fused cross-scan (four directions, two of them column-major) at stage 1:
c1 / c1l8 at 224 px (vanilla: D = 192, N = 16; s1l8: D = 96, N = 1), c2 / c2l8 the same at
stage 2 (D = 384 / 192, 28 x 28), c1k / c1kl8 at 1024 px
(H = W = 256, L = 65536); c1k250 at H = W = 250, a row length that is not a power of two.
Single thread unless --threads. The kernel ops are called directly (no
autograd).

With ``--models`` (e.g. ``--models vmamba_tiny_s1l8,vanilla_vmamba_tiny``) it times the whole model
instead, each build in turn installed as the library's CPU kernel: inference at each ``--batches``
size and a training step (forward and backward of the logits' sum, no optimizer) at the largest,
224 px, fp32; per build the median ms and the speed against the first build (> 1: faster), after
checking that the builds' logits agree.
"""
from __future__ import annotations

import argparse
import hashlib
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SOURCE = "src/vmamba/ops/cpu/selective_scan.cpp"
HEADER = "src/vmamba/ops/cpu/vec.h"
PLAIN = {  # name: (D, L, N, batch, z gate)
    "s1": (768, 3136, 16, 1, False), "s2": (1536, 784, 16, 1, False), "s3": (3072, 196, 16, 1, False),
    "s4": (6144, 49, 16, 1, False), "v2": (384, 3136, 1, 1, False), "s2z": (1536, 784, 16, 1, True),
    "v2b8": (384, 3136, 1, 8, False), "s2sub": (1536, 784, 16, 1, False),
}
CROSS = {  # name: (D, H, W, N, batch)
    "c1": (192, 56, 56, 16, 1), "c1l8": (96, 56, 56, 1, 1), "c2": (384, 28, 28, 16, 1), "c2l8": (192, 28, 28, 1, 1),
    "c1k": (192, 256, 256, 16, 1), "c1kl8": (96, 256, 256, 1, 1), "c1k250": (192, 250, 250, 16, 1),
}


def _revision_file(rev: str | None, path: str) -> str:
    """A file of the repository at a git revision, or in the working tree (None)."""
    if rev is None:
        return (ROOT / path).read_text()
    return subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout


def kernel_source(rev: str | None) -> str:
    """The kernel source at a git revision, in a .cpp file of that name, or in the working tree (None),
    with the shared header it includes (``cpu/vec.h``, since 2026-12-08) inlined from the same place,
    so the build needs no other file."""
    if rev is not None and rev.endswith(".cpp") and Path(rev).is_file():
        source, header = Path(rev).read_text(), Path(rev).with_name("vec.h")
        header_text = header.read_text() if header.is_file() else _revision_file(None, HEADER)
    else:
        source = _revision_file(rev, SOURCE)
        header_text = _revision_file(rev, HEADER) if '#include "vec.h"' in source else ""
    return source.replace('#include "vec.h"', header_text)


def build(tag: str, source: str, isa: str):
    """Compile source for ``isa`` with its ops renamed to namespace ``vmamba_ab_<tag>``; returns that namespace."""
    from torch.utils import cpp_extension
    from vmamba.ops.scan_cpu import build_attempts, build_lock, cache_dir

    namespace = f"vmamba_ab_{tag}"
    source = source.replace("TORCH_LIBRARY(vmamba_cpu_kernel", f"TORCH_LIBRARY({namespace}")
    cflags, ldflags = build_attempts(isa)[0]
    key = hashlib.sha256((source + " ".join(cflags)).encode()).hexdigest()[:12]
    build_dir = cache_dir().parent / "ab" / f"{tag}-{key}"
    with build_lock(build_dir):
        path = build_dir / f"{tag}.cpp"
        if not path.exists() or path.read_text() != source:
            path.write_text(source)
        cpp_extension.load(name=f"vmamba_ab_{tag}_{key}", sources=[str(path)], extra_cflags=cflags,
                           extra_ldflags=ldflags, build_directory=str(build_dir), is_python_module=False)
    return getattr(torch.ops, namespace)


def trailing_args(op, name: str) -> tuple:
    """Defaults for the arguments a kernel version added after ``mode`` (follow_layouts, the step-size
    weight), so builds of older and newer revisions are called alike: plain layouts, no projection."""
    schema = getattr(op, name).default._schema
    base = 12 if name == "forward" else 14  # arguments up to and including mode
    return (False, None)[: len(schema.arguments) - base]


def plain_inputs(name: str, seed: int = 0):
    """Kernel arguments (after u .. z) and the output gradient of a plain-scan shape."""
    D, L, N, batch, gate = PLAIN[name]
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
    return (u, delta, A, Bt, Ct, Dv, bias, z), gy, 1, 0, 9 * batch * D * L * N


def cross_inputs(name: str, seed: int = 0):
    """The same for a fused cross-scan shape (mode cross2d: K = 4 directions)."""
    D, H, W, N, batch = CROSS[name]
    L = H * W
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, D, H, W, generator=g)
    delta = torch.randn(batch, 4, D, H, W, generator=g) * 0.5 - 1
    A = -torch.rand(4 * D, N, generator=g) - 0.5
    Bt = torch.randn(batch, 4, L, N, generator=g)
    Ct = torch.randn(batch, 4, L, N, generator=g)
    Dv, bias = torch.ones(4 * D), torch.randn(4 * D, generator=g) * 0.1
    gy = torch.randn(batch, D, H, W, generator=g)
    return (x, delta, A, Bt, Ct, Dv, bias, None), gy, 4, 1, 9 * batch * 4 * D * L * N


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main():
    from vmamba.ops.scan_cpu import selected_isa, supported_isas

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", default="main", help="git revision (or .cpp file) of the baseline kernel (default: main)")
    ap.add_argument("--new", default=None, help="git revision of the new kernel (default: working tree)")
    ap.add_argument("--isas", default=None,
                    help="comma-separated instruction sets to build the new kernel for (default: all this CPU "
                         "runs); the old kernel is built for the first")
    ap.add_argument("--no-old", action="store_true", help="compare only the new kernel's instruction sets")
    ap.add_argument("--extra", action="append", default=[],
                    help="a further kernel version to time (git revision or .cpp file; repeatable), built for the "
                         "first instruction set")
    ap.add_argument("--shapes", default="s1,v2,c1,c1l8")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", default=None,
                    help="comma-separated model names: time whole models instead of the kernel shapes")
    ap.add_argument("--batches", default="1,8", help="with --models: inference batch sizes (training: the largest)")
    args = ap.parse_args()
    supported = supported_isas()
    isas = args.isas.split(",") if args.isas else supported
    for isa in isas:
        if isa not in supported:
            ap.error(f"--isas: this CPU cannot run {isa!r} (it supports {', '.join(supported)})")
    for name in args.shapes.split(","):
        if name not in PLAIN and name not in CROSS:
            ap.error(f"--shapes: unknown shape {name!r}; known: {', '.join([*PLAIN, *CROSS])}")
    builds = {}
    if not args.no_old:
        builds[f"old-{isas[0]}"] = build("old", kernel_source(args.old), isas[0])
    new_source = kernel_source(args.new)
    for isa in isas:
        builds[f"new-{isa}"] = build(f"new_{isa}", new_source, isa)
    for i, rev in enumerate(args.extra):
        builds[f"extra{i}-{isas[0]}"] = build(f"extra{i}", kernel_source(rev), isas[0])
    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_model()}; kernel builds this CPU runs: {', '.join(supported)} (chosen: {selected_isa()}); "
          f"ATen: {torch.backends.cpu.get_cpu_capability()}; torch {torch.__version__}")
    print(f"old = {args.old}, new = {args.new or 'working tree'}; {args.rounds} interleaved rounds, "
          f"{args.threads} thread(s); median ms per call; ratios to {next(iter(builds))}")
    if args.models:
        return time_models(builds, args.models.split(","), [int(b) for b in args.batches.split(",")], args.rounds)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    print("| shape | build | fwd ms | bwd ms | fwd ratio | bwd ratio | fwd GFLOP/s | x matmul | max grad diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.shapes.split(","):
        ins, gy, K, mode, flops = (plain_inputs if name in PLAIN else cross_inputs)(name)
        times = {tag: ([], []) for tag in builds}
        mm = []
        grads = {}
        extra = {tag: (trailing_args(op, "forward"), trailing_args(op, "backward")) for tag, op in builds.items()}
        for _ in range(args.rounds):
            t = time.perf_counter()
            a @ b
            mm.append(time.perf_counter() - t)
            for tag, op in builds.items():
                t = time.perf_counter()
                y, _, states = op.forward(*ins, True, True, K, mode, *extra[tag][0])
                t_fwd = time.perf_counter() - t
                t = time.perf_counter()
                out = op.backward(gy, None, *ins, states, True, K, mode, *extra[tag][1])
                t_bwd = time.perf_counter() - t
                times[tag][0].append(t_fwd)
                times[tag][1].append(t_bwd)
                grads[tag] = [o.sum(2) if i in (3, 4) else o for i, o in enumerate(out)]  # dB/dC: sum partials
                del y, states, out
        mm_gflops = 2 * 1024 ** 3 / statistics.median(mm) / 1e9
        first = next(iter(builds))
        base_f, base_b = (statistics.median(v) for v in times[first])
        for tag in builds:
            f, b_ = (statistics.median(v) for v in times[tag])
            diff = max(((x - y).abs().max() / (y.abs().max() + 1e-30)).item()
                       for x, y in zip(grads[tag], grads[first]) if x.numel())
            gf = flops / f / 1e9
            print(f"| {name} | {tag} | {f * 1e3:.2f} | {b_ * 1e3:.2f} | {f / base_f:.3f} | {b_ / base_b:.3f} | "
                  f"{gf:.1f} | {gf / mm_gflops:.3f} | {diff:.1e} |", flush=True)
        print(f"| {name} | fp32 matmul 1024^3 | {statistics.median(mm) * 1e3:.2f} | | | | {mm_gflops:.1f} | 1 | |",
              flush=True)


class _WithOtherOps:
    """A build's scan ops, with the library's installed extension for the ops the build's source
    does not define (the depthwise convolution and LayerNorm, from their own .cpp files)."""

    def __init__(self, scan_ops, installed):
        self._scan_ops, self._installed = scan_ops, installed

    def __getattr__(self, name):
        try:
            return getattr(self._scan_ops, name)
        except AttributeError:
            return getattr(self._installed, name)


def time_models(builds: dict, names: list, batches: list, rounds: int) -> int:
    """Whole-model A/B: each build installed in turn as the library's CPU scan kernel (the other
    kernels of the library's own build are shared by all), interleaved rounds."""
    import vmamba
    from vmamba.ops import scan_cpu

    scan_cpu.load_extension()
    installed = scan_cpu._ext
    builds = {tag: _WithOtherOps(op, installed) for tag, op in builds.items()}
    print("| model | case | build | ms | speed vs first |")
    print("|---|---|---|---|---|")
    try:
        for name in names:
            model = vmamba.create_model(name).eval()
            x = {bs: torch.randn(bs, 3, 224, 224, generator=torch.Generator().manual_seed(bs)) for bs in batches}
            with torch.no_grad():
                logits = {}
                for tag, op in builds.items():
                    scan_cpu._ext = op
                    logits[tag] = model(x[batches[0]])
                first = next(iter(logits.values()))
                diff = max((v - first).abs().max().item() for v in logits.values())
                print(f"| {name} | max logit difference between builds: {diff:.1e} | | | |")

            def infer(bs):
                with torch.no_grad():
                    model(x[bs])

            def train(bs):
                model.train()
                model(x[bs]).sum().backward()
                model.zero_grad(set_to_none=True)
                model.eval()

            cases = [(f"infer b{bs}", infer, bs) for bs in batches] + [(f"train b{max(batches)}", train, max(batches))]
            for case, fn, bs in cases:
                times = {tag: [] for tag in builds}
                for tag, op in builds.items():  # warm-up
                    scan_cpu._ext = op
                    fn(bs)
                for r in range(rounds):
                    order = list(builds.items()) if r % 2 == 0 else list(builds.items())[::-1]
                    for tag, op in order:
                        scan_cpu._ext = op
                        t = time.perf_counter()
                        fn(bs)
                        times[tag].append(time.perf_counter() - t)
                base = statistics.median(next(iter(times.values())))
                for tag, ts in times.items():
                    m = statistics.median(ts)
                    print(f"| {name} | {case} | {tag} | {m * 1e3:.1f} | {base / m:.3f} |", flush=True)
    finally:
        scan_cpu._ext = installed
    return 0


if __name__ == "__main__":
    sys.exit(main())
