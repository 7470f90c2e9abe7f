"""``vmamba demo``: build a model, run an image through it, print shapes and sizes."""
from __future__ import annotations

import time

from . import UsageError


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="build a model and run one image through it (no data needed)")
    p.add_argument("--model", default="vmamba_tiny_s1l8", help="registered model name")
    p.add_argument("--size", type=int, nargs=2, default=(224, 224), metavar=("H", "W"))
    p.add_argument("--backend", default="auto", help="selective-scan backend")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from .. import create_model, list_models

    if args.model not in list_models():
        raise UsageError(f"unknown model {args.model!r}; choose from {', '.join(list_models())}")
    if min(args.size) < 1:
        raise UsageError(f"--size must be positive, got {tuple(args.size)}")
    torch.manual_seed(0)
    model = create_model(args.model, scan_backend=args.backend).eval()
    params = sum(p.numel() for p in model.parameters())
    image = torch.rand(1, 3, *args.size)
    with torch.inference_mode():
        start = time.perf_counter()
        logits = model(image)
        elapsed = time.perf_counter() - start
        _, feats = model.forward_intermediates(image)
    print(f"model      {args.model}  ({params:,} parameters)")
    print(f"input      {tuple(image.shape)}")
    for i, f in enumerate(feats):
        print(f"stage {i}    {tuple(f.shape)}")
    print(f"logits     {tuple(logits.shape)}  (forward {elapsed * 1000:.0f} ms on CPU, random weights)")
    return 0
