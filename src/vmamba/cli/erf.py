"""``vmamba erf MODEL``: effective receptive field heat maps and numbers, beside timm peers."""
from __future__ import annotations

import json
import os
from pathlib import Path

from . import UsageError
from .validate import check_output_folder, int_range, positive_int

# Memory of one image's forward and backward pass per input pixel (a generous estimate for the zoo
# and the timm peers), and of each loaded input image per pixel (3 float32 channels).
BYTES_PER_PIXEL_PASS = 4096
BYTES_PER_PIXEL_IMAGE = 12


def add_parser(sub) -> None:
    p = sub.add_parser("erf", help="effective receptive field of a model (and timm peers) as a heat map",
                       description="Gradient of the centre of the last stage's output w.r.t. the input, "
                                   "averaged over images (the paper's ERF). Shown at random initialisation "
                                   "and, with --checkpoint, after training.")
    p.add_argument("model", help="registered model name")
    p.add_argument("--checkpoint", help="trained weights of MODEL (this project's or the authors'); a file "
                                        "holding another architecture is refused")
    p.add_argument("--pretrained", action="store_true", help="the trained map from MODEL's published weights")
    p.add_argument("--images", help="folder of images (default: bundled Fashion-MNIST test images)")
    p.add_argument("--count", type=positive_int, default=8, help="number of images to average over")
    p.add_argument("--size", type=int_range(32), default=224,
                   help="input side, >= 32 (the paper uses 1024); refused when the estimated memory exceeds the machine's")
    p.add_argument("--peers", nargs="*", default=None,
                   help="timm peers (default when timm is installed: resnet50 convnext_tiny swin_tiny deit_small)")
    p.add_argument("--num-classes", type=positive_int, default=1000)
    p.add_argument("--seed", type=int_range(0), default=0)
    p.add_argument("--out", default="outputs/erf", help="folder for erf.png and erf.json")
    p.set_defaults(func=run)


def estimated_bytes(size: int, count: int) -> int:
    """Memory an ERF at ``size`` x ``size`` over ``count`` images needs, roughly (see the constants)."""
    return size * size * (BYTES_PER_PIXEL_PASS + count * BYTES_PER_PIXEL_IMAGE)


def machine_bytes() -> int | None:
    """Physical memory of this machine, or None when the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(size: int, count: int) -> None:
    """Refuse a --size whose estimated memory exceeds the machine's, before any work."""
    need, have = estimated_bytes(size, count), machine_bytes()
    if have is not None and need > have:
        raise UsageError(f"--size {size}: an ERF at {size}x{size} over {count} image(s) needs about "
                         f"{need / 2**30:,.0f} GiB of memory (estimate), this machine has {have / 2**30:,.0f} GiB; "
                         f"use a smaller --size (the paper uses 1024)")


def _trained_model(args):
    """(label, model) of the trained weights: --checkpoint (must hold MODEL) or --pretrained."""
    from ..pretrained import load

    if args.checkpoint:
        loaded = load(args.checkpoint, model=args.model)
        return f"{args.model} (trained)", loaded.model
    loaded = load(args.model, pretrained=True)
    return f"{loaded.weights.name} (trained)", loaded.model


def run(args) -> int:
    import torch

    from .. import create_model, list_models
    from ..analysis.bench import build_model, import_timm
    from ..analysis.erf import erf_map, erf_summary, load_images, plot_erfs
    from ..checkpoint import CheckpointError

    if args.model not in list_models():
        raise UsageError(f"unknown model {args.model!r}; choose from {', '.join(list_models())}")
    if args.checkpoint and args.pretrained:
        raise UsageError("give --checkpoint or --pretrained, not both")
    check_memory(args.size, args.count)
    check_output_folder(args.out, "--out")
    try:
        images = load_images(args.images, args.size, args.count)
    except (ValueError, OSError) as e:
        raise UsageError(str(e)) from None

    trained = None
    if args.checkpoint or args.pretrained:  # loaded first: a file that does not fit fails before any work
        try:
            trained = _trained_model(args)
        except (CheckpointError, FileNotFoundError, ValueError) as e:
            raise UsageError(str(e)) from None
    maps = {}
    torch.manual_seed(args.seed)
    maps[f"{args.model} (init)"] = erf_map(create_model(args.model, num_classes=args.num_classes), images, True)
    if trained is not None:
        maps[trained[0]] = erf_map(trained[1], images, True)
    peers = args.peers if args.peers is not None else (
        ["resnet50", "convnext_tiny", "swin_tiny", "deit_small"] if import_timm() else [])
    for peer in peers:
        torch.manual_seed(args.seed)
        try:
            maps[f"{peer} (init)"] = erf_map(build_model(peer, (args.size, args.size)), images, True)
        except Exception as e:  # noqa: BLE001 - a peer that cannot run here is reported, not fatal
            print(f"skipping {peer}: {type(e).__name__}: {e}")

    summaries = {name: erf_summary(m) for name, m in maps.items()}
    print(f"{'model':<34}{'mass outside centre 1/4':>24}{'outside centre 1/2':>20}{'area for 50%':>14}")
    for name, s in summaries.items():
        print(f"{name:<34}{s['mass_outside_central_quarter']:>24.1%}{s['mass_outside_central_half']:>20.1%}"
              f"{s['area_ratio_50']:>14.1%}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "erf.json").write_text(json.dumps(
        {"size": args.size, "images": args.count, "models": summaries}, indent=2))
    png = plot_erfs(maps, out / "erf.png", f"Effective receptive field at {args.size}x{args.size}")
    print(f"\nwrote {out / 'erf.json'}" + (f", {png}" if png else " (matplotlib missing: no PNG)"))
    return 0
