"""``vmamba bench``: throughput, latency and peak memory over resolutions and batch sizes."""
from __future__ import annotations

from . import UsageError

DEFAULT_MODELS = ["vanilla_vmamba_tiny", "vmamba_tiny_s1l8"]


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="throughput/latency/memory against input size, with timm peers",
                       description="Writes bench.csv, bench.json and a log-log bench.png (cost against "
                                   "pixels with the fitted exponent per model) to --out.")
    p.add_argument("--models", nargs="+", default=None,
                   help=f"zoo models and/or timm peers (default: {' '.join(DEFAULT_MODELS)} + peers)")
    p.add_argument("--peers", nargs="*", default=None,
                   help="timm peers (default when timm is installed: deit_small swin_tiny convnext_tiny resnet50)")
    p.add_argument("--sizes", type=int, nargs="+", default=[224, 384, 512, 768, 1024])
    p.add_argument("--batch", type=int, nargs="+", default=[1])
    p.add_argument("--mode", nargs="+", choices=["infer", "train"], default=["infer"])
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--amp", action="store_true", help="autocast (the paper's training throughput uses AMP)")
    p.add_argument("--backend", default="auto", help="selective-scan backend of the VMamba models")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--out", default="outputs/bench", help="folder for bench.csv/json/png")
    p.set_defaults(func=run)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def run(args) -> int:
    from ..analysis.bench import PEERS, fit_exponents, format_table, import_timm, run_benchmarks, write_results

    if min(args.sizes) < 16 or min(args.batch) < 1 or args.reps < 1 or args.warmup < 0:
        raise UsageError("--sizes >= 16, --batch >= 1, --reps >= 1 and --warmup >= 0")
    models = list(args.models or DEFAULT_MODELS)
    if args.peers is not None:
        models += args.peers
    elif args.models is None and import_timm() is not None:
        models += list(PEERS)
    rows = run_benchmarks(models, args.sizes, args.batch, args.mode, args.device, args.warmup, args.reps,
                          args.amp, args.backend)
    print(format_table(rows))
    fits = fit_exponents(rows)
    if fits:
        print("\nfitted exponent k (seconds per image ~ pixels^k):")
        for (model, mode, batch), k in sorted(fits.items()):
            print(f"  {model:<22} {mode:<6} b{batch:<4} k = {k:.2f}")
    paths = write_results(rows, args.out)
    print("\nwrote " + ", ".join(str(p) for p in paths.values()))
    return 0
