"""The training loop: :func:`train` runs a whole job from a :class:`TrainConfig`; :func:`evaluate`
measures a model on a loader. Single process, or one process per GPU/CPU under torchrun."""
from __future__ import annotations

import dataclasses
import json
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from .. import create_model
from . import distributed as dist
from .checkpointing import (export_safetensors, load_training_checkpoint, rng_state, save_training_checkpoint,
                            set_rng_state)
from .config import TrainConfig
from .datasets import ArrayDataset, DataError, build_dataset
from .reporting import MetricsLog, plot_curves, progress_bar, summary
from .transforms import BatchAugment, EvalTransform, Mixup, TrainTransform, normalize


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left as it was."""


# --- data ---------------------------------------------------------------------------------

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


def make_loaders(cfg: TrainConfig, device: torch.device):
    """Train and validation datasets and loaders (distributed-aware)."""
    train_ds = build_dataset(cfg.data, "train", TrainTransform(cfg.img_size, cfg.in_chans, cfg.scale, cfg.ratio,
                                                               hflip=cfg.hflip, interpolation=cfg.interpolation),
                             cfg.strict_data)
    val_ds = build_dataset(cfg.data, "val", EvalTransform(cfg.img_size, cfg.in_chans, cfg.crop_pct, cfg.interpolation),
                           cfg.strict_data)
    if train_ds.classes != val_ds.classes:
        raise DataError(f"train and val have different classes: {train_ds.classes[:5]}... vs {val_ds.classes[:5]}...")
    workers = cfg.workers if cfg.workers >= 0 else (0 if isinstance(train_ds, ArrayDataset) else min(8, os.cpu_count() or 1))
    common = dict(num_workers=workers, collate_fn=collate_skipping, pin_memory=device.type == "cuda",
                  persistent_workers=False)
    sampler = DistributedSampler(train_ds, dist.world_size(), dist.rank(), shuffle=True, seed=cfg.seed, drop_last=True)
    train_loader = DataLoader(train_ds, cfg.batch_size, sampler=sampler, drop_last=True, **common)
    val_loader = DataLoader(val_ds, cfg.batch_size, sampler=ShardSampler(len(val_ds), dist.rank(), dist.world_size()),
                            **common)
    if len(train_loader) == 0:
        raise DataError(f"{len(train_ds)} training images are fewer than one batch per process "
                        f"({cfg.batch_size} x {dist.world_size()}); lower --batch-size")
    return train_ds, val_ds, train_loader, val_loader


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


def _plain(obj):
    """JSON-able plain values (tuples -> lists), fit for torch.load(weights_only=True)."""
    return json.loads(json.dumps(obj))


def train(cfg: TrainConfig) -> dict:
    """Run a training job (see :class:`TrainConfig`); returns the final metrics and output paths.

    Writes to ``cfg.out`` (rank 0 only): ``last.pt`` and ``best.pt`` (full training state,
    written atomically every epoch), ``model.safetensors`` (final weights + metadata),
    ``metrics.jsonl``/``metrics.csv``, ``curves.png`` and ``config.json``.
    """
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = dist.init_distributed(cfg.device)
    try:
        return _train(cfg, device)
    finally:
        dist.cleanup()


def _train(cfg: TrainConfig, device: torch.device) -> dict:
    main = dist.is_main()
    out = Path(cfg.out)
    say = print if main else (lambda *a, **k: None)
    seed = cfg.seed + dist.rank()
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)

    train_ds, val_ds, train_loader, val_loader = make_loaders(cfg, device)
    if cfg.train_images > 0:  # an image budget: the same work whatever the dataset's size
        cfg = dataclasses.replace(cfg, epochs=max(1, round(cfg.train_images / len(train_ds))), train_images=0)
    classes = train_ds.classes
    model = build_model(cfg, len(classes)).to(device)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    global_batch = cfg.batch_size * dist.world_size()
    scale = global_batch / cfg.lr_base_batch
    lr = cfg.lr * scale
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=lr, betas=cfg.betas, eps=cfg.eps)
    steps_per_epoch = len(train_loader) if not cfg.max_steps_per_epoch else min(len(train_loader), cfg.max_steps_per_epoch)
    scheduler = build_scheduler(optimizer, cfg, lr, steps_per_epoch, scale)
    amp = amp_dtype(cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True) if cfg.ema else None
    augment = BatchAugment(cfg.mean, cfg.std, cfg.randaugment, cfg.color_jitter, cfg.reprob).to(device)
    mixup = Mixup(len(classes), cfg.mixup, cfg.cutmix, cfg.mixup_prob, cfg.mixup_switch_prob, cfg.label_smoothing)

    start_epoch, step, best = 0, 0, -1.0
    if main:
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob(".*.tmp"):  # left by a run killed in the middle of a write
            stale.unlink(missing_ok=True)
    log = MetricsLog(out) if main else None
    resume = str(out / "last.pt") if cfg.resume == "auto" else cfg.resume
    if resume and (cfg.resume != "auto" or Path(resume).exists()):
        ckpt = load_training_checkpoint(resume)
        model.load_state_dict(ckpt["model"])
        if ema is not None and "model_ema" in ckpt:
            ema.module.load_state_dict(ckpt["model_ema"])
            ema.n_averaged.fill_(ckpt["ema_n_averaged"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        start_epoch, step, best = ckpt["epoch"] + 1, ckpt["step"], ckpt["best_acc1"]
        set_rng_state(ckpt["rng"][dist.rank()] if dist.rank() < len(ckpt["rng"]) else ckpt["rng"][0])
        if main:
            log.truncate(ckpt["epoch"] + 1, ckpt.get("metrics") or None)
        say(f"resumed from {resume}: epoch {start_epoch} done, step {step}")
    elif main:
        log.truncate(0)

    train_model = model
    if dist.is_distributed():
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        train_model = torch.compile(train_model)

    params = sum(p.numel() for p in model.parameters())
    say(f"data: {train_ds.description}: {len(train_ds)} train / {len(val_ds)} val images, {len(classes)} classes")
    say(f"model: {cfg.model} {json.dumps(cfg.model_args) if cfg.model_args else ''} ({params / 1e6:.2f}M params) "
        f"on {device} x{dist.world_size()}, batch {global_batch}, lr {lr:.2e}, {cfg.epochs} epochs")
    if main:
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")

    t0 = time.perf_counter()
    record = {}
    for epoch in range(start_epoch, cfg.epochs):
        stats, step = train_one_epoch(train_model, train_loader, optimizer, scheduler, scaler, augment, mixup, ema,
                                      cfg, device, epoch, step, amp)
        val = evaluate(model, val_loader, device, len(classes), cfg.mean, cfg.std, amp)
        record = dict(epoch=epoch + 1, step=step, **stats, val_loss=val["loss"], val_acc1=val["acc1"],
                      val_acc5=val["acc5"])
        if ema is not None:
            val_ema = evaluate(ema.module, val_loader, device, len(classes), cfg.mean, cfg.std, amp)
            record.update(val_loss_ema=val_ema["loss"], val_acc1_ema=val_ema["acc1"], val_acc5_ema=val_ema["acc5"])
        acc = max(record["val_acc1"], record.get("val_acc1_ema", -1))
        is_best = acc > best
        best = max(best, acc)
        say(f"epoch {epoch + 1}/{cfg.epochs}  train loss {stats['train_loss']:.4f} acc {stats['train_acc']:.2f}%  "
            f"val loss {val['loss']:.4f} top-1 {val['acc1']:.2f}% top-5 {val['acc5']:.2f}%"
            + (f" (EMA {record['val_acc1_ema']:.2f}%)" if ema is not None else "")
            + f"  {stats['img_per_s']:.0f} img/s  data wait {100 * stats['data_wait_share']:.1f}%  "
            f"{stats['epoch_time']:.0f}s" + (f"  skipped {stats['skipped_images']} unreadable images"
                                              if stats["skipped_images"] else ""))
        rngs = [rng_state()]
        if dist.is_distributed():
            rngs = [None] * dist.world_size()
            torch.distributed.all_gather_object(rngs, rng_state())
        if main:
            ckpt = dict(model=model.state_dict(), config=dict(model.config), optimizer=optimizer.state_dict(),
                        scheduler=scheduler.state_dict(), scaler=scaler.state_dict(), epoch=epoch, step=step,
                        rng=rngs, sampler=dict(seed=cfg.seed, epoch=epoch + 1, world_size=dist.world_size()),
                        best_acc1=best, metrics=record, args=_plain(cfg.to_dict()), class_names=list(classes),
                        data_config=data_config(cfg))
            if ema is not None:
                ckpt.update(model_ema=ema.module.state_dict(), ema_n_averaged=int(ema.n_averaged.item()))
            save_training_checkpoint(ckpt, out / "last.pt")
            if is_best:
                save_training_checkpoint(ckpt, out / "best.pt")
            log.append(record)
        dist.barrier()

    if not record:  # resumed after the last epoch: read the final metrics back
        record = load_training_checkpoint(resume)["metrics"]
    # final weights: the EMA when it evaluates better, else the model
    use_ema = ema is not None and record.get("val_acc1_ema", -1) > record.get("val_acc1", -1)
    final = ema.module if use_ema else model
    result = dict(out=str(out), test_acc1=record.get("val_acc1_ema" if use_ema else "val_acc1"),
                  test_acc5=record.get("val_acc5_ema" if use_ema else "val_acc5"), best_acc1=best,
                  epochs=cfg.epochs, train_time_s=time.perf_counter() - t0, weights="ema" if use_ema else "model",
                  rank=dist.rank())
    if main:
        export_safetensors(final, out / "model.safetensors", list(classes), data_config(cfg),
                           weights=result["weights"], metrics=record)
        rows = log.read()
        plotted = plot_curves(rows, out / "curves.png")
        print(summary({
            "data": train_ds.description,
            "model": f"{cfg.model} ({params / 1e6:.2f}M params)",
            "epochs": f"{cfg.epochs} ({len(rows)} logged), {dist.world_size()} process(es) on {device.type}",
            "time": f"{result['train_time_s']:.0f} s this session",
            "test top-1": f"{result['test_acc1']:.2f}%  (top-5 {result['test_acc5']:.2f}%, {result['weights']} weights)",
            "best top-1": f"{best:.2f}%",
            "checkpoints": f"{out / 'last.pt'}, {out / 'best.pt'}",
            "weights": str(out / "model.safetensors"),
            "metrics": f"{log.jsonl}, {log.csv}" + (f", {out / 'curves.png'}" if plotted else ""),
        }))
    return result
