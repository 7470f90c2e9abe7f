"""The training loop: :func:`train` runs a whole job from a :class:`TrainConfig`; :func:`evaluate`
measures a model on a loader. Single process, or one process per GPU/CPU under torchrun."""
from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from .. import create_model
from ..checkpoint import CheckpointError
from . import distributed as dist
from .checkpointing import (export_safetensors, load_training_checkpoint, rng_state, save_training_checkpoint,
                            set_rng_state)
from .config import ConfigError, TrainConfig, validate
from .datasets import ArrayDataset, DataError, build_dataset, class_names, has_test
from .outdir import RunLock, reported_writes
from ..utils import adamw, progress_bar
from .reporting import MetricsLog, plot_curves, summary
from .transforms import BatchAugment, EvalTransform, Mixup, TrainTransform, normalize


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left as it was."""


# --- data ---------------------------------------------------------------------------------

def worker_start_method() -> str | None:
    """How the loaders start their worker processes: ``"forkserver"`` where the platform has it and
    this process's main module is not run again in each worker (``python -m vmamba``, ``torchrun
    -m vmamba``, ``python -m pytest``: a package's ``__main__``; or an interactive session), else
    None (the platform's default, ``fork`` on Linux).

    A worker forked from a process whose other threads are creating or deleting Python thread
    states (DDP's gloo callbacks, the previous loader's exiting queue threads) can block for ever
    in CPython's after-fork cleanup (seen: an evaluation worker of a two-process CPU run on Python
    3.11, the other rank waiting in its all-reduce); the fork server is a single-threaded process
    the workers are forked from instead. A script's own main module would be run again in each
    worker started that way, so scripts keep the default (they need no ``__main__`` guard)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return None
    main = sys.modules.get("__main__")
    spec, file = getattr(main, "__spec__", None), getattr(main, "__file__", None)
    package_main = spec is not None and (spec.name or "").endswith(".__main__")
    return "forkserver" if package_main or (spec is None and file is None) else None


def _worker_context(workers: int):
    """The multiprocessing context of the loaders (None: the default), see :func:`worker_start_method`."""
    method = worker_start_method() if workers > 0 else None
    if method is None:
        return None
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":  # the server imports the training stack once; its forks inherit it
        ctx.set_forkserver_preload([__name__])
    return ctx


def collate_skipping(batch):
    """Stack (uint8 image, label) pairs, dropping unreadable images (None); also return how many."""
    good = [(x, y) for x, y in batch if x is not None]
    if not good:
        return None, None, len(batch)
    return torch.stack([x for x, _ in good]), torch.tensor([y for _, y in good]), len(batch) - len(good)


class ShardSampler(Sampler):
    """Every ``world``-th index starting at ``rank``: evaluation shards with no padding or repeats."""

    def __init__(self, n: int, rank: int, world: int):
        self.indices = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


def data_config(cfg: TrainConfig) -> dict:
    """What eval/predict need to prepare inputs as this run did."""
    return dict(img_size=cfg.img_size, in_chans=cfg.in_chans, mean=list(cfg.mean), std=list(cfg.std),
                crop_pct=cfg.crop_pct, interpolation=cfg.interpolation)


@dataclasses.dataclass
class Data:
    """The run's datasets and loaders; ``test`` is None when the data has no test split."""

    train: object
    val: object
    test: object | None
    train_loader: DataLoader
    val_loader: DataLoader
    test_loader: DataLoader | None


def make_loaders(cfg: TrainConfig, device: torch.device) -> Data:
    """Train, validation and (when the data has one) test datasets and loaders (distributed-aware).

    Validation picks the best epoch and the EMA-or-raw weights; the test split is measured once,
    at the end. Without a val split of its own, validation is held out of the training images.
    """
    def dataset(split, transform):
        return build_dataset(cfg.data, split, transform, cfg.strict_data, cfg.val_fraction)

    evaluation = EvalTransform(cfg.img_size, cfg.in_chans, cfg.crop_pct, cfg.interpolation)
    train_ds = dataset("train", TrainTransform(cfg.img_size, cfg.in_chans, cfg.scale, cfg.ratio, hflip=cfg.hflip,
                                               interpolation=cfg.interpolation))
    val_ds = dataset("val", evaluation)
    test_ds = dataset("test", evaluation) if has_test(cfg.data) else None
    for name, ds in (("val", val_ds), ("test", test_ds)):
        if ds is not None and ds.classes != train_ds.classes:
            raise DataError(f"train and {name} have different classes: {train_ds.classes[:5]}... "
                            f"vs {ds.classes[:5]}...")
    workers = cfg.workers if cfg.workers >= 0 else (0 if isinstance(getattr(train_ds, "base", train_ds), ArrayDataset)
                                                    else min(8, os.cpu_count() or 1))
    common = dict(num_workers=workers, collate_fn=collate_skipping, pin_memory=device.type == "cuda",
                  persistent_workers=False, multiprocessing_context=_worker_context(workers))
    sampler = DistributedSampler(train_ds, dist.world_size(), dist.rank(), shuffle=True, seed=cfg.seed, drop_last=True)
    train_loader = DataLoader(train_ds, cfg.batch_size, sampler=sampler, drop_last=True, **common)
    if len(train_loader) == 0:
        raise DataError(f"{len(train_ds)} training images are fewer than one batch per process "
                        f"({cfg.batch_size} x {dist.world_size()}); lower --batch-size")

    def eval_loader(ds):
        return DataLoader(ds, cfg.batch_size, sampler=ShardSampler(len(ds), dist.rank(), dist.world_size()), **common)

    return Data(train_ds, val_ds, test_ds, train_loader, eval_loader(val_ds),
                eval_loader(test_ds) if test_ds is not None else None)


# --- model and optimisation ---------------------------------------------------------------

def build_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    """``create_model(cfg.model, pretrained=cfg.pretrained, **cfg.model_args)`` with the data's classes and channels."""
    kwargs = dict(cfg.model_args, num_classes=num_classes, in_chans=cfg.in_chans)
    if cfg.drop_path >= 0:
        kwargs["drop_path_rate"] = cfg.drop_path
    return create_model(cfg.model, pretrained=cfg.pretrained, **kwargs)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: weight decay on matrices/kernels, none on 1-D params, biases, A_logs, Ds."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith(".bias") or name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_scheduler(optimizer, cfg: TrainConfig, lr: float, steps_per_epoch: int, scale: float):
    """Linear warm-up then cosine decay to ``min_lr``, stepped every iteration (torch's schedulers)."""
    total = cfg.epochs * steps_per_epoch
    warmup = min(round(cfg.warmup_epochs * steps_per_epoch), total - 1)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total - warmup, 1),
                                                        eta_min=cfg.min_lr * scale)
    if warmup <= 0:
        return cosine
    linear = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=min(cfg.warmup_lr * scale / lr, 1.0),
                                               end_factor=1.0, total_iters=warmup)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [linear, cosine], milestones=[warmup])


def amp_dtype(cfg: TrainConfig, device: torch.device):
    """None (full precision), float16 (CUDA) or bfloat16 (CPU)."""
    if cfg.amp == "off" or (cfg.amp == "auto" and device.type != "cuda"):
        return None
    return torch.float16 if device.type == "cuda" else torch.bfloat16


# --- evaluation ---------------------------------------------------------------------------

@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, num_classes: int, mean, std,
             amp: torch.dtype | None = None, progress: bool = False) -> dict:
    """Top-1/top-5 accuracy (%), mean loss and per-class accuracy, summed over all processes."""
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64)  # loss, correct1, correct5, skipped
    per_class = torch.zeros(2, num_classes, dtype=torch.float64)  # correct, total
    bar = progress_bar(len(loader), "eval", progress and dist.is_main())
    for x, y, skipped in loader:
        sums[3] += skipped
        bar.update()
        if x is None:
            continue
        x, y = normalize(x.to(device, non_blocking=True), mean, std), y.to(device)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = model(x)
        logits = logits.float()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hit1 = (top[:, 0] == y)
        sums[0] += F.cross_entropy(logits, y, reduction="sum").item()
        sums[1] += hit1.sum().item()
        sums[2] += (top == y[:, None]).any(1).sum().item()
        per_class[0].index_add_(0, y.cpu(), hit1.cpu().double())
        per_class[1].index_add_(0, y.cpu(), torch.ones_like(y, dtype=torch.float64).cpu())
    bar.close()
    sums, per_class = dist.all_reduce_sum(sums), dist.all_reduce_sum(per_class)
    n = per_class[1].sum().item()
    if n == 0:
        raise DataError("no readable validation images")
    return dict(loss=sums[0].item() / n, acc1=100 * sums[1].item() / n, acc5=100 * sums[2].item() / n,
                per_class=(100 * per_class[0] / per_class[1].clamp(min=1)).tolist(), n=int(n),
                skipped=int(sums[3].item()))


# --- training -----------------------------------------------------------------------------

def train_one_epoch(model, loader, optimizer, scheduler, scaler, augment, mixup, ema, cfg, device, epoch,
                    step, amp) -> tuple[dict, int]:
    """One pass over ``loader``; returns (epoch metrics reduced over processes, global step)."""
    model.train()
    loader.sampler.set_epoch(epoch)
    steps = len(loader) if not cfg.max_steps_per_epoch else min(len(loader), cfg.max_steps_per_epoch)
    sums = torch.zeros(4, dtype=torch.float64)  # loss*n, correct, n, skipped
    wait = 0.0
    bar = progress_bar(steps, f"epoch {epoch + 1}/{cfg.epochs}", cfg.progress and dist.is_main())
    start = tick = time.perf_counter()
    for i, (x, y, skipped) in enumerate(loader):
        if i >= steps:
            break
        sums[3] += skipped
        if x is not None:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        wait += time.perf_counter() - tick
        if x is None:  # every image of the batch was unreadable
            scheduler.step()
            step += 1
            tick = time.perf_counter()
            continue
        x = augment(x)
        x, target = mixup(x, y)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), target)
        loss_all = dist.all_reduce_sum(loss.detach().reshape(1)) if dist.is_distributed() else loss.detach()
        if not torch.isfinite(loss_all).all():
            raise NonFiniteLossError(f"non-finite loss ({loss.item()}) at epoch {epoch + 1}, step {step} "
                                     f"(batch {i} of the epoch); stopping. The last good checkpoint is kept.")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.clip_grad > 0:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        step += 1
        if ema is not None:
            ema.update_parameters(model.module if hasattr(model, "module") else model)
        n = len(y)
        sums[0] += loss.item() * n
        sums[1] += (logits.argmax(1) == target.argmax(1)).sum().item()
        sums[2] += n
        bar.update()
        if i % cfg.log_interval == 0 or i == steps - 1:
            elapsed = time.perf_counter() - start
            bar.set_postfix(loss=f"{sums[0].item() / sums[2].item():.3f}",
                            acc=f"{100 * sums[1].item() / sums[2].item():.1f}%",
                            img_s=f"{sums[2].item() * dist.world_size() / elapsed:.0f}",
                            lr=f"{optimizer.param_groups[0]['lr']:.2e}", refresh=False)
        tick = time.perf_counter()
    bar.close()
    elapsed = time.perf_counter() - start
    sums = dist.all_reduce_sum(sums)
    n = max(sums[2].item(), 1)
    return dict(train_loss=sums[0].item() / n, train_acc=100 * sums[1].item() / n, epoch_images=int(n),
                skipped_images=int(sums[3].item()), img_per_s=n / elapsed, data_wait_share=wait / elapsed,
                epoch_time=elapsed, lr=optimizer.param_groups[0]["lr"]), step


# --- a run: set-up, resume, epochs, final test ----------------------------------------------

def _plain(obj):
    """JSON-able plain values (tuples -> lists), fit for torch.load(weights_only=True)."""
    return json.loads(json.dumps(obj))


# Options that may differ when a run is resumed; any other difference is refused.
RESUME_MAY_CHANGE = {"out", "resume", "preset", "progress", "log_interval", "workers", "threads", "device",
                     "compile", "strict_data", "grad_checkpointing"}
TRAINING_CHECKPOINT_KEYS = {"model", "optimizer", "scheduler", "scaler", "epoch", "step", "rng", "args"}


@dataclasses.dataclass
class Run:
    """Everything that changes while training: the modules, optimiser state and progress."""

    model: nn.Module
    ema: AveragedModel | None
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler
    augment: BatchAugment
    mixup: Mixup
    amp: torch.dtype | None
    lr: float
    start_epoch: int = 0
    step: int = 0
    best: float = -1.0
    record: dict = dataclasses.field(default_factory=dict)  # the last epoch's metrics


def train(cfg: TrainConfig, build=None) -> dict:
    """Run a training job (see :class:`TrainConfig`); returns the final metrics and output paths.

    ``build(cfg, num_classes)``, when given, builds the network instead of the model registry
    (``cfg.model`` then only names it): how :mod:`vmamba.study` trains its timm peers.

    Writes to ``cfg.out`` (rank 0 only, holding ``cfg.out/.lock`` meanwhile): ``last.pt`` and
    ``best.pt`` (full training state, written atomically every epoch), ``model.safetensors``
    (the selected weights + metadata), ``metrics.jsonl``/``metrics.csv``, ``curves.png``,
    ``config.json`` and ``result.json`` (the final numbers).
    """
    validate(cfg, check_model=build is None)  # make_config did; a TrainConfig built by hand is checked here
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = dist.init_distributed(cfg.device)
    lock = RunLock(cfg.out) if dist.is_main() else None
    try:
        if lock is not None:
            message = lock.acquire()  # also finds an unwritable --out before any work
            if message:
                print(message)
        return _train(cfg, device, build or build_model)
    finally:
        if lock is not None:
            lock.release()
        dist.cleanup()


def _train(cfg: TrainConfig, device: torch.device, build) -> dict:
    out = Path(cfg.out)
    say = print if dist.is_main() else (lambda *a, **k: None)
    seed = cfg.seed + dist.rank()
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)

    ckpt = resume_checkpoint(cfg)  # refusals (a run already there, weights only) before any work
    classes = class_names(cfg.data)
    model = build_checked_model(cfg, len(classes), build).to(device)  # bad --model-args fail before the data loads
    data = make_loaders(cfg, device)
    if cfg.train_images > 0:  # an image budget: the same work whatever the dataset's size
        cfg = dataclasses.replace(cfg, epochs=max(1, round(cfg.train_images / len(data.train))), train_images=0)
    if ckpt is not None:
        check_same_run(ckpt, cfg)
    run = build_run(cfg, model, len(classes), device, steps_per_epoch(cfg, data.train_loader))
    if ckpt is not None:
        restore(run, ckpt)
        say(f"resumed from {cfg.resume if cfg.resume != 'auto' else out / 'last.pt'}: epoch {run.start_epoch} of "
            f"{cfg.epochs} done, step {run.step}" + ("; the run is finished: reporting it again"
                                                    if run.start_epoch >= cfg.epochs else ""))
    log = prepare_output(cfg, out, ckpt) if dist.is_main() else None
    params = sum(p.numel() for p in model.parameters())
    say(f"data: {data.train.description}: {len(data.train)} train / {len(data.val)} val"
        + (f" / {len(data.test)} test" if data.test is not None else " (no test split)")
        + f" images, {len(classes)} classes")
    say(f"model: {cfg.model} {json.dumps(cfg.model_args) if cfg.model_args else ''} ({params / 1e6:.2f}M params) "
        f"on {device} x{dist.world_size()}, batch {cfg.batch_size * dist.world_size()}, lr {run.lr:.2e}, "
        f"{cfg.epochs} epochs")

    t0 = time.perf_counter()
    train_model = wrap_for_training(model, cfg, device)
    for epoch in range(run.start_epoch, cfg.epochs):
        record, is_best = run_epoch(run, train_model, data, cfg, device, epoch, len(classes), say)
        save_epoch(run, cfg, out, epoch, record, is_best, classes, log)
        dist.barrier()
    return finish(run, cfg, out, data, classes, device, log, params, time.perf_counter() - t0)


def prepare_output(cfg: TrainConfig, out: Path, ckpt: dict | None) -> MetricsLog:
    """Rank 0, under the folder's lock: drop temporary files of a killed write, cut the metrics log
    back to the resumed epoch (or start it afresh), write config.json."""
    with reported_writes(out):
        for stale in out.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
    log = MetricsLog(out)
    with reported_writes(log.jsonl):
        if ckpt is not None:
            log.truncate(ckpt["epoch"] + 1, ckpt.get("metrics") or None)
        else:
            log.truncate(0)
    with reported_writes(out / "config.json"):
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    return log


def steps_per_epoch(cfg: TrainConfig, loader) -> int:
    return len(loader) if not cfg.max_steps_per_epoch else min(len(loader), cfg.max_steps_per_epoch)


def build_checked_model(cfg: TrainConfig, num_classes: int, build=build_model) -> nn.Module:
    """``build`` (:func:`build_model`), with a constructor's refusal reported against ``--model-args``."""
    try:
        return build(cfg, num_classes)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"--model {cfg.model} --model-args {json.dumps(cfg.model_args)}: {e}") from None


def build_run(cfg: TrainConfig, model: nn.Module, num_classes: int, device: torch.device, steps: int) -> Run:
    """Optimiser (lr scaled by the global batch), schedule, AMP, EMA and augmentation for ``model``."""
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    scale = cfg.batch_size * dist.world_size() / cfg.lr_base_batch
    lr = cfg.lr * scale
    optimizer = adamw(param_groups(model, cfg.weight_decay), lr=lr, betas=cfg.betas, eps=cfg.eps)
    amp = amp_dtype(cfg, device)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True) if cfg.ema else None
    return Run(model=model, ema=ema, optimizer=optimizer, scheduler=build_scheduler(optimizer, cfg, lr, steps, scale),
               scaler=torch.amp.GradScaler(device.type, enabled=amp == torch.float16),
               augment=BatchAugment(cfg.mean, cfg.std, cfg.randaugment, cfg.color_jitter, cfg.reprob).to(device),
               mixup=Mixup(num_classes, cfg.mixup, cfg.cutmix, cfg.mixup_prob, cfg.mixup_switch_prob,
                           cfg.label_smoothing),
               amp=amp, lr=lr)


def wrap_for_training(model: nn.Module, cfg: TrainConfig, device: torch.device) -> nn.Module:
    """DDP under torchrun, then torch.compile when asked."""
    if dist.is_distributed():
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(model) if cfg.compile else model


# --- resuming -----------------------------------------------------------------------------

def resume_checkpoint(cfg: TrainConfig) -> dict | None:
    """The training checkpoint to continue from, or None for a fresh run.

    A fresh run (no ``--resume``) into a folder that already holds a run is refused, so finished
    work is never overwritten; ``--resume auto`` continues it (or, when finished, reports it again).
    """
    last = Path(cfg.out) / "last.pt"
    if cfg.resume == "auto":
        return load_resumable(last) if last.exists() else None
    if cfg.resume:
        return load_resumable(cfg.resume)
    if last.exists():
        raise ConfigError(f"--out {cfg.out} already holds a run ({last}); add --resume auto to continue it "
                          f"(or report it again when finished), or choose another --out for a new run")
    return None


def load_resumable(path) -> dict:
    """A training checkpoint from ``path``; a clear error for files that hold weights only."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"--resume {path}: no such file; expected last.pt or best.pt of a vmamba train run")
    if path.is_dir():
        raise ConfigError(f"--resume {path}: a folder; expected last.pt or best.pt of a vmamba train run")
    if path.suffix == ".safetensors":
        raise ConfigError(f"--resume {path}: holds weights only (no optimiser, schedule or progress); expected "
                          f"last.pt or best.pt of a vmamba train run")
    try:
        ckpt = load_training_checkpoint(path)
    except CheckpointError as e:
        raise CheckpointError(f"--resume {path}: not a training checkpoint of vmamba train ({e})") from None
    missing = TRAINING_CHECKPOINT_KEYS - set(ckpt) if isinstance(ckpt, dict) else TRAINING_CHECKPOINT_KEYS
    if missing:
        raise ConfigError(f"--resume {path}: holds weights only, not a training state (missing "
                          f"{', '.join(sorted(missing))}); expected last.pt or best.pt of a vmamba train run")
    return ckpt


def check_same_run(ckpt: dict, cfg: TrainConfig) -> None:
    """Refuse to resume with options that change what is trained (another model, data, recipe)."""
    stored, now = ckpt["args"], _plain(cfg.to_dict())
    changed = [k for k in now if k in stored and k not in RESUME_MAY_CHANGE and stored[k] != now[k]]
    if changed:
        diff = "; ".join(f"--{k.replace('_', '-')} was {json.dumps(stored[k])}, now {json.dumps(now[k])}"
                         for k in changed)
        raise ConfigError(f"cannot resume {cfg.out}: the run was started with other options ({diff}). Resume "
                          f"with the same values, or choose another --out for a new run")


def restore(run: Run, ckpt: dict) -> None:
    """Load a training checkpoint's state into ``run`` (model, EMA, optimiser, schedule, RNG)."""
    run.model.load_state_dict(ckpt["model"])
    if run.ema is not None and "model_ema" in ckpt:
        run.ema.module.load_state_dict(ckpt["model_ema"])
        run.ema.n_averaged.fill_(ckpt["ema_n_averaged"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    run.scaler.load_state_dict(ckpt["scaler"])
    run.start_epoch, run.step, run.best = ckpt["epoch"] + 1, ckpt["step"], ckpt["best_acc1"]
    run.record = ckpt.get("metrics") or {}
    set_rng_state(ckpt["rng"][dist.rank()] if dist.rank() < len(ckpt["rng"]) else ckpt["rng"][0])


# --- one epoch ----------------------------------------------------------------------------

def run_epoch(run: Run, train_model, data: Data, cfg: TrainConfig, device, epoch: int, num_classes: int,
              say) -> tuple[dict, bool]:
    """Train one epoch, validate the model (and its EMA); returns (the epoch's record, is best)."""
    stats, run.step = train_one_epoch(train_model, data.train_loader, run.optimizer, run.scheduler, run.scaler,
                                      run.augment, run.mixup, run.ema, cfg, device, epoch, run.step, run.amp)
    val = evaluate(run.model, data.val_loader, device, num_classes, cfg.mean, cfg.std, run.amp)
    record = dict(epoch=epoch + 1, step=run.step, **stats, val_loss=val["loss"], val_acc1=val["acc1"],
                  val_acc5=val["acc5"])
    if run.ema is not None:
        val_ema = evaluate(run.ema.module, data.val_loader, device, num_classes, cfg.mean, cfg.std, run.amp)
        record.update(val_loss_ema=val_ema["loss"], val_acc1_ema=val_ema["acc1"], val_acc5_ema=val_ema["acc5"])
    run.record = record
    acc = max(record["val_acc1"], record.get("val_acc1_ema", -1))
    is_best = acc > run.best
    run.best = max(run.best, acc)
    say(f"epoch {epoch + 1}/{cfg.epochs}  train loss {stats['train_loss']:.4f} acc {stats['train_acc']:.2f}%  "
        f"val loss {val['loss']:.4f} top-1 {val['acc1']:.2f}% top-5 {val['acc5']:.2f}%"
        + (f" (EMA {record['val_acc1_ema']:.2f}%)" if run.ema is not None else "")
        + f"  {stats['img_per_s']:.0f} img/s  data wait {100 * stats['data_wait_share']:.1f}%  "
        f"{stats['epoch_time']:.0f}s" + (f"  skipped {stats['skipped_images']} unreadable images"
                                          if stats["skipped_images"] else ""))
    return record, is_best


def save_epoch(run: Run, cfg: TrainConfig, out: Path, epoch: int, record: dict, is_best: bool,
               classes: list[str], log: MetricsLog | None) -> None:
    """Write last.pt (and best.pt) and the metrics row; rank 0 writes, every rank gives its RNG state."""
    rngs = [rng_state()]
    if dist.is_distributed():
        rngs = [None] * dist.world_size()
        torch.distributed.all_gather_object(rngs, rng_state())
    if not dist.is_main():
        return
    ckpt = dict(model=run.model.state_dict(), config=dict(run.model.config), optimizer=run.optimizer.state_dict(),
                scheduler=run.scheduler.state_dict(), scaler=run.scaler.state_dict(), epoch=epoch, step=run.step,
                rng=rngs, sampler=dict(seed=cfg.seed, epoch=epoch + 1, world_size=dist.world_size()),
                best_acc1=run.best, metrics=record, args=_plain(cfg.to_dict()), class_names=list(classes),
                data_config=data_config(cfg))
    if run.ema is not None:
        ckpt.update(model_ema=run.ema.module.state_dict(), ema_n_averaged=int(run.ema.n_averaged.item()))
    save_training_checkpoint(ckpt, out / "last.pt")
    if is_best:
        save_training_checkpoint(ckpt, out / "best.pt")
    with reported_writes(log.jsonl):
        log.append(record)


# --- the end: selected weights, measured once on the test split -----------------------------

def select_weights(run: Run, out: Path) -> tuple[nn.Module, str, dict]:
    """The weights validation chose: best.pt's model or EMA, whichever validated better there.
    Returns (module holding them, 'model' or 'ema', best.pt's epoch record). When this --out has
    no best.pt (resumed from another folder's last.pt, no epoch better since), the last weights."""
    if not (out / "best.pt").exists():
        use_ema = run.ema is not None and run.record.get("val_acc1_ema", -1) > run.record["val_acc1"]
        return (run.ema.module if use_ema else run.model), "ema" if use_ema else "model", run.record
    best = load_training_checkpoint(out / "best.pt")
    record = best["metrics"]
    use_ema = "model_ema" in best and record.get("val_acc1_ema", -1) > record["val_acc1"]
    module = run.ema.module if use_ema and run.ema is not None else run.model
    module.load_state_dict(best["model_ema" if use_ema else "model"])
    return module, "ema" if use_ema else "model", record


def finish(run: Run, cfg: TrainConfig, out: Path, data: Data, classes: list[str], device, log, params: int,
           train_time: float) -> dict:
    """Measure the selected weights once on the test split (when there is one), export them, report."""
    dist.barrier()  # best.pt is complete
    final, weights, record = select_weights(run, out)
    suffix = "_ema" if weights == "ema" else ""
    val_acc1, val_acc5 = record["val_acc1" + suffix], record["val_acc5" + suffix]
    test = None
    if data.test_loader is not None:
        test = evaluate(final, data.test_loader, next(final.parameters()).device, len(classes), cfg.mean, cfg.std,
                        run.amp)
    split = "test" if test is not None else "val"
    result = dict(out=str(out), split=split, acc1=test["acc1"] if test else val_acc1,
                  acc5=test["acc5"] if test else val_acc5, test_acc1=test["acc1"] if test else None,
                  test_acc5=test["acc5"] if test else None, val_acc1=val_acc1, val_acc5=val_acc5,
                  best_epoch=record["epoch"], epochs=cfg.epochs, train_time_s=train_time, weights=weights,
                  rank=dist.rank())
    if not dist.is_main():
        return result
    final_metrics = {k: v for k, v in result.items() if k not in ("out", "rank", "train_time_s")}
    export_safetensors(final, out / "model.safetensors", list(classes), data_config(cfg), weights=weights,
                       metrics=dict(record, **final_metrics))
    with reported_writes(out / "result.json"):
        (out / "result.json").write_text(json.dumps(dict(final_metrics, data=data.train.description), indent=2) + "\n")
    rows = log.read()
    with reported_writes(out / "curves.png"):
        plotted = plot_curves(rows, out / "curves.png")
    final_line = (f"{result['acc1']:.2f}%  (top-5 {result['acc5']:.2f}%, measured once, on {len(data.test)} images)"
                  if test else "none in this data: the val number above is the final one")
    print(summary({
        "data": data.train.description,
        "model": f"{cfg.model} ({params / 1e6:.2f}M params)",
        "epochs": f"{cfg.epochs} ({len(rows)} logged), {dist.world_size()} process(es) on {device.type}",
        "time": f"{train_time:.0f} s this session",
        "val top-1": f"{val_acc1:.2f}%  (top-5 {val_acc5:.2f}%; selected epoch {record['epoch']}, {weights} weights, "
                     f"{len(data.val)} images)",
        "test top-1": final_line,
        "checkpoints": f"{out / 'last.pt'}, {out / 'best.pt'}",
        "weights": f"{out / 'model.safetensors'} (the selected ones)",
        "metrics": f"{log.jsonl}, {log.csv}, {out / 'result.json'}" + (f", {out / 'curves.png'}" if plotted else ""),
    }))
    return result
