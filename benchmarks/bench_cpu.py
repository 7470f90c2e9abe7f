"""CPU benchmark of the fused selective-scan kernel ("cpu" backend) and of whole models.

Prints, in one run on the machine at hand:

1. the machine, the kernel build (its instruction set: avx512, avx2 or generic, chosen from the CPU
   or forced by ``VMAMBA_CPU_ISA``), and this run's fp32 matmul GFLOP/s (1 and 2 threads);
2. the scan at the four stage shapes (224 px) of vanilla_vmamba_tiny (N=16) and vmamba_tiny_s1l8
   (N=1), batch 1 and 8, 1 and 2 threads: forward time, GFLOP/s (9*B*D*L*N per call), ratio to
   the same run's matmul GFLOP/s, backward time and backward/forward ratio, and speed-up over
   the "torch" and "reference" (batch 1 only: it is a Python loop over L) backends; "bwd" is
   autograd's backward (fresh gradient buffers included), "bwd op" the backward kernel alone;
3. whole-model inference and training-step (forward + backward, fp32, no optimizer step) img/s
   at 224 of vanilla_vmamba_tiny and vmamba_tiny_s1l8, beside timm's swin_tiny, convnext_tiny and
   deit_small when timm is installed, with peak memory; and vanilla_vmamba_tiny on the "torch"
   and "reference" backends (batch 1) for the speed-up of the kernel at model level.

Timings are the minimum over repetitions (the machine may be shared; the minimum is the least
disturbed estimate), so compare ratios within one run, not absolute numbers across runs. glibc's
malloc hands large freed blocks back to the kernel, so repeated calls can spend a third of their
time faulting in fresh output pages (bimodal timings on a VM); docs/cpu.md's numbers were taken
with ``MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=2147483648`` set, which keeps them.

Usage: PYTHONPATH=src python benchmarks/bench_cpu.py [--quick] [--no-models] [--no-scan] [--shim DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))

from vmamba.ops import selective_scan  # noqa: E402
from vmamba.ops import scan_cpu  # noqa: E402

STAGE_L = (56 * 56, 28 * 28, 14 * 14, 7 * 7)
SCAN_MODELS = {  # name: (d_inner of each stage, N)
    "vanilla_vmamba_tiny": ((192, 384, 768, 1536), 16),
    "vmamba_tiny_s1l8": ((96, 192, 384, 768), 1),
}
TIMM_MODELS = {"swin_tiny": "swin_tiny_patch4_window7_224", "convnext_tiny": "convnext_tiny",
               "deit_small": "deit_small_patch16_224"}


def timeit(fn, min_time=0.3, max_reps=20, min_reps=2):
    """Minimum time of fn() over repetitions (after one warm-up call).

    With one thread, the process's CPU time (user + system) is measured: on a shared machine it
    does not count the time this process waits for a core, so ratios stay meaningful. With more
    threads, wall time (which includes such waits).
    """
    clock = time.process_time if torch.get_num_threads() == 1 else time.perf_counter
    fn()
    best, spent, reps = float("inf"), 0.0, 0
    while reps < min_reps or (spent < min_time and reps < max_reps):
        t = clock()
        fn()
        dt = clock() - t
        best, spent, reps = min(best, dt), spent + dt, reps + 1
    return best


def matmul_gflops(threads, n=1024, min_time=0.5):
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n ** 3 / timeit(lambda: a @ b, min_time=min_time) / 1e9


def machine_lines():
    lines = []
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        keep = ("Architecture", "Model name", "CPU(s):", "Thread(s) per core", "Core(s) per socket", "L2 cache",
                "L3 cache")
        lines += [ln.strip() for ln in out.splitlines() if ln.strip().startswith(keep)]
    except (OSError, subprocess.SubprocessError):
        lines.append(platform.processor() or platform.machine())
    lines.append(f"torch {torch.__version__}, ATen CPU capability {torch.backends.cpu.get_cpu_capability()}, "
                 f"{os.cpu_count()} logical CPUs, python {platform.python_version()}")
    return lines


def scan_inputs(b, D, L, n, requires_grad=False):
    g = torch.Generator().manual_seed(0)
    t = dict(u=torch.randn(b, D, L, generator=g), delta=torch.randn(b, D, L, generator=g) * 0.5 - 1,
             A=-torch.rand(D, n, generator=g) - 0.5, B=torch.randn(b, 4, n, L, generator=g),
             C=torch.randn(b, 4, n, L, generator=g), D=torch.ones(D), delta_bias=torch.randn(D, generator=g) * 0.1)
    if requires_grad:
        t = {k: v.requires_grad_() for k, v in t.items()}
    return t


def call_scan(t, backend):
    return selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], D=t["D"], delta_bias=t["delta_bias"],
                          delta_softplus=True, backend=backend)


def bench_scan(quick):
    mm = {th: matmul_gflops(th) for th in (1, 2)}
    print(f"\nfp32 matmul (1024^3, this run): {mm[1]:.1f} GFLOP/s on 1 thread, {mm[2]:.1f} GFLOP/s on 2 threads; "
          "'/ matmul' divides by the best of these and of a matmul timed again just before each row")
    print("\n## Selective scan, stage shapes at 224 px (D = 4*d_inner, L = H*W)\n")
    hdr = ("| model | stage | B | thr | D | L | N | fwd ms | GFLOP/s | / matmul | bwd ms | bwd/fwd "
           "| bwd op/fwd | x torch | x reference |")
    print(hdr)
    print("|" + "---|" * (hdr.count("|") - 1))
    rows = []
    batches = (1,) if quick else (1, 8)
    for threads in (1, 2):
        for batch in batches:
            for name, (dims, n) in SCAN_MODELS.items():
                for stage, (d_inner, L) in enumerate(zip(dims, STAGE_L), 1):
                    mm[threads] = max(mm[threads], matmul_gflops(threads, min_time=0.1))
                    torch.set_num_threads(threads)
                    D = 4 * d_inner
                    flops = 9 * batch * D * L * n
                    t = scan_inputs(batch, D, L, n)
                    with torch.no_grad():
                        t_fwd = timeit(lambda: call_scan(t, "cpu"))
                        t_torch = timeit(lambda: call_scan(t, "torch"), min_time=0.2, max_reps=3)
                        # the reference is a Python loop over L: timed once, at batch 1 only (minutes otherwise)
                        t_ref = (timeit(lambda: call_scan(t, "reference"), min_time=0.0, max_reps=1, min_reps=1)
                                 if batch == 1 else float("nan"))
                        # the backward op alone (reverse scan from the saved chunk states), without autograd
                        y, _, states = torch.ops.vmamba.selective_scan_cpu(
                            t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["delta_bias"], None, True, True)
                        gy = torch.ones_like(y)
                        t_bop = timeit(lambda: torch.ops.vmamba.selective_scan_cpu_backward(
                            gy, None, t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["delta_bias"], None,
                            states, True))
                        del y, states
                    tg = scan_inputs(batch, D, L, n, requires_grad=True)

                    def fwd_bwd():
                        for v in tg.values():  # fresh gradient buffers, as after zero_grad(set_to_none=True)
                            v.grad = None
                        y = call_scan(tg, "cpu")
                        y.backward(torch.ones_like(y))

                    t_fb = timeit(fwd_bwd)
                    t_bwd = max(t_fb - t_fwd, 0.0)
                    gf = flops / t_fwd / 1e9
                    row = dict(model=name, stage=stage, batch=batch, threads=threads, D=D, L=L, N=n,
                               fwd_ms=t_fwd * 1e3, gflops=gf, of_matmul=gf / mm[threads], bwd_ms=t_bwd * 1e3,
                               bwd_over_fwd=t_bwd / t_fwd, bwd_op_over_fwd=t_bop / t_fwd, x_torch=t_torch / t_fwd,
                               x_reference=t_ref / t_fwd)
                    rows.append(row)
                    print(f"| {name} | {stage} | {batch} | {threads} | {D} | {L} | {n} | {t_fwd * 1e3:.2f} | "
                          f"{gf:.1f} | {gf / mm[threads]:.0%} | {t_bwd * 1e3:.2f} | {t_bwd / t_fwd:.2f} | "
                          f"{t_bop / t_fwd:.2f} | {t_torch / t_fwd:.1f} | "
                          f"{'-' if batch > 1 else f'{t_ref / t_fwd:.0f}'} |", flush=True)
    return mm, rows


# ----------------------------------------------------------------------------- whole models (subprocesses)

def _status_mb(key):
    """VmRSS / VmHWM of this process in MiB (Linux); ru_maxrss elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 2 ** 20)


def _rss_mb():
    return _status_mb("VmRSS")


SHIM = None  # --shim: a folder holding torchvision_cpu_shim.py (timm on a CPU-only torch)


def _load_shim():
    if SHIM:
        sys.path.insert(0, SHIM)
        import torchvision_cpu_shim  # noqa: F401


def worker(args):
    """Run one model measurement in this (fresh) process; print one JSON line."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    args.model = args.worker
    if args.model in TIMM_MODELS:
        _load_shim()
        import timm
        model = timm.create_model(TIMM_MODELS[args.model], pretrained=False)
    else:
        import vmamba
        model = vmamba.create_model(args.model, scan_backend=args.backend)
    x = torch.randn(args.batch, 3, 224, 224)
    base = _rss_mb()
    if args.mode == "infer":
        model.eval()

        def step():
            with torch.no_grad():
                model(x)
    else:
        model.train()

        def step():
            model.zero_grad(set_to_none=True)
            model(x).logsumexp(-1).mean().backward()
    t = timeit(step, min_time=args.min_time, max_reps=args.reps, min_reps=1)
    peak = _status_mb("VmHWM")  # this process's peak RSS (ru_maxrss would include the parent's, kept over exec)
    print(json.dumps(dict(img_s=args.batch / t, step_s=t, peak_mb=peak, extra_mb=peak - base)))


def run_worker(model, backend, mode, batch, threads, reps=3, min_time=1.0, timeout=900):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", model, "--backend", backend, "--mode", mode,
           "--batch", str(batch), "--threads", str(threads), "--reps", str(reps), "--min-time", str(min_time)]
    cmd += ["--shim", SHIM] if SHIM else []
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return None, "timeout"
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line), None
    return None, (out.stderr.strip().splitlines() or ["failed"])[-1][:120]


def bench_models(quick, threads=1):
    batch = 2 if quick else 4
    try:
        _load_shim()
        import timm  # noqa: F401
        have_timm = True
    except Exception:  # noqa: BLE001 - timm is optional
        have_timm = False
    print(f"\n## Whole models at 224 px, fp32, {threads} thread(s), batch {batch} "
          "(training step = forward + backward, no optimizer step; CPU time with 1 thread)\n")
    print("| model | scan backend | infer img/s | infer peak RSS MB (+ over the built model) | train img/s | "
          "train peak RSS MB (+ over the built model) |")
    print("|---|---|---|---|---|---|")
    models = [("vanilla_vmamba_tiny", "cpu"), ("vmamba_tiny_s1l8", "cpu")]
    if have_timm:
        models += [(m, "-") for m in TIMM_MODELS]
    results = {}
    for model, backend in models:
        inf, err_i = run_worker(model, backend if backend != "-" else "auto", "infer", batch, threads,
                                reps=3, min_time=0.5)
        trn, err_t = run_worker(model, backend if backend != "-" else "auto", "train", batch, threads,
                                reps=2, min_time=0.5)
        results[model] = (inf, trn)

        def fmt(r, err, key):
            if r is None:
                return f"failed: {err}", "-"
            return f"{r['img_s']:.2f}", f"{r['peak_mb']:.0f} (+{r['extra_mb']:.0f})"

        i_s, i_m = fmt(inf, err_i, "img_s")
        t_s, t_m = fmt(trn, err_t, "img_s")
        print(f"| {model} | {backend} | {i_s} | {i_m} | {t_s} | {t_m} |", flush=True)
    if not have_timm:
        print("\n(timm not installed: peers skipped)")

    print(f"\n## vanilla_vmamba_tiny inference by scan backend, batch 1, {threads} thread(s)\n")
    print("| scan backend | img/s | x of reference |")
    print("|---|---|---|")
    per = {}
    for backend in ("cpu", "torch", "reference"):
        r, err = run_worker("vanilla_vmamba_tiny", backend, "infer", 1, threads, reps=2 if backend != "reference" else 1,
                            min_time=0.5 if backend != "reference" else 0.0)
        per[backend] = r
    for backend, r in per.items():
        ref = per.get("reference")
        ratio = f"{r['img_s'] / ref['img_s']:.1f}" if r and ref else "-"
        print(f"| {backend} | {r['img_s']:.3f} | {ratio} |" if r else f"| {backend} | failed | - |")
    return results, per


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="batch 1 scans only, batch 2 models")
    p.add_argument("--no-models", action="store_true")
    p.add_argument("--no-scan", action="store_true")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--backend", default="auto", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="infer", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=8, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    p.add_argument("--reps", type=int, default=3, help=argparse.SUPPRESS)
    p.add_argument("--min-time", type=float, default=1.0, help=argparse.SUPPRESS)
    p.add_argument("--shim", help="folder holding torchvision_cpu_shim.py (CPU-only torch + timm)")
    args = p.parse_args()
    global SHIM
    SHIM = args.shim
    if args.worker:
        return worker(args)
    print("# vmamba CPU benchmark\n")
    for line in machine_lines():
        print("    " + line)
    info = scan_cpu.extension_info()
    print(f"    kernel build: {info.get('isa', 'none')} (this CPU runs: {', '.join(scan_cpu.supported_isas())}; "
          "VMAMBA_CPU_ISA forces one)")
    print(f"    kernel: {info}")
    if not scan_cpu.is_available():
        print("\nThe CPU kernel is unavailable here; nothing to benchmark.")
        return
    if not args.no_scan:
        bench_scan(args.quick)
    if not args.no_models:
        bench_models(args.quick)


if __name__ == "__main__":
    main()
