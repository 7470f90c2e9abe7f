"""Run a plan: every run an ordinary ``vmamba train`` job, skipped when finished, resumed when cut.

Runs live in a shared store (``<runs>/<label>-<hash>/seed<k>/``) keyed by a hash of their full
training configuration, so a plan run again skips what is finished, a killed plan resumes from
the run's ``last.pt``, and plans that share a configuration (``peers``, ``resolution``, ``erf``)
train it once. A finished run holds ``study.json`` (next to the trainer's own ``result.json``);
the analyses add to it.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import time
from pathlib import Path

import numpy as np

from .plans import Plan

STUDY_FILE = "study.json"  # a finished run's results and analyses
# Options that do not change what a run computes, left out of its identity.
_NOT_IDENTITY = ("out", "seed", "resume", "progress", "threads", "device", "workers", "log_interval", "preset")


def machine() -> dict:
    """What the numbers were measured on."""
    import torch

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return dict(cpu=cpu, cores=os.cpu_count(), torch_threads=torch.get_num_threads(), torch=torch.__version__,
                python=platform.python_version(), gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)


def run_options(plan: Plan, label: str) -> dict:
    """The training options of one configuration: the plan's recipe updated by the configuration."""
    options = dict(plan.recipe)
    options.update({k: v for k, v in plan.configs[label].items() if k != "init_from"})
    return options


def run_key(label: str, cfg_dict: dict, extra: str = "") -> str:
    """Folder name of a configuration: its label made path-safe plus a hash of what it computes."""
    identity = {k: v for k, v in cfg_dict.items() if k not in _NOT_IDENTITY}
    digest = hashlib.sha1((json.dumps(identity, sort_keys=True, default=str) + extra).encode()).hexdigest()[:8]
    return f"{re.sub(r'[^A-Za-z0-9_.=+-]+', '-', label).strip('-')}-{digest}"


def _fmt_time(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    """Position in the plan and an estimate of the time left (mean time of this session's runs,
    per configuration when one has finished, weighted by the runs still to do)."""

    def __init__(self, plan: Plan, total: int, say=print):
        self.plan, self.total, self.say = plan, total, say
        self.start = time.perf_counter()
        self.times: dict[str, list[float]] = {}

    def eta(self, remaining: list[str]) -> str:
        every = [t for ts in self.times.values() for t in ts]
        if not every:
            return "ETA after the first run"
        mean = sum(every) / len(every)
        left = sum(np.mean(self.times[lab]) if lab in self.times else mean for lab in remaining)
        return f"ETA {_fmt_time(left)}"

    def started(self, i: int, label: str, seed: int, remaining: list[str], what: str) -> None:
        self.say(f"[study {self.plan.name} {i}/{self.total}] {label} seed {seed}: {what} "
                 f"({_fmt_time(time.perf_counter() - self.start)} elapsed, {self.eta(remaining)})", flush=True)

    def finished(self, label: str, seconds: float) -> None:
        self.times.setdefault(label, []).append(seconds)


def _load_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=float) + "\n")
    os.replace(tmp, path)


def export_pretrained(run_dir: Path) -> Path:
    """The trained model of ``run_dir`` as a ``save_pretrained`` folder (to fine-tune from)."""
    from .. import load_model, save_pretrained

    folder = run_dir / "pretrained"
    if not (folder / "config.json").is_file():
        save_pretrained(load_model(run_dir / "model.safetensors"), folder)
    return folder


def run_plan(plan: Plan, runs_root: str | os.PathLike, threads: int = 0, device: str = "auto",
             say=print) -> list[dict]:
    """Train (or skip, or resume) every run of ``plan`` and run its analyses; the results per run."""
    from ..train import make_config, train
    from . import analyses
    from .peers import BUILDERS, build_model

    runs_root = Path(runs_root)
    order = plan.runs()
    progress = Progress(plan, len(order), say)
    run_dirs: dict[tuple[str, int], Path] = {}
    results = []
    for i, (label, seed) in enumerate(order, 1):
        options = run_options(plan, label)
        source = plan.configs[label].get("init_from")
        extra = ""
        if source:  # fine-tune: start from the same seed's run of the source configuration
            src_dir = run_dirs[(source, seed)]
            options.update(model=str(export_pretrained(src_dir)), model_args={})
            extra = src_dir.parent.name
        preset = options.pop("preset", "default")
        peer = options["model"] in BUILDERS  # built by the study, not vmamba's model registry
        cfg = make_config(preset, check_model=not peer, **options, seed=seed, threads=threads, device=device,
                          out=str(runs_root))
        run_dir = runs_root / run_key(label, cfg.to_dict(), extra) / f"seed{seed}"
        run_dirs[(label, seed)] = run_dir
        remaining = [lab for lab, _ in order[i - 1:]]
        result = _load_json(run_dir / STUDY_FILE)
        t0, worked = time.perf_counter(), False
        if result is None:
            resume = "auto" if (run_dir / "last.pt").is_file() and _load_json(run_dir / "config.json") else ""
            progress.started(i, label, seed, remaining, "resuming" if resume else "training")
            cfg.out, cfg.resume = str(run_dir), resume
            out = train(cfg, build=build_model if peer else None)
            result = dict(label=label, seed=seed, run_dir=str(run_dir), options=_jsonable(options),
                          test_acc1=out["acc1"], test_acc5=out["acc5"], split=out.get("split", "val"),
                          val_acc1=out.get("val_acc1"), epochs=out["epochs"], weights=out["weights"],
                          **_throughput(run_dir), analyses={})
            _write_json(run_dir / STUDY_FILE, result)
            worked = True
        else:
            progress.started(i, label, seed, remaining, "finished earlier, skipped training")
        cfg.out = str(run_dir)
        for name in [a for a in plan.analyses if a not in result.get("analyses", {})]:
            result.setdefault("analyses", {})[name] = analyses.run(name, run_dir, cfg, plan)
            _write_json(run_dir / STUDY_FILE, result)
            worked = True
        if worked:
            progress.finished(label, time.perf_counter() - t0)
        results.append(result)
    say(f"[study {plan.name}] {len(order)} runs done in {_fmt_time(time.perf_counter() - progress.start)}", flush=True)
    return results


def _throughput(run_dir: Path) -> dict:
    """Training images per second (mean over epochs) and total training time, from metrics.jsonl."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    if not rows:
        return dict(train_img_per_s=None, train_time_s=None)
    return dict(train_img_per_s=float(np.mean([r["img_per_s"] for r in rows])),
                train_time_s=float(sum(r["epoch_time"] for r in rows)))


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))
