"""``vmamba peers``: whole-model CPU speed and memory of the zoo against timm backbones, as ratios."""
from __future__ import annotations

import sys

from ..utils import available_cpus
from . import UsageError
from .validate import add_preload, check_preload

QUICK = dict(sizes=[224], batch=[1], rounds=3, memory_probes=1)
DEFAULTS = dict(sizes=[224, 512, 1024], batch=[1, 8], threads=[1, 2], rounds=5, memory_probes=3)


def add_parser(sub) -> None:
    from ..analysis.peers import DEFAULT_ZOO, PEERS

    p = sub.add_parser(
        "peers", help="CPU img/s and peak memory of zoo models as ratios to timm's Swin-T, ConvNeXt-T, ...",
        description="Runs zoo models and timm peers in one process, in interleaved rounds (median), for every "
                    "input size x batch x thread count x step kind, and prints each model's img/s and peak memory "
                    "as ratios to each peer of the same run, with the CPU model, its ISA, the scan kernel build, "
                    "the dense-layer engine and the memory-allocator settings. "
                    "On 2 quiet cores a full default run takes tens of minutes and --quick a few; far longer "
                    "on busy cores.")
    p.add_argument("--models", nargs="+", default=list(DEFAULT_ZOO), metavar="MODEL",
                   help=f"zoo models (default: {' '.join(DEFAULT_ZOO)}; `vmamba models` lists them)")
    p.add_argument("--peers", nargs="*", default=list(PEERS), metavar="PEER",
                   help=f"timm peers: {', '.join(PEERS)} or any timm model name (default: all four; "
                        "--peers with no names: none)")
    p.add_argument("--sizes", type=int, nargs="+", metavar="PX",
                   help=f"square input sizes (default: {' '.join(map(str, DEFAULTS['sizes']))})")
    p.add_argument("--batch", type=int, nargs="+", metavar="N",
                   help=f"batch sizes (default: {' '.join(map(str, DEFAULTS['batch']))})")
    p.add_argument("--threads", type=int, nargs="+", metavar="N",
                   help="torch thread counts (default: 1 2, capped at the CPUs available)")
    p.add_argument("--modes", nargs="+", choices=["infer", "train"], default=["infer", "train"],
                   help="inference and/or training step (forward, cross-entropy, backward, fused AdamW step)")
    p.add_argument("--rounds", type=int, help=f"timed rounds per configuration (default {DEFAULTS['rounds']})")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per model before the rounds (default 1)")
    p.add_argument("--max-pixels", type=int, default=1024 * 1024, metavar="N",
                   help="skip configurations whose batch x height x width exceeds N (default 1048576: batch 8 "
                        "runs at 224 only); 0: no limit")
    p.add_argument("--no-memory", dest="memory", action="store_false",
                   help="skip the peak-memory probes (fresh processes per model, size, batch and step kind)")
    p.add_argument("--memory-probes", type=int, metavar="N",
                   help=f"fresh processes per peak-memory cell, reported as their median (default "
                        f"{DEFAULTS['memory_probes']}; {QUICK['memory_probes']} with --quick): one process's peak "
                        "varies by tens of MB")
    p.add_argument("--quick", action="store_true",
                   help="224 px, batch 1, 3 rounds, one memory probe (flags given explicitly still apply)")
    p.add_argument("--peer-linear", choices=["timm", "vmamba"], default="timm",
                   help="the peers' nn.Linear layers as timm builds them (default: ATen's matrix product) or on "
                        "vmamba's dense-layer engine (oneDNN on AMD CPUs), to compare the architectures on the "
                        "same matrix-product code")
    add_preload(p)
    p.add_argument("--keep-memory", action="store_true",
                   help="have glibc keep freed memory in this process, so that training steps are not timed "
                        "re-faulting the memory the previously run models freed (a one-model training loop "
                        "reuses its own); the peak-memory probes are unaffected")
    p.add_argument("--json", metavar="FILE", help="write machine, settings, results, ratios and exponents as JSON")
    p.add_argument("--csv", metavar="FILE", help="write one row per model and configuration as CSV")
    p.set_defaults(func=run)


def resolve(args) -> dict:
    """The run's settings from the parsed arguments (--quick and defaults filled in), validated."""
    base = dict(DEFAULTS, **(QUICK if args.quick else {}))
    cpus = available_cpus()
    settings = dict(
        sizes=args.sizes or base["sizes"],
        batches=args.batch or base["batch"],
        threads=args.threads or sorted({min(t, cpus) for t in base["threads"]}),
        rounds=args.rounds if args.rounds is not None else base["rounds"],
        memory_probes=args.memory_probes if args.memory_probes is not None else base["memory_probes"],
    )
    if min(settings["sizes"]) < 32:
        raise UsageError(f"--sizes {min(settings['sizes'])}: sizes must be at least 32 pixels")
    if min(settings["batches"]) < 1:
        raise UsageError(f"--batch {min(settings['batches'])}: batch sizes must be at least 1")
    if min(settings["threads"]) < 1:
        raise UsageError(f"--threads {min(settings['threads'])}: thread counts must be at least 1")
    if settings["rounds"] < 1:
        raise UsageError(f"--rounds {settings['rounds']}: at least 1 round")
    if settings["memory_probes"] < 1:
        raise UsageError(f"--memory-probes {settings['memory_probes']}: at least 1 probe")
    if args.warmup < 0:
        raise UsageError(f"--warmup {args.warmup}: must be 0 or more")
    if args.max_pixels < 0:
        raise UsageError(f"--max-pixels {args.max_pixels}: must be 0 (no limit) or more")
    check_preload(args.preload)
    from ..models import is_model, list_models

    unknown = [m for m in args.models if not is_model(m)]
    if unknown:
        raise UsageError(f"--models {' '.join(unknown)}: not zoo models; choose from {', '.join(list_models())} "
                         f"(timm models go in --peers)")
    if not args.models and not args.peers:
        raise UsageError("nothing to measure: give --models and/or --peers")
    return settings


def run(args) -> int:
    from ..analysis.peers import format_report, keep_freed_memory, run_peers, write_csv, write_json

    if args.keep_memory:  # before any model is built; the run reports the setting
        try:
            keep_freed_memory()
        except RuntimeError as e:
            raise UsageError(str(e)) from None

    settings = resolve(args)
    over = [t for t in settings["threads"] if t > available_cpus()]
    if over:
        print(f"warning: --threads {' '.join(map(str, over))} exceeds the {available_cpus()} CPUs available", file=sys.stderr)
    def save(partial) -> None:  # after every configuration, so an interrupted run keeps what it measured
        if args.json:
            write_json(partial, args.json)
        if args.csv:
            write_csv(partial, args.csv)

    run_ = run_peers(zoo=args.models, peers=args.peers, sizes=settings["sizes"], batches=settings["batches"],
                     threads=settings["threads"], modes=args.modes, rounds=settings["rounds"], warmup=args.warmup,
                     memory=args.memory, max_pixels=args.max_pixels, preload=args.preload,
                     peer_linear=args.peer_linear, log=lambda text: print(text, file=sys.stderr, flush=True),
                     on_progress=save, keep_memory=args.keep_memory, memory_probes=settings["memory_probes"])
    print(format_report(run_), end="")
    save(run_)
    for path in (args.json, args.csv):
        if path:
            print(f"wrote {path}")
    return 0
