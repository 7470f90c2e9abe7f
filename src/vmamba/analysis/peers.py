"""Whole-model CPU speed of the VMamba zoo against timm's backbones, as ratios within one run.

Every model runs in the same process on the same input. For each configuration (input size,
batch, thread count, inference or training step) the models are built once, warmed up, then timed
in interleaved rounds: round r runs every model once, starting at a different model each round,
so a disturbance of the machine (another job on the cores) hits all models alike. The figure per
model is the median over the rounds, and every model's speed is divided by each peer's speed of
the same configuration. Absolute img/s depend on the machine and its load; the ratios are what a
run is for.

Peak memory is measured in a fresh process per (model, size, batch, step kind), on one thread:
the peak resident set (Linux ``VmHWM``) during building the model, one warm-up step and one step,
above the process's resident set just before the model is built. It therefore counts the
parameters, gradients and optimizer state (training), activations, and the workspace of the
kernels and of the allocator, as the operating system sees it. That peak varies between identical
fresh processes (by up to 30 MB at 512 px on a 2-vCPU Xeon, as the allocator and the kernel's
page accounting happen to go), so each cell is the median of ``memory_probes`` processes, the
probes of a configuration's models taken in turns.

Peers come from timm (``pretrained=False``; DeiT and Swin are built for the input size, as they
need). timm may be installed but fail to import (e.g. a torchvision build that does not match
torch): the run then says why and measures the zoo models alone. ``preload`` names a Python file
executed before timm is imported, for whatever fix-up such an installation needs.

The zoo models' dense layers run on vmamba's engine for CPU float32 products
(:mod:`vmamba.ops.dense`: oneDNN on AMD CPUs, ATen's BLAS elsewhere), the peers' on whatever timm
gives them (ATen's). ``peer_linear="vmamba"`` gives the peers' ``nn.Linear`` layers vmamba's
engine too, which compares the architectures on the same matrix-product code.
"""
from __future__ import annotations

import csv
import ctypes
import gc
import json
import math
import os
import platform
import re
import runpy
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..utils import adamw, available_cpus, cpu_flags, cpu_info

# Short names of the timm peers -> timm model names.
PEERS = {
    "swin_tiny": "swin_tiny_patch4_window7_224",
    "convnext_tiny": "convnext_tiny",
    "deit_small": "deit_small_patch16_224",
    "resnet50": "resnet50",
}
DEFAULT_ZOO = ("vmamba_tiny_s1l8", "vanilla_vmamba_tiny")
PEER_LINEAR = ("timm", "vmamba")  # the peers' dense layers as timm builds them, or on vmamba's engine
MODES = ("infer", "train")
_NEEDS_IMG_SIZE = ("deit", "vit", "swin")  # timm families whose position tables fix the input size
_NUM_CLASSES = 1000


@dataclass
class PeerResult:
    """One model in one configuration. Times are seconds per step of ``batch`` images."""

    model: str
    kind: str  # "zoo" or "peer"
    size: int
    batch: int
    threads: int
    mode: str
    median_s: float = math.nan
    p25_s: float = math.nan
    p75_s: float = math.nan
    img_per_s: float = math.nan
    rounds: int = 0
    cpu_use: float = math.nan  # process CPU time / (wall time * threads) over the timed rounds
    peak_mb: float | None = None
    params_mb: float | None = None
    error: str = ""

    @property
    def config(self) -> tuple[int, int, int, str]:
        return self.size, self.batch, self.threads, self.mode

    @property
    def ok(self) -> bool:
        return not self.error


@dataclass
class PeerRun:
    """A whole run: the machine, the settings, every result."""

    machine: dict
    settings: dict
    results: list[PeerResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- machine


def isa_features(flags: set[str]) -> list[str]:
    """The SIMD instruction sets that matter here, named from /proc/cpuinfo flags or features."""
    checks = [
        ("AVX2", {"avx2"}), ("FMA", {"fma"}), ("AVX-512", {"avx512f"}), ("AVX-512 BF16", {"avx512_bf16"}),
        ("AVX-512 FP16", {"avx512_fp16"}), ("AMX", {"amx_tile"}), ("NEON", {"asimd"}), ("NEON", {"neon"}),
        ("SVE", {"sve"}),
    ]
    found = []
    for name, needed in checks:
        if needed <= flags and name not in found:
            found.append(name)
    return found


def _kernel_build() -> dict:
    """The CPU scan kernel build chosen on this machine (built on first use), or why there is none."""
    try:
        from ..ops import scan_cpu

        info = scan_cpu.extension_info()
    except Exception as e:  # noqa: BLE001 - reported, never fatal
        return {"error": f"{type(e).__name__}: {e}"}
    return {k: v for k, v in info.items()
            if k != "build_dir" and isinstance(v, (str, int, float, bool, list, tuple))}


def _linear_engine() -> dict:
    """The engine of the zoo models' CPU float32 dense layers, and why."""
    from ..ops import linear_info

    try:
        return linear_info()
    except Exception as e:  # noqa: BLE001 - e.g. a bad $VMAMBA_LINEAR; reported, and the run fails later
        return {"error": f"{type(e).__name__}: {e}"}


def machine_info(timm_version: str | None = None, kernel: bool = True) -> dict:
    """CPU model, ISA, core count, torch/timm versions, the scan kernel build and the dense-layer engine."""
    cpu = cpu_info()
    flags = cpu_flags()
    model = cpu.get("model name") or cpu.get("Hardware") or cpu.get("CPU part") or platform.processor() or "unknown"
    cores = available_cpus()
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "unknown")()
    info = {
        "cpu": model,
        "arch": platform.machine(),
        "isa": isa_features(flags),
        "aten_capability": capability,
        "cpus_available": cores,
        "torch": torch.__version__,
        "timm": timm_version,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    if kernel:
        info["scan_kernel"] = _kernel_build()
    info["linear"] = _linear_engine()
    info["allocator"] = allocator_settings()
    return info


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_freed_memory() -> str:
    """Tell glibc's malloc to keep freed memory in this process: no block gets its own mapping
    (``M_MMAP_MAX`` 0) and the heap is not trimmed below 2 GB of free space (``M_TRIM_THRESHOLD``).

    A training loop of one model then reuses its activations' pages step after step; without it,
    steps of interleaved models re-fault theirs. Irreversible for the process. Returns what was
    set; ``RuntimeError`` where the C library is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        version = libc.gnu_get_libc_version().decode()
    except (OSError, AttributeError) as e:
        raise RuntimeError(f"--keep-memory needs glibc's malloc, which this process does not use ({e})") from None
    if not (libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1)):
        raise RuntimeError(f"glibc {version} refused the mallopt settings of --keep-memory")
    return f"glibc {version} mallopt M_MMAP_MAX=0 M_TRIM_THRESHOLD=2147483647 (--keep-memory)"


def allocator_settings() -> dict:
    """The memory-allocator settings of this process that change CPU timings: glibc's ``MALLOC_*``
    variables and a preloaded jemalloc / tcmalloc (``LD_PRELOAD``). With glibc's defaults freed
    activations go back to the kernel, and a step that allocates them again pays page faults for
    them, which interleaved rounds of several models make every step pay."""
    found = {k: v for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_") and k.endswith("_")}
    preload = [p for p in os.environ.get("LD_PRELOAD", "").replace(":", " ").split()
               if "jemalloc" in p or "tcmalloc" in p or "mimalloc" in p]
    if preload:
        found["LD_PRELOAD"] = " ".join(preload)
    return found


def format_machine(info: dict) -> str:
    """The machine block printed at the top of a report."""
    kernel = info.get("scan_kernel") or {}
    if "error" in kernel:
        kernel_text = f"unavailable ({kernel['error']}); the zoo models use the 'torch' scan backend"
    else:
        kernel_text = ", ".join(f"{k}={v}" for k, v in kernel.items())
    return "\n".join([
        f"CPU: {info['cpu']} ({info['arch']}), {info['cpus_available']} CPUs available to this process",
        f"ISA: {', '.join(info['isa']) or 'none of AVX2/AVX-512/AMX/NEON found'}; "
        f"ATen CPU capability: {info['aten_capability']}",
        f"torch {info['torch']}, timm {info['timm'] or '-'}, python {info['python']}, {info['date']}",
        f"scan kernel build: {kernel_text}",
        f"dense layers (CPU fp32): {_linear_text(info.get('linear') or {})}",
        "memory allocator: " + (", ".join(f"{k}={v}" for k, v in info["allocator"].items())
                                if info.get("allocator") else "the C library's defaults (no MALLOC_* settings, "
                                "no preloaded allocator)"),
    ])


def _linear_text(linear: dict) -> str:
    if "error" in linear:
        return linear["error"]
    return f"{linear.get('engine')} (setting {linear.get('setting')}: {linear.get('reason')})"


# ---------------------------------------------------------------- models


def import_timm(preload: str | os.PathLike | None = None):
    """(timm, None), or (None, the reason it cannot be used). Runs ``preload`` first if given."""
    if preload is not None:
        runpy.run_path(str(preload), run_name="__vmamba_preload__")
    try:
        import timm
    except ImportError as e:
        if getattr(e, "name", None) == "timm":
            return None, "timm is not installed (pip install timm)"
        return None, f"timm is installed but does not import: {type(e).__name__}: {e}"
    except Exception as e:  # noqa: BLE001 - e.g. torchvision's C++ ops missing for this torch build
        return None, f"timm is installed but does not import: {type(e).__name__}: {e}"
    return timm, None


def _check_peer_linear(peer_linear: str) -> None:
    if peer_linear not in PEER_LINEAR:
        raise ValueError(f"peer_linear={peer_linear!r}: expected one of {PEER_LINEAR}")


def build_model(name: str, size: int, timm=None, peer_linear: str = "timm") -> nn.Module:
    """A zoo model or a timm peer (short name or timm name) for ``size`` x ``size`` inputs.

    Stochastic depth is off for every model, so each round does the same work. With
    ``peer_linear="vmamba"`` a peer's ``nn.Linear`` layers run on vmamba's dense-layer engine.
    """
    from ..models import create_model, is_model

    _check_peer_linear(peer_linear)
    if is_model(name):
        return create_model(name, drop_path_rate=0.0)
    if timm is None:
        raise ValueError(f"{name!r} is not a vmamba model, and timm is not available")
    timm_name = PEERS.get(name, name)
    kwargs = {"img_size": size} if timm_name.startswith(_NEEDS_IMG_SIZE) else {}
    model = timm.create_model(timm_name, pretrained=False, num_classes=_NUM_CLASSES, **kwargs)
    if peer_linear == "vmamba":
        from ..ops.dense import convert_linears

        convert_linears(model)
    return model


class Step:
    """One inference step (``torch.inference_mode``) or one training step (fused AdamW, as
    ``vmamba train`` steps) of a model."""

    def __init__(self, model: nn.Module, x: torch.Tensor, labels: torch.Tensor, mode: str):
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}: expected one of {MODES}")
        self.model, self.x, self.labels, self.mode = model, x, labels, mode
        self.optimizer = adamw(model.parameters(), lr=1e-6) if mode == "train" else None

    def __call__(self) -> None:
        if self.mode == "infer":
            self.model.eval()
            with torch.inference_mode():
                self.model(self.x)
            return
        self.model.train()
        loss = F.cross_entropy(self.model(self.x), self.labels)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def make_batch(batch: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A random image batch and random labels (the same for every model)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 3, size, size, generator=g),
            torch.randint(0, _NUM_CLASSES, (batch,), generator=g))


def params_mb(model: nn.Module) -> float:
    """Memory of the parameters and buffers in MB."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors) / 2 ** 20


# ---------------------------------------------------------------- timing


def time_interleaved(steps: dict[str, Callable[[], None]], rounds: int, warmup: int = 1,
                     on_round: Callable[[int], None] | None = None,
                     ) -> tuple[dict[str, list[float]], dict[str, str], float]:
    """Run ``steps`` in interleaved rounds (round r starts at the r-th step).

    Returns the wall seconds of each step's timed runs, the errors of steps that failed (dropped
    from later rounds), and the process CPU time over wall time of the timed rounds.
    """
    times: dict[str, list[float]] = {name: [] for name in steps}
    errors: dict[str, str] = {}

    def run(name):
        try:
            start = time.perf_counter()
            steps[name]()
            return time.perf_counter() - start
        except Exception as e:  # noqa: BLE001 - e.g. a model that cannot take this size
            errors[name] = f"{type(e).__name__}: {e}"[:300]
            return None

    for name in steps:
        for _ in range(warmup):
            if name not in errors:
                run(name)
    names = list(steps)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for r in range(rounds):
        for i in range(len(names)):
            name = names[(r + i) % len(names)]
            if name in errors:
                continue
            t = run(name)
            if t is not None:
                times[name].append(t)
        if on_round:
            on_round(r)
    wall = time.perf_counter() - wall0
    cpu_ratio = (time.process_time() - cpu0) / wall if wall > 0 else math.nan
    return times, errors, cpu_ratio


# ---------------------------------------------------------------- memory


def _status_kb(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter of this process to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_memory_here(build: Callable[[], nn.Module], batch: int, size: int, mode: str) -> dict:
    """Peak RSS growth (MB) while building a model and running a warm-up step and a step.

    Meant for a fresh process (``peak_memory`` runs it in one): in a process that already ran
    other models, memory the allocator kept from them hides part of the growth.
    """
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    x, labels = make_batch(batch, size)
    reset = _reset_peak()
    base = _status_kb("VmRSS")
    start_peak = _status_kb("VmHWM")
    if base is None or start_peak is None:
        raise RuntimeError("peak memory needs /proc/self/status (Linux)")
    model = build()
    step = Step(model, x, labels, mode)
    step()
    step()
    peak = _status_kb("VmHWM")
    if not reset and start_peak > base:
        # No counter reset: peaks from before the build would mask smaller ones after it.
        peak = max(peak, start_peak)
    return {"peak_mb": (peak - base) / 1024, "params_mb": params_mb(model), "reset": reset}


def _probe_main(argv: list[str]) -> int:
    """Child process entry: MODEL SIZE BATCH MODE [PRELOAD [PEER_LINEAR]]; prints one JSON line."""
    name, size, batch, mode = argv[0], int(argv[1]), int(argv[2]), argv[3]
    preload = argv[4] if len(argv) > 4 and argv[4] else None
    peer_linear = argv[5] if len(argv) > 5 else "timm"
    torch.set_num_threads(1)
    timm = None
    from ..models import is_model

    if not is_model(name):
        timm, why = import_timm(preload)
        if timm is None:
            print(json.dumps({"error": why}))
            return 0
    # Load the scan kernel before the baseline, so its build is not counted as model memory.
    _kernel_build()
    try:
        out = peak_memory_here(lambda: build_model(name, size, timm, peer_linear), batch, size, mode)
    except Exception as e:  # noqa: BLE001 - reported in the table
        out = {"error": f"{type(e).__name__}: {e}"[:300]}
    print(json.dumps(out))
    return 0


def peak_memory(name: str, size: int, batch: int, mode: str, preload: str | None = None,
                timeout: float = 3600, peer_linear: str = "timm") -> dict:
    """``peak_memory_here`` in a fresh Python process on one thread: {"peak_mb", "params_mb"} or {"error"}."""
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([package_root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["OMP_NUM_THREADS"] = "1"
    code = "import sys; from vmamba.analysis.peers import _probe_main; sys.exit(_probe_main(sys.argv[1:]))"
    args = [sys.executable, "-c", code, name, str(size), str(batch), mode, str(preload or ""), peer_linear]
    try:
        proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"memory probe timed out after {timeout:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"memory probe failed (exit {proc.returncode}): {tail}"[:300]}
    return json.loads(lines[-1])


# ---------------------------------------------------------------- the run


def plan(sizes, batches, threads, modes, max_pixels: int = 0) -> tuple[list[tuple], list[tuple]]:
    """(configurations to run, configurations skipped by ``max_pixels``) as (size, batch, threads, mode)."""
    run, skipped = [], []
    for size in sizes:
        for batch in batches:
            for t in threads:
                for mode in modes:
                    cfg = (size, batch, t, mode)
                    (skipped if max_pixels and batch * size * size > max_pixels else run).append(cfg)
    return run, skipped


def run_peers(zoo=DEFAULT_ZOO, peers=tuple(PEERS), sizes=(224,), batches=(1,), threads=(1,), modes=MODES,
              rounds: int = 5, warmup: int = 1, memory: bool = True, max_pixels: int = 0,
              preload: str | None = None, peer_linear: str = "timm", log: Callable[[str], None] | None = None,
              on_progress: Callable[[PeerRun], None] | None = None, keep_memory: bool = False,
              memory_probes: int = 3) -> PeerRun:
    """Measure every zoo model and peer in every configuration; see the module docstring.

    ``on_progress`` is called with the run so far after each configuration (e.g. to save it).
    ``keep_memory`` applies :func:`keep_freed_memory` to this process first (for the rest of its
    life), so that training steps are timed without re-faulting the memory other models freed.
    """
    log = log or (lambda text: None)
    _check_peer_linear(peer_linear)
    if memory and memory_probes < 1:
        raise ValueError(f"memory_probes must be at least 1, not {memory_probes}")
    notes = []
    timm, why = (None, None)
    if peers:
        timm, why = import_timm(preload)
        if timm is None:
            notes.append(f"peers skipped: {why}. Only the zoo models were measured, so there are no ratios. "
                         "If torchvision is what fails, install the torchvision build that matches your torch, "
                         "or pass --preload FILE with a Python file that works around it.")
            peers = ()
    models = [(m, "zoo") for m in zoo] + [(p, "peer") for p in peers]
    kept = keep_freed_memory() if keep_memory else None
    machine = machine_info(getattr(timm, "__version__", None), kernel=bool(zoo))
    if kept:
        machine["allocator"]["mallopt"] = kept
    configs, skipped = plan(sizes, batches, threads, modes, max_pixels)
    if skipped:
        notes.append(f"skipped {len(skipped)} configuration(s) with batch x height x width above "
                     f"--max-pixels {max_pixels}: " + ", ".join(f"{s}px b{b} t{t} {m}" for s, b, t, m in skipped))
    settings = dict(zoo=list(zoo), peers=list(peers), sizes=list(sizes), batches=list(batches), threads=list(threads),
                    modes=list(modes), rounds=rounds, warmup=warmup, memory=memory, max_pixels=max_pixels,
                    preload=str(preload) if preload else None, peer_linear=peer_linear, keep_memory=keep_memory,
                    memory_probes=memory_probes if memory else 0)
    result = PeerRun(machine, settings, notes=notes)
    old_threads = torch.get_num_threads()
    try:
        for size in dict.fromkeys(c[0] for c in configs):
            built, build_errors = {}, {}
            for name, _ in models:
                try:
                    built[name] = build_model(name, size, timm, peer_linear)
                except Exception as e:  # noqa: BLE001 - e.g. a fixed-size model
                    build_errors[name] = f"cannot build for {size}x{size}: {type(e).__name__}: {e}"[:300]
            for _, batch, t, mode in (c for c in configs if c[0] == size):
                x, labels = make_batch(batch, size)
                torch.set_num_threads(t)
                steps = {name: Step(model, x, labels, mode) for name, model in built.items()}
                label = f"{size}x{size} batch {batch} threads {t} {mode}"
                log(f"{label}: {len(steps)} models, {warmup} warm-up + {rounds} rounds")
                times, errors, cpu_ratio = time_interleaved(
                    steps, rounds, warmup, on_round=lambda r: log(f"  {label}: round {r + 1}/{rounds} done"))
                del steps
                for name, kind in models:
                    row = PeerResult(name, kind, size, batch, t, mode)
                    row.error = build_errors.get(name) or errors.get(name, "")
                    if not row.error and times[name]:
                        p25, med, p75 = np.percentile(times[name], [25, 50, 75]).tolist()
                        row.median_s, row.p25_s, row.p75_s = med, p25, p75
                        row.img_per_s, row.rounds = batch / med, len(times[name])
                        row.cpu_use = cpu_ratio / t
                    result.results.append(row)
                if on_progress:
                    on_progress(result)
            del built
            gc.collect()
    finally:
        torch.set_num_threads(old_threads)
    if memory:
        _add_memory(result, preload, log, memory_probes)
    return result


def _add_memory(run: PeerRun, preload: str | None, log: Callable[[str], None], probes: int = 1) -> None:
    """Fill ``peak_mb`` of every successful row: per (model, size, batch, mode) the median of
    ``probes`` fresh processes, the models of a configuration probed in turns."""
    keys = list(dict.fromkeys((r.model, r.size, r.batch, r.mode) for r in run.results if r.ok))
    found: dict[tuple, list[dict]] = {key: [] for key in keys}
    for i in range(probes):
        for key in keys:
            model, size, batch, mode = key
            if found[key] and "error" in found[key][-1]:
                continue  # a probe that failed fails again: report it once
            log(f"peak memory: {model} {size}x{size} batch {batch} {mode}"
                + (f" (probe {i + 1} of {probes})" if probes > 1 else ""))
            found[key].append(peak_memory(model, size, batch, mode, preload,
                                          peer_linear=run.settings.get("peer_linear", "timm")))
    for row in run.results:
        if not row.ok:
            continue
        done = found[(row.model, row.size, row.batch, row.mode)]
        failed = [p for p in done if "error" in p]
        if failed:
            note = f"peak memory of {row.model} at {row.size}px b{row.batch} {row.mode}: {failed[0]['error']}"
            if note not in run.notes:
                run.notes.append(note)
        else:
            row.peak_mb = float(np.median([p["peak_mb"] for p in done]))
            row.params_mb = done[0]["params_mb"]


# ---------------------------------------------------------------- ratios and reports


def ratios(results: list[PeerResult]) -> list[dict]:
    """Every model's img/s and peak memory divided by each peer's, within the same configuration."""
    peers = [r for r in results if r.kind == "peer" and r.ok]
    out = []
    for r in results:
        if not r.ok:
            continue
        for p in peers:
            if p.config != r.config:
                continue
            mem = (r.peak_mb / p.peak_mb) if r.peak_mb is not None and p.peak_mb else None
            out.append({"model": r.model, "peer": p.model, "size": r.size, "batch": r.batch, "threads": r.threads,
                        "mode": r.mode, "speed_ratio": r.img_per_s / p.img_per_s, "memory_ratio": mem})
    return out


def fit_exponents(results: list[PeerResult]) -> dict[str, float]:
    """Slope k of log(seconds per image) against log(pixels) per model, mode, batch and threads."""
    groups: dict[str, list[PeerResult]] = {}
    for r in results:
        if r.ok:
            groups.setdefault(f"{r.model}/{r.mode}/b{r.batch}/t{r.threads}", []).append(r)
    fits = {}
    for key, rows in groups.items():
        if len({r.size for r in rows}) >= 2:
            xs = np.log([r.size ** 2 for r in rows])
            ys = np.log([r.median_s / r.batch for r in rows])
            fits[key] = float(np.polyfit(xs, ys, 1)[0])
    return fits


def _fmt(v, spec: str, empty: str = "-") -> str:
    return empty if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def format_report(run: PeerRun) -> str:
    """The machine, then per configuration a table of img/s, ratios to each peer and peak memory."""
    lines = [format_machine(run.machine)]
    if run.settings.get("peers"):
        lines.append("peers' dense layers: " + ("vmamba's engine (--peer-linear vmamba)"
                                                if run.settings.get("peer_linear") == "vmamba"
                                                else "as timm builds them (ATen's)"))
    lines.append("")
    peers = run.settings["peers"]
    ratio_of = {(d["model"], d["peer"], d["size"], d["batch"], d["threads"], d["mode"]): d for d in ratios(run.results)}
    configs = list(dict.fromkeys(r.config for r in run.results))
    name_w = max([len(r.model) for r in run.results] + [5]) + 2
    for size, batch, t, mode in configs:
        rows = [r for r in run.results if r.config == (size, batch, t, mode)]
        busy = [r.cpu_use for r in rows if r.ok]
        lines.append(f"{size}x{size}, batch {batch}, {t} thread{'s' if t > 1 else ''}, "
                     f"{'inference' if mode == 'infer' else 'training step'}: median of {run.settings['rounds']} "
                     f"interleaved rounds; CPU use {_fmt(busy[0] * 100 if busy else None, '.0f')}% of {t}")
        head = f"{'model':<{name_w}}{'img/s':>9}{'ms/step':>10}{'p25-p75 ms':>17}"
        head += "".join(f"{'x ' + p:>{max(len(p) + 4, 9)}}" for p in peers)
        head += f"{'peak MB':>9}" + "".join(f"{'mem x ' + p:>{len(p) + 8}}" for p in peers)
        lines.append(head)
        for r in rows:
            if not r.ok:
                lines.append(f"{r.model:<{name_w}}  not measured: {r.error}")
                continue
            spread = f"{r.p25_s * 1e3:.1f}-{r.p75_s * 1e3:.1f}"
            line = f"{r.model:<{name_w}}{r.img_per_s:>9.2f}{r.median_s * 1e3:>10.1f}{spread:>17}"
            for p in peers:
                d = ratio_of.get((r.model, p, size, batch, t, mode))
                line += f"{_fmt(d and d['speed_ratio'], '.2f'):>{max(len(p) + 4, 9)}}"
            line += f"{_fmt(r.peak_mb, '.0f'):>9}"
            for p in peers:
                d = ratio_of.get((r.model, p, size, batch, t, mode))
                line += f"{_fmt(d and d['memory_ratio'], '.2f'):>{len(p) + 8}}"
            lines.append(line)
        lines.append("")
    fits = fit_exponents(run.results)
    if fits:
        lines.append("fitted cost exponent k (seconds per image ~ pixels^k; 1 = linear in pixels):")
        lines += [f"  {key:<40} k = {k:.2f}" for key, k in sorted(fits.items())]
        lines.append("")
    if run.settings.get("memory"):
        n = run.settings.get("memory_probes") or 1
        lines.append("peak MB: peak resident memory of a fresh one-thread process while it builds the model "
                     "and runs a warm-up step and a step, above its resident memory before the build"
                     + (f"; median of {n} such processes." if n > 1 else " (one process)."))
    lines += [f"note: {n}" for n in run.notes]
    return "\n".join(lines).rstrip() + "\n"


def to_records(run: PeerRun) -> list[dict]:
    """One flat dict per result, with the ratio to each peer as ``x_<peer>`` / ``mem_x_<peer>``."""
    ratio_of = {(d["model"], d["peer"], d["size"], d["batch"], d["threads"], d["mode"]): d for d in ratios(run.results)}
    records = []
    for r in run.results:
        rec = asdict(r)
        for p in run.settings["peers"]:
            d = ratio_of.get((r.model, p, *r.config)) or {}
            rec[f"x_{p}"] = d.get("speed_ratio")
            rec[f"mem_x_{p}"] = d.get("memory_ratio")
        records.append(rec)
    return records


def _clean(v):
    return None if isinstance(v, float) and math.isnan(v) else v


def write_json(run: PeerRun, path: str | Path) -> Path:
    """The machine, settings, results (with ratios), the ratio list and fitted exponents as JSON."""
    data = {
        "machine": run.machine,
        "settings": run.settings,
        "results": [{k: _clean(v) for k, v in rec.items()} for rec in to_records(run)],
        "ratios": ratios(run.results),
        "exponents": fit_exponents(run.results),
        "notes": run.notes,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def write_csv(run: PeerRun, path: str | Path) -> Path:
    """One row per model and configuration, with the machine's CPU and ISA on every row."""
    records = to_records(run)
    cpu = re.sub(r"\s+", " ", run.machine.get("cpu", ""))
    isa = " ".join(run.machine.get("isa", []))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        fields = ["cpu", "isa"] + (list(records[0]) if records else ["model"])
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for rec in records:
            writer.writerow({"cpu": cpu, "isa": isa, **{k: _clean(v) for k, v in rec.items()}})
    return path
