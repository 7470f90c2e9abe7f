"""Detection-size backbone forward on CPU: VMamba against timm's Swin-T, time and peak memory.

The dense-prediction backbone (four normed NCHW maps, as Mask R-CNN's FPN takes them) at a COCO
test size (default 800x1216, batch 1, inference). Each model runs in its own process, so peak
resident memory (growth above the process's level before the first forward) is not mixed up
between models. timm's ``swin_tiny_patch4_window7_224`` (features_only, img_size set to the
input) is the peer; on a CPU-only torch the registry's torchvision needs a CPU shim
(--shim DIR, the folder holding torchvision_cpu_shim.py). Writes outputs/dense_bench/bench.json and prints a table.

    python benchmarks/bench_dense_backbone.py --shim DIR
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
from pathlib import Path

PEERS = {"swin_tiny": "swin_tiny_patch4_window7_224", "convnext_tiny": "convnext_tiny", "resnet50": "resnet50"}


def _one(name: str, size: tuple[int, int], reps: int, warmup: int, threads: int) -> dict:
    """Measure one backbone in this process."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if name in PEERS:
        from vmamba.analysis.bench import import_timm

        timm = import_timm()
        if timm is None:
            return {"model": name, "error": "timm not importable (on CPU-only torch pass --shim)"}
        kwargs = {"img_size": size} if name == "swin_tiny" else {}
        model = timm.create_model(PEERS[name], pretrained=False, features_only=True, **kwargs)
    else:
        import vmamba

        model = vmamba.create_model(name, features_only=True)
    from vmamba.analysis.bench import measure

    model.eval()
    x = torch.randn(1, 3, *size)
    with torch.inference_mode():
        shapes = [tuple(o.shape) for o in model(x)]
    times, peak = measure(model, x, "infer", warmup=warmup, reps=reps)
    return {"model": name, "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
            "size": list(size), "threads": threads, "median_s": round(statistics.median(times), 3),
            "min_s": round(min(times), 3), "max_s": round(max(times), 3), "peak_mb": round(peak or 0),
            "shapes": shapes}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vmamba_tiny_s1l8", "vanilla_vmamba_tiny", "swin_tiny"])
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1216), metavar=("H", "W"))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--shim", help="folder holding torchvision_cpu_shim.py (CPU-only torch + timm)")
    parser.add_argument("--out", default="outputs/dense_bench")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one model, print JSON
    args = parser.parse_args()
    if args.shim:
        sys.path.insert(0, args.shim)
        import torchvision_cpu_shim  # noqa: F401
    if args.one:
        print(json.dumps(_one(args.one, tuple(args.size), args.reps, args.warmup, args.threads[0])))
        return 0

    rows = []
    for threads in args.threads:
        for name in args.models:
            cmd = [sys.executable, __file__, "--one", name, "--size", *map(str, args.size), "--reps", str(args.reps),
                   "--warmup", str(args.warmup), "--threads", str(threads)] + (["--shim", args.shim] if args.shim else [])
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                rows.append({"model": name, "threads": threads, "error": proc.stderr.strip().splitlines()[-1:]})
            else:
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    import torch

    machine = {"cpu": platform.processor() or platform.machine(), "cores": __import__("os").cpu_count(),
               "torch": torch.__version__, "python": platform.python_version()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    print(f"\n{'model':<22}{'threads':>8}{'params M':>10}{'median s':>10}{'min s':>8}{'peak MB':>9}")
    for r in rows:
        if "error" in r:
            print(f"{r['model']:<22}{r['threads']:>8}  error: {r['error']}")
        else:
            print(f"{r['model']:<22}{r['threads']:>8}{r['params_m']:>10}{r['median_s']:>10}{r['min_s']:>8}{r['peak_mb']:>9}")
    print(f"\n{machine}; results in {out / 'bench.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
