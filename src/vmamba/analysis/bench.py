"""Throughput, latency and peak memory across input resolutions and batch sizes.

Every configuration gets warm-up iterations, then several timed repetitions; the median is
reported with the spread (25th-75th percentile). Peers from timm (quadratic-cost ViTs, Swin,
CNNs) run beside the VMamba models when timm is installed. ``fit_exponents`` fits
cost ~ pixels^k per model on a log-log scale: k near 1 means linear cost in the pixel count.
"""
from __future__ import annotations

import contextlib
import csv
import ctypes
import gc
import json
import math
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..utils import progress_bar, pyplot

# Short names of timm peers -> timm model names.
PEERS = {
    "deit_small": "deit_small_patch16_224",
    "swin_tiny": "swin_tiny_patch4_window7_224",
    "convnext_tiny": "convnext_tiny",
    "resnet50": "resnet50",
}
_NEEDS_IMG_SIZE = ("deit", "vit", "swin")


@dataclass
class BenchRow:
    """One measured configuration (times in seconds per iteration of ``batch`` images)."""

    model: str
    mode: str
    batch: int
    height: int
    width: int
    median_s: float
    p25_s: float
    p75_s: float
    img_per_s: float
    peak_mem_mb: float | None
    device: str
    error: str = ""

    @property
    def pixels(self) -> int:
        return self.height * self.width


def import_timm():
    """timm, or None when it is not installed or does not import."""
    try:
        import timm
    except Exception:  # noqa: BLE001 - timm is optional; a broken install counts as absent
        return None
    return timm


def build_model(name: str, size: tuple[int, int], scan_backend: str = "auto") -> nn.Module:
    """A zoo model, or a timm peer (short name from PEERS or any timm name) sized for ``size``."""
    from ..models import create_model, is_model

    if is_model(name):
        return create_model(name, scan_backend=scan_backend)
    timm = import_timm()
    if timm is None:
        raise ValueError(f"{name!r} is not a vmamba model, and timm is not available for peers")
    timm_name = PEERS.get(name, name)
    kwargs = {"img_size": size} if timm_name.startswith(_NEEDS_IMG_SIZE) else {}
    return timm.create_model(timm_name, pretrained=False, **kwargs)


def _release_free_memory() -> None:
    """Give memory freed by earlier runs back to the OS (glibc), so growth is measured afresh."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class _PeakRSS:
    """Peak resident memory above the starting level, sampled every few ms (Linux /proc)."""

    def __init__(self, interval: float = 0.002):
        self.interval, self.peak, self.base, self._stop = interval, 0, 0, threading.Event()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    def __enter__(self):
        _release_free_memory()
        self.base = self.peak = self._rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def mb(self) -> float:
        return (self.peak - self.base) / 2 ** 20


def _step(model: nn.Module, x: torch.Tensor, mode: str, amp: bool) -> None:
    autocast = torch.autocast(x.device.type, enabled=amp)
    if mode == "infer":
        with torch.inference_mode(), autocast:
            model(x)
    else:
        with autocast:
            out = model(x)
        out.float().mean().backward()
        model.zero_grad(set_to_none=True)


def measure(model: nn.Module, x: torch.Tensor, mode: str = "infer", warmup: int = 2, reps: int = 5,
            amp: bool = False) -> tuple[list[float], float | None]:
    """Seconds per iteration over ``reps`` timed runs, and peak memory in MB (None if unknown)."""
    model.train(mode == "train")
    cuda = x.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    # CPU: resident memory above the level before the first step (the allocator may keep
    # freed memory, so later steps alone could show no growth).
    tracker = _PeakRSS() if not cuda and Path("/proc/self/statm").exists() else None
    times = []
    with tracker if tracker else contextlib.nullcontext():
        for i in range(warmup + reps):
            start = time.perf_counter()
            _step(model, x, mode, amp)
            if cuda:
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else (tracker.mb if tracker else None)
    return times, peak


def run_benchmarks(models, sizes, batches=(1,), modes=("infer",), device="cpu", warmup=2, reps=5,
                   amp=False, scan_backend="auto", progress=True) -> list[BenchRow]:
    """Measure every (model, size, batch, mode); a configuration that fails is kept with its error."""
    configs = [(m, s, b, mode) for m in models for s in sizes for b in batches for mode in modes]
    bar = progress_bar(len(configs), enabled=progress)
    rows = []
    for name, size, batch, mode in configs:
        size = (size, size) if isinstance(size, int) else tuple(size)
        bar.set_description(f"{name} {size[0]}x{size[1]} b{batch} {mode}")
        try:
            model = build_model(name, size, scan_backend).to(device)
            x = torch.randn(batch, 3, *size, device=device)
            times, peak = measure(model, x, mode, warmup, reps, amp)
            p25, med, p75 = np.percentile(times, [25, 50, 75]).tolist()
            rows.append(BenchRow(name, mode, batch, *size, med, p25, p75, batch / med, peak, str(device)))
        except Exception as e:  # noqa: BLE001 - e.g. a peer that cannot run at this size
            rows.append(BenchRow(name, mode, batch, *size, math.nan, math.nan, math.nan, math.nan, None,
                                 str(device), error=f"{type(e).__name__}: {e}"[:200]))
        finally:
            bar.update(1)
    bar.close()
    return rows


def fit_exponents(rows: list[BenchRow]) -> dict[tuple[str, str, int], float]:
    """Slope k of log(seconds per image) against log(pixels), per (model, mode, batch)."""
    groups: dict[tuple[str, str, int], list[BenchRow]] = {}
    for r in rows:
        if not r.error:
            groups.setdefault((r.model, r.mode, r.batch), []).append(r)
    fits = {}
    for key, group in groups.items():
        if len({r.pixels for r in group}) >= 2:
            xs = np.log([r.pixels for r in group])
            ys = np.log([r.median_s / r.batch for r in group])
            fits[key] = float(np.polyfit(xs, ys, 1)[0])
    return fits


def format_table(rows: list[BenchRow]) -> str:
    """A plain-text table of the rows."""
    lines = [f"{'model':<22}{'mode':<6}{'batch':>6}{'size':>11}{'img/s':>10}{'latency ms':>12}"
             f"{'spread ms':>16}{'peak MB':>9}"]
    for r in rows:
        size = f"{r.height}x{r.width}"
        if r.error:
            lines.append(f"{r.model:<22}{r.mode:<6}{r.batch:>6}{size:>11}  failed: {r.error}")
            continue
        mem = f"{r.peak_mem_mb:.0f}" if r.peak_mem_mb is not None else "-"
        spread = f"{r.p25_s * 1e3:.1f}-{r.p75_s * 1e3:.1f}"
        lines.append(f"{r.model:<22}{r.mode:<6}{r.batch:>6}{size:>11}{r.img_per_s:>10.2f}"
                     f"{r.median_s * 1e3:>12.1f}{spread:>16}{mem:>9}")
    return "\n".join(lines)


def write_results(rows: list[BenchRow], out_dir: str | Path) -> dict[str, Path]:
    """bench.csv, bench.json (rows and fitted exponents) and bench.png (if matplotlib is there)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = [asdict(r) for r in rows]
    paths = {"csv": out / "bench.csv", "json": out / "bench.json"}
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]) if records else ["model"])
        writer.writeheader()
        writer.writerows(records)
    fits = {f"{m}/{mode}/b{b}": k for (m, mode, b), k in fit_exponents(rows).items()}
    paths["json"].write_text(json.dumps({"rows": records, "exponents": fits}, indent=2))
    png = plot_scaling(rows, out / "bench.png")
    if png:
        paths["png"] = png
    return paths


def plot_scaling(rows: list[BenchRow], path: str | Path) -> Path | None:
    """Log-log plot of seconds per image against pixels, one line per model, with exponents."""
    plt = pyplot()
    if plt is None:
        return None
    fits = fit_exponents(rows)
    fig, ax = plt.subplots(figsize=(7, 5))
    for (model, mode, batch), k in sorted(fits.items()):
        group = sorted((r for r in rows if (r.model, r.mode, r.batch) == (model, mode, batch) and not r.error),
                       key=lambda r: r.pixels)
        ax.plot([r.pixels for r in group], [r.median_s / r.batch * 1e3 for r in group], marker="o",
                label=f"{model} ({mode}, b{batch}): k={k:.2f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("pixels per image")
    ax.set_ylabel("ms per image")
    ax.set_title("Cost against input size (cost ~ pixels^k)")
    ax.grid(True, which="both", alpha=0.3)
    if fits:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
