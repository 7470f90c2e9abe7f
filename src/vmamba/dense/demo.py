"""The dense-prediction demo and the train/test entry points (needs the OpenMMLab stack).

:func:`run_demo` generates the shapes datasets (:mod:`vmamba.dense.data`), evaluates a
randomly initialised Mask R-CNN (or UperNet) with a small VMamba backbone through the toolkit's
own evaluator (COCO box/mask AP, or mIoU), trains it on CPU, and evaluates it again.
:func:`train` and :func:`test` run any config (the shipped paper configs included) the way the
toolkits' ``tools/train.py`` and ``tools/test.py`` do, with vmamba's compatibility shims applied
first and the checkpoint of :func:`test` loaded strictly.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

from . import config_path, load_dense_checkpoint

DEMO_CONFIGS = {"det": "mmdet/mask_rcnn_vmamba_demo_shapes", "seg": "mmseg/upernet_vmamba_demo_shapes"}
# The metrics the demo reports, as the toolkits' evaluators name them.
DEMO_METRICS = {"det": ("coco/bbox_mAP", "coco/bbox_mAP_50", "coco/segm_mAP", "coco/segm_mAP_50"),
                "seg": ("mIoU", "mAcc", "aAcc")}


def load_config(path: str | Path, options: dict | None = None, work_dir: str | Path | None = None):
    """mmengine Config of ``path`` (a file or a shipped config name), shims applied first."""
    from mmengine.config import Config

    from . import compat

    compat.apply()
    path = Path(path)
    if not path.is_file():
        path = config_path(str(path))
    cfg = Config.fromfile(str(path))
    if options:
        cfg.merge_from_dict(options)
    if work_dir is not None:
        cfg.work_dir = str(work_dir)
    elif cfg.get("work_dir") is None:
        cfg.work_dir = str(Path("work_dirs") / path.stem)
    return cfg


def _toolkit(cfg) -> str:
    scope = cfg.get("default_scope")
    if scope not in ("mmdet", "mmseg"):
        raise ValueError(f"config default_scope is {scope!r}; expected 'mmdet' or 'mmseg'")
    __import__(f"vmamba.{scope}")  # registers the backbones (and applies mmseg's import shim)
    return scope


def train(config, work_dir=None, options: dict | None = None, resume: bool = False,
          launcher: str = "none", amp: bool = False):
    """Train ``config`` like the toolkits' tools/train.py; returns the Runner."""
    from mmengine.runner import Runner

    cfg = load_config(config, options, work_dir)
    _toolkit(cfg)
    cfg.launcher = launcher
    cfg.resume = resume
    if amp:
        cfg.optim_wrapper.type = "AmpOptimWrapper"
        cfg.optim_wrapper.loss_scale = "dynamic"
    runner = Runner.from_cfg(cfg)
    runner.train()
    return runner


def test(config, checkpoint, work_dir=None, options: dict | None = None, launcher: str = "none",
         strict: bool = True) -> dict:
    """Evaluate ``checkpoint`` (the authors' or this project's dense checkpoint) with ``config``.

    The checkpoint is loaded with :func:`vmamba.dense.load_dense_checkpoint`: strictly, with a
    clear error listing any key that does not fit. Returns the evaluator's metrics.
    """
    from mmengine.runner import Runner

    cfg = load_config(config, options, work_dir)
    _toolkit(cfg)
    cfg.launcher = launcher
    cfg.load_from = None
    if cfg.get("model", {}).get("backbone", {}).get("init_cfg"):
        cfg.model.backbone.init_cfg = None  # the checkpoint brings the backbone's weights
    runner = Runner.from_cfg(cfg)
    load_dense_checkpoint(runner.model, checkpoint, strict=strict)
    return runner.test()


def _demo_config(task: str, data_root: Path, work_dir: Path, iters: int | None):
    cfg = load_config(config_path(DEMO_CONFIGS[task]), work_dir=work_dir)
    root = str(data_root / ("coco" if task == "det" else "seg")) + "/"
    for loader in (cfg.train_dataloader, cfg.val_dataloader, cfg.test_dataloader):
        loader.dataset.data_root = root
    if task == "det":
        cfg.val_evaluator.ann_file = cfg.test_evaluator.ann_file = root + "annotations/instances_val.json"
    if iters is not None:
        cfg.train_cfg.max_iters = iters
        for sched in cfg.param_scheduler:
            if sched.get("end", 0) > 50:
                sched.end = iters
            if sched.type == "CosineAnnealingLR":
                sched.T_max = iters
        cfg.default_hooks.checkpoint.interval = iters
    cfg.train_cfg.val_interval = cfg.train_cfg.max_iters + 1  # evaluated by run_demo instead
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    return cfg


def run_demo(tasks: Sequence[str] = ("det", "seg"), work_dir: str | Path = "outputs/dense_demo",
             data_root: str | Path | None = None, iters: dict | None = None, threads: int = 1,
             train_images: int = 200, val_images: int = 50, baseline: bool = True, log=print) -> dict:
    """Generate the data, evaluate the untrained model, train on CPU, evaluate again.

    Args:
        tasks: 'det' (Mask R-CNN, COCO box/mask AP) and/or 'seg' (UperNet, mIoU).
        work_dir: logs, checkpoints and ``demo_results.json`` go here.
        data_root: where the generated datasets go (default: ``work_dir/data``).
        iters: training iterations per task (default: the demo configs' 600 / 800).
        threads: torch CPU threads. 1 by default: on a shared 2-core machine two OpenMP
            threads stall whenever another process takes a core, which can cost 10x.
        train_images, val_images: sizes of the generated splits.
        baseline: also evaluate the randomly initialised model before training.

    Returns:
        dict per task: metrics 'before' and 'after', 'train_seconds', 'iters', 'checkpoint'.
    """
    import torch
    from mmengine.runner import Runner

    from .data import make_instance_dataset, make_semantic_dataset

    torch.set_num_threads(threads)
    work_dir = Path(work_dir)
    data_root = Path(data_root) if data_root is not None else work_dir / "data"
    results = {}
    for task in tasks:
        if task not in DEMO_CONFIGS:
            raise ValueError(f"unknown demo task {task!r}; choose from {sorted(DEMO_CONFIGS)}")
        start = time.perf_counter()
        make = make_instance_dataset if task == "det" else make_semantic_dataset
        info = make(data_root / ("coco" if task == "det" else "seg"), n_train=train_images, n_val=val_images)
        log(f"[{task}] generated {train_images} + {val_images} images under {info['root']}")
        cfg = _demo_config(task, data_root, work_dir / task, (iters or {}).get(task))
        _toolkit(cfg)
        runner = Runner.from_cfg(cfg)
        pick = lambda m: {k: round(float(m[k]), 4) for k in DEMO_METRICS[task] if k in m}  # noqa: E731
        out = {"iters": cfg.train_cfg.max_iters, "threads": threads}
        if baseline:
            runner.model.init_weights()
            out["before"] = pick(runner.test())
            log(f"[{task}] untrained: {out['before']}")
        t0 = time.perf_counter()
        runner.train()
        out["train_seconds"] = round(time.perf_counter() - t0, 1)
        out["after"] = pick(runner.test())
        out["checkpoint"] = str(work_dir / task / f"iter_{cfg.train_cfg.max_iters}.pth")
        out["total_seconds"] = round(time.perf_counter() - start, 1)
        log(f"[{task}] trained {out['iters']} iterations in {out['train_seconds']} s: {out['after']}")
        results[task] = out
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / "demo_results.json").write_text(json.dumps(results, indent=2))
    return results
