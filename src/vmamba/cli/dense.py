"""``vmamba dense ...``: Mask R-CNN / UperNet with VMamba backbones through MMDetection/MMSegmentation.

Subcommands: ``demo`` (train and evaluate on generated data, CPU), ``data`` (write the generated
datasets), ``configs`` (list the shipped paper configs), ``train`` and ``test`` (any config, as
the toolkits' tools/train.py and tools/test.py). All but ``data`` and ``configs`` need the
OpenMMLab stack: ``bash scripts/install_mm.sh``.
"""
from __future__ import annotations

import ast
import json

from . import UsageError

_INSTALL_HINT = "the OpenMMLab stack is not installed; run `bash scripts/install_mm.sh` (see docs/dense.md)"


def _options(pairs: list[str] | None) -> dict:
    """KEY=VALUE pairs (values parsed as Python literals when possible) -> dict."""
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise UsageError(f"--cfg-options expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def add_parser(sub) -> None:
    p = sub.add_parser("dense", help="Mask R-CNN / UperNet with VMamba backbones (MMDetection, MMSegmentation)",
                       description=__doc__.split("\n\n")[1].replace("``", ""))
    dsub = p.add_subparsers(dest="dense_command", metavar="SUBCOMMAND")

    d = dsub.add_parser("demo", help="train Mask R-CNN and UperNet with a small VMamba on generated data (CPU)")
    d.add_argument("--task", choices=["det", "seg", "both"], default="both")
    d.add_argument("--work-dir", default="outputs/dense_demo")
    d.add_argument("--data-root", default=None, help="where to generate the data (default: WORK_DIR/data)")
    d.add_argument("--det-iters", type=int, default=None, help="Mask R-CNN iterations (config: 600)")
    d.add_argument("--seg-iters", type=int, default=None, help="UperNet iterations (config: 800)")
    d.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is robust on shared cores)")
    d.add_argument("--train-images", type=int, default=200)
    d.add_argument("--val-images", type=int, default=50)
    d.add_argument("--no-baseline", action="store_true", help="skip evaluating the untrained model")
    d.set_defaults(func=run_demo)

    g = dsub.add_parser("data", help="write the generated demo datasets (COCO instances + segmentation maps)")
    g.add_argument("--root", default="data/vmamba_shapes")
    g.add_argument("--train-images", type=int, default=200)
    g.add_argument("--val-images", type=int, default=50)
    g.set_defaults(func=run_data)

    c = dsub.add_parser("configs", help="list the shipped configs, or print the path of one")
    c.add_argument("name", nargs="?", help="a config name: print its path")
    c.set_defaults(func=run_configs)

    t = dsub.add_parser("train", help="train a config (a file or a shipped config name)")
    t.add_argument("config")
    t.add_argument("--work-dir", default=None)
    t.add_argument("--cfg-options", nargs="+", metavar="KEY=VALUE", help="override config entries")
    t.add_argument("--resume", action="store_true", help="resume from the latest checkpoint in WORK_DIR")
    t.add_argument("--amp", action="store_true", help="mixed precision (GPU)")
    t.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    t.set_defaults(func=run_train)

    e = dsub.add_parser("test", help="evaluate a dense checkpoint (the authors' or ours) with a config")
    e.add_argument("config")
    e.add_argument("checkpoint")
    e.add_argument("--work-dir", default=None)
    e.add_argument("--cfg-options", nargs="+", metavar="KEY=VALUE", help="override config entries")
    e.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    e.set_defaults(func=run_test)
    p.set_defaults(func=lambda args: p.print_help() or 0)


def _demo_module():
    try:
        from ..dense import demo
        import mmengine  # noqa: F401
    except ImportError as e:
        raise UsageError(f"{_INSTALL_HINT} ({e})") from None
    return demo


def run_demo(args) -> int:
    if min(args.train_images, args.val_images, args.threads) < 1:
        raise UsageError("--train-images, --val-images and --threads must be positive")
    demo = _demo_module()
    tasks = ["det", "seg"] if args.task == "both" else [args.task]
    iters = {k: v for k, v in (("det", args.det_iters), ("seg", args.seg_iters)) if v is not None}
    results = demo.run_demo(tasks, work_dir=args.work_dir, data_root=args.data_root, iters=iters,
                            threads=args.threads, train_images=args.train_images,
                            val_images=args.val_images, baseline=not args.no_baseline)
    print(json.dumps(results, indent=2))
    return 0


def run_data(args) -> int:
    from pathlib import Path

    from ..dense.data import make_instance_dataset, make_semantic_dataset

    root = Path(args.root)
    det = make_instance_dataset(root / "coco", args.train_images, args.val_images)
    seg = make_semantic_dataset(root / "seg", args.train_images, args.val_images)
    print(f"instances:    {det['root']} ({det['train']['instances']} train / {det['val']['instances']} val objects)")
    print(f"segmentation: {seg['root']}")
    return 0


def run_configs(args) -> int:
    from ..dense import config_path, list_configs

    if args.name:
        try:
            print(config_path(args.name))
        except ValueError as e:
            raise UsageError(str(e)) from None
        return 0
    for name in list_configs():
        print(name)
    return 0


def run_train(args) -> int:
    demo = _demo_module()
    demo.train(args.config, args.work_dir, _options(args.cfg_options), args.resume, args.launcher, args.amp)
    return 0


def run_test(args) -> int:
    demo = _demo_module()
    metrics = demo.test(args.config, args.checkpoint, args.work_dir, _options(args.cfg_options), args.launcher)
    print(json.dumps({k: float(v) if isinstance(v, (int, float)) else str(v) for k, v in metrics.items()}, indent=2))
    return 0
