"""``vmamba models``: list the model zoo and the selective-scan backends."""
from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("models", help="list registered models and scan backends")
    p.add_argument("pattern", nargs="?", default=None, help="shell-style filter, e.g. 'vmamba_*'")
    p.set_defaults(func=run)


def run(args) -> int:
    from .. import create_model, list_models
    from ..ops import available_backends, get_backend

    print(f"{'model':<24} {'params':>12}  family")
    for name in list_models(args.pattern):
        model = create_model(name)
        params = sum(p.numel() for p in model.parameters())
        family = "v0 (paper)" if model.config["z_gate"] else "v2"
        print(f"{name:<24} {params:>12,}  {family}")
    print("\nselective-scan backends here (best first):")
    for name in available_backends():
        print(f"  {name:<10} {get_backend(name).description}")
    return 0
