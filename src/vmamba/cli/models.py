"""``vmamba models``: the model zoo, its published weights and the selective-scan backends."""
from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("models", help="list registered models, their published weights and scan backends")
    p.add_argument("pattern", nargs="?", default=None, help="shell-style filter, e.g. 'vmamba_*'")
    p.add_argument("--dense", action="store_true", help="also list the published detection/segmentation checkpoints")
    p.set_defaults(func=run)


def _metrics(metrics: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in metrics.items())


def run(args) -> int:
    from ..models import PRETRAINED, create_model, list_models, pretrained_tags
    from ..ops import available_backends, get_backend

    print(f"{'model':<24} {'params':>12}  {'family':<11} {'published ImageNet-1k weights (reported top-1)'}")
    for name in list_models(args.pattern):
        model = create_model(name)
        params = sum(p.numel() for p in model.parameters())
        family = "v0 (paper)" if model.config["z_gate"] else "v2"
        tags = [PRETRAINED[f"{name}.{t}"] for t in pretrained_tags(name)]
        weights = ", ".join(f"{w.tag}" + (f" ({w.metrics['top1']})" if "top1" in w.metrics else "") for w in tags)
        print(f"{name:<24} {params:>12,}  {family:<11} {weights or '-'}")
    print("\nload one with vmamba.create_model(NAME, pretrained=True) or NAME.TAG (the first tag is the default);"
          "\n`vmamba predict NAME.TAG IMAGE`, `vmamba eval NAME.TAG --data DIR`.")
    if args.dense:
        print("\npublished detection (COCO Mask R-CNN) and segmentation (ADE20K UperNet) checkpoints:")
        for w in PRETRAINED.values():
            if w.task != "classification" and (args.pattern is None or w.model in list_models(args.pattern)):
                print(f"  {w.name:<42} {_metrics(w.metrics)}")
    print("\nselective-scan backends here (best first):")
    for name in available_backends():
        print(f"  {name:<10} {get_backend(name).description}")
    return 0
