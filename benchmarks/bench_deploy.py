"""Deployment latency on CPU: eager vs torch.compile vs onnxruntime, in one run.

For vanilla_vmamba_tiny and vmamba_tiny_s1l8 at 224x224 (random weights: latency does not
depend on them), batch 1 and 8, fp32, inference:

* eager on the "torch" scan backend and on the fused "cpu" kernel (when it builds here);
* ``vmamba.deploy.compile_model`` (torch.compile, fullgraph) on the backends named by
  ``--compile-backends`` (default: the "cpu" kernel), with the first call's time (compilation);
* onnxruntime on the file from ``vmamba.deploy.export_onnx`` (static 224x224, dynamic batch),
  with export time and the largest difference from eager.

Prints a table with each path's ratio to the best PyTorch path of the same model and batch, and
writes CSV/JSON (``--out``). Timings are the minimum over repetitions: compare ratios within one
run. Usage: ``python benchmarks/bench_deploy.py [--models ...] [--batches 1 8] [--compile-backends cpu torch]``.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))

import vmamba  # noqa: E402
from vmamba.deploy import OnnxModel, compile_model, export_onnx  # noqa: E402
from vmamba.ops import available_backends  # noqa: E402


def timeit(fn, min_time=1.0, max_reps=30, min_reps=3):
    """Minimum time of fn() over repetitions, after one warm-up call."""
    fn()
    best, total, reps = float("inf"), 0.0, 0
    while reps < min_reps or (total < min_time and reps < max_reps):
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        best, total, reps = min(best, dt), total + dt, reps + 1
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["vanilla_vmamba_tiny", "vmamba_tiny_s1l8"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--compile-backends", nargs="*", default=["cpu"],
                    help="scan backends to torch.compile (default: cpu; the 'torch' backend takes minutes "
                         "to compile at 224 per batch size, and runs slower compiled than eager)")
    ap.add_argument("--out", default=os.path.join(ROOT, "outputs", "bench_deploy"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    backends = [b for b in ("torch", "cpu") if b in available_backends("cpu")]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {args.threads} threads; "
          f"torch {torch.__version__}; scan backends {backends}")
    rows = []
    tmp = tempfile.mkdtemp(prefix="vmamba-bench-")
    for name in args.models:
        model = vmamba.create_model(name).eval()
        t = time.perf_counter()
        onnx_path = export_onnx(model, os.path.join(tmp, f"{name}.onnx"), size=(args.size, args.size))
        export_s = time.perf_counter() - t
        ort_model = OnnxModel(onnx_path, threads=args.threads)
        compiled = {}
        for backend in backends:
            model.set_scan_backend(backend)
            if backend in args.compile_backends:
                compiled[backend] = compile_model(model)
        for batch in args.batches:
            x = torch.randn(batch, 3, args.size, args.size)
            found = []
            with torch.no_grad():
                for backend in backends:
                    model.set_scan_backend(backend)
                    ref = model(x)
                    found.append((f"eager/{backend}", timeit(lambda: model(x)), 0.0, None))
                    if backend in compiled:
                        t = time.perf_counter()
                        diff = (compiled[backend](x) - ref).abs().max().item()
                        first = time.perf_counter() - t
                        found.append((f"compiled/{backend}", timeit(lambda: compiled[backend](x)), first, diff))
                diff = (ort_model(x) - ref).abs().max().item()
                found.append(("onnxruntime", timeit(lambda: ort_model(x)), export_s, diff))
            best_torch = min(s for p, s, _, _ in found if p != "onnxruntime")
            for path, sec, setup, diff in found:
                rows.append(dict(model=name, batch=batch, path=path, ms=round(sec * 1e3, 2),
                                 img_per_s=round(batch / sec, 2), vs_best_torch=round(sec / best_torch, 3),
                                 setup_s=round(setup, 1), max_abs_diff=diff))
                print(f"{name:22s} b{batch:<3d} {path:16s} {sec * 1e3:9.1f} ms  {batch / sec:7.1f} img/s  "
                      f"x{sec / best_torch:5.2f} of best torch" + (f"  (setup {setup:.0f} s)" if setup else "")
                      + (f"  |diff| {diff:.1e}" if diff is not None else ""), flush=True)
    with open(os.path.join(args.out, "bench_deploy.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with open(os.path.join(args.out, "bench_deploy.json"), "w") as f:
        json.dump(dict(machine=platform.processor(), threads=args.threads, torch=torch.__version__, rows=rows), f, indent=1)
    print(f"wrote {args.out}/bench_deploy.csv and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
