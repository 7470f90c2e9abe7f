"""``vmamba export MODEL``: an ONNX file or a torch.export program (.pt2), checked against eager."""
from __future__ import annotations

import os
import time

from . import UsageError
from .validate import check_output_file, float_range, int_range, positive_int

MIN_OPSET = 18  # torch.onnx's exporter (torch.export based) writes opset 18 and later


def max_opset() -> int:
    """The newest ONNX opset the installed torch.onnx exporter writes."""
    try:
        from torch.onnx._constants import ONNX_MAX_OPSET
    except ImportError:
        return MIN_OPSET
    return ONNX_MAX_OPSET


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export a model to ONNX or torch.export (.pt2), verified against PyTorch",
                       description="Exports trace the portable 'torch' scan; the batch is dynamic unless "
                                   "--batch is given. With --dynamic-size the file accepts any height and "
                                   "width that are multiples of 32; otherwise only --size.")
    p.add_argument("model", help="registered model name (see `vmamba models`), a published NAME.TAG, a "
                                 "save_pretrained folder, a file written by vmamba (training checkpoint, "
                                 ".safetensors) or a URL")
    p.add_argument("--pretrained", action="store_true", help="a model name: with its published ImageNet weights")
    p.add_argument("--checkpoint", help="weights to load into the named model (e.g. the authors' .pth)")
    p.add_argument("--ema", action="store_true", help="take the checkpoint's EMA weights")
    p.add_argument("--num-classes", type=int_range(0), help="classes of the head (default: the model's / checkpoint's)")
    p.add_argument("--format", choices=("onnx", "pt2"), default="onnx")
    p.add_argument("--size", type=positive_int, nargs=2, default=(224, 224), metavar=("H", "W"),
                   help="input height and width (default: %(default)s)")
    p.add_argument("--batch", type=positive_int, help="a fixed batch size (default: dynamic)")
    p.add_argument("--dynamic-size", action="store_true", help="accept any H, W that are multiples of 32")
    p.add_argument("--opset", type=int_range(MIN_OPSET), default=18,
                   help=f"ONNX opset, {MIN_OPSET} or later (default: %(default)s)")
    p.add_argument("--no-verify", action="store_true", help="skip running the file against eager PyTorch")
    p.add_argument("--tolerance", type=float_range(0, low_open=True), default=1e-4,
                   help="largest |exported - eager| accepted, relative to max(1, |eager|) (default: %(default)s)")
    p.add_argument("-o", "--output", required=True, help="file to write (.onnx or .pt2)")
    p.set_defaults(func=run)


def _load(args):
    """The model to export, through the one loader (vmamba.load)."""
    from ..checkpoint import CheckpointError
    from ..pretrained import load

    if args.checkpoint and (args.pretrained or "." in args.model or "/" in args.model):
        raise UsageError("--checkpoint goes with a model name (not a saved model, a tag or --pretrained)")
    try:
        if args.checkpoint:
            loaded = load(args.checkpoint, model=args.model, num_classes=args.num_classes, use_ema=args.ema or None)
        else:
            loaded = load(args.model, pretrained=args.pretrained, num_classes=args.num_classes,
                          use_ema=args.ema or None)
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from None
    return loaded.model.eval()


def verify(exported, model, size, batch, dynamic_size: bool, tolerance: float) -> list[tuple]:
    """Run ``exported`` and eager ``model`` on random inputs; returns [(shape, max |diff|)].
    Raises SystemExit(1) when a difference exceeds ``tolerance`` relative to max(1, |eager|)."""
    import torch

    shapes = [(batch or 1, model.in_chans, *size)]
    if not batch:
        shapes.append((3, model.in_chans, *size))
    if dynamic_size:
        shapes.append((batch or 2, model.in_chans, size[0] + 32, max(32, size[1] - 32)))
    found = []
    with torch.no_grad():
        for shape in shapes:
            x = torch.randn(shape)
            ref, got = model(x), exported(x)
            diff = (got - ref).abs().max().item()
            found.append((shape, diff))
            if not diff <= tolerance * max(1.0, ref.abs().max().item()):
                raise SystemExit(f"verification failed at input {shape}: max |exported - eager| = {diff:.3g} "
                                 f"> {tolerance:g} x max(1, |eager|)")
    return found


def run(args) -> int:
    from ..deploy import (ExportError, ExportedModel, OnnxModel, accepted_inputs, export_onnx, export_program,
                          save_program)

    want = ".onnx" if args.format == "onnx" else ".pt2"
    if not args.output.endswith(want):
        raise UsageError(f"--format {args.format} writes a {want} file; got -o {args.output}")
    if args.format == "onnx" and args.opset > max_opset():
        raise UsageError(f"--opset {args.opset}: not allowed; this torch.onnx writes opsets {MIN_OPSET} to {max_opset()}")
    check_output_file(args.output, "-o/--output")  # before a export of many seconds
    model = _load(args)
    dynamic_batch = args.batch is None
    batch = args.batch or 1
    t0 = time.perf_counter()
    try:
        if args.format == "onnx":
            path = export_onnx(model, args.output, args.size, batch, dynamic_batch, args.dynamic_size, args.opset)
        else:
            program = export_program(model, args.size, batch, dynamic_batch, args.dynamic_size)
            path = save_program(program, args.output,
                                accepted_inputs(model, args.size, batch, dynamic_batch, args.dynamic_size))
    except ExportError as e:
        raise UsageError(str(e)) from None
    took = time.perf_counter() - t0
    size = "any multiple of 32" if args.dynamic_size else f"{args.size[0]}x{args.size[1]}"
    print(f"wrote {path} ({os.path.getsize(path) / 1e6:.1f} MB) in {took:.0f} s: "
          f"input (batch {'any' if dynamic_batch else batch}, {model.in_chans}, {size})")
    if not args.no_verify:
        exported = OnnxModel(path) if args.format == "onnx" else ExportedModel(path)
        model.set_scan_backend("auto")
        for shape, diff in verify(exported, model, tuple(args.size), args.batch, args.dynamic_size, args.tolerance):
            print(f"  verified {tuple(shape)}: max |{args.format} - eager| = {diff:.2e}")
    return 0
