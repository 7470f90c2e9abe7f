"""``vmamba flops MODEL``: parameters and FLOPs (paper convention) with breakdowns."""
from __future__ import annotations

import json

from . import UsageError


def add_parser(sub) -> None:
    p = sub.add_parser("flops", help="parameters and FLOPs of a model (the paper's convention)",
                       description="One multiply-add = one FLOP; the selective scan counts "
                                   "9*B*D*L*N + B*D*L; element-wise activations count 0.")
    p.add_argument("model", help="registered model name (see `vmamba models`)")
    p.add_argument("--size", type=int, nargs=2, default=(224, 224), metavar=("H", "W"))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--json", action="store_true", help="print a JSON object instead of tables")
    p.set_defaults(func=run)


def run(args) -> int:
    from .. import create_model, list_models
    from ..analysis import count_flops

    if args.model not in list_models():
        raise UsageError(f"unknown model {args.model!r}; choose from {', '.join(list_models())}")
    if min(args.size) < 1 or args.batch < 1:
        raise UsageError("--size and --batch must be positive")
    report = count_flops(create_model(args.model, num_classes=args.num_classes), tuple(args.size), args.batch)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
        return 0
    print(f"{report.model} at {args.size[0]}x{args.size[1]}, batch {args.batch}")
    print(f"  params  {report.params:>16,}")
    print(f"  FLOPs   {report.flops:>16,}  ({report.flops / 1e9:.2f} G)\n")
    print(f"  {'part':<24}{'GFLOPs':>10}{'share':>8}")
    for name, flops in report.by_module.items():
        print(f"  {name:<24}{flops / 1e9:>10.3f}{flops / report.flops:>8.1%}")
    print(f"\n  {'operator':<24}{'GFLOPs':>10}{'share':>8}")
    for op, flops in sorted(report.by_op.items(), key=lambda kv: -kv[1]):
        label = "selective scan" if "scan_flop_probe" in op else op
        print(f"  {label:<24}{flops / 1e9:>10.3f}{flops / report.flops:>8.1%}")
    return 0
