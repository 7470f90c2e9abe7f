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
import sys
import time
from pathlib import Path

import numpy as np

from ..utils import available_cpus
from .plans import Plan

STUDY_FILE = "study.json"  # a finished run's results and analyses
LOG_FILE = "study.log"  # a worker's output for one run (runs with jobs > 1), in the run's folder
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


def resolve_jobs(jobs: int, threads: int, device: str = "cpu", cores: int | None = None) -> tuple[int, int]:
    """(parallel runs, torch threads per run) for ``jobs`` and ``threads`` as given.

    ``jobs`` 0 is automatic: one run at a time on a GPU (``device`` 'cuda...', or 'auto' with CUDA
    available), else ``max(1, cores // max(threads, 1))``. With more than one run at a time,
    ``threads`` 0 (torch's default, every core for each run) becomes 1.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 0:
        raise ValueError(f"jobs must be an integer >= 0 (0: automatic), got {jobs!r}")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise ValueError(f"threads must be an integer >= 0 (0: torch's default), got {threads!r}")
    if jobs == 0:
        import torch

        gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        jobs = 1 if gpu else max(1, (cores or available_cpus()) // max(threads, 1))
    if jobs > 1 and threads == 0:
        threads = 1
    return jobs, threads


class Progress:
    """Position in the plan and an estimate of the time left (mean time of this session's runs,
    per configuration when one has finished, weighted by the runs still to do, shared among the
    runs that go on at the same time)."""

    def __init__(self, plan: Plan, total: int, say=print, jobs: int = 1):
        self.plan, self.total, self.say, self.jobs = plan, total, say, jobs
        self.start = time.perf_counter()
        self.times: dict[str, list[float]] = {}

    def eta(self, remaining: list[str], running: list[tuple[str, float]] = ()) -> str:
        """``remaining``: labels of the runs not started; ``running``: (label, start time) of those going on."""
        every = [t for ts in self.times.values() for t in ts]
        if not every:
            return "ETA after the first run"
        mean = sum(every) / len(every)
        guess = {lab: float(np.mean(ts)) for lab, ts in self.times.items()}
        now = time.perf_counter()
        left = (sum(guess.get(lab, mean) for lab in remaining)
                + sum(max(0.0, guess.get(lab, mean) - (now - t0)) for lab, t0 in running))
        return f"ETA {_fmt_time(left / max(1, min(self.jobs, len(remaining) + len(running))))}"

    def line(self, i: int, label: str, seed: int, what: str, eta: str) -> None:
        """Say one progress line: plan position, run, what happens, time elapsed and ``eta``."""
        self.say(f"[study {self.plan.name} {i}/{self.total}] {label} seed {seed}: {what} "
                 f"({_fmt_time(time.perf_counter() - self.start)} elapsed, {eta})", flush=True)

    def started(self, i: int, label: str, seed: int, remaining: list[str], what: str,
                running: list[tuple[str, float]] = ()) -> None:
        """Say that run ``i`` starts (or is skipped): ``what`` it does."""
        self.line(i, label, seed, what, self.eta(remaining, running))

    def finished(self, label: str, seconds: float) -> None:
        """Record that a run of ``label`` took ``seconds`` (for the estimates)."""
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


class StudyRunError(RuntimeError):
    """A run of a study failed in a worker process (or the worker died); the study stopped."""


def prepare_run(plan: Plan, label: str, seed: int, runs_root: Path, threads: int, device: str,
                run_dirs: dict) -> dict:
    """What one run needs: its options, training configuration and folder, and whether the study
    builds its network (a peer). A fine-tuning run (``init_from``) needs its source run, of the
    same seed, finished and in ``run_dirs``; the run's own folder is added to ``run_dirs``."""
    from ..train import make_config
    from .peers import BUILDERS

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
    cfg.out = str(run_dir)
    run_dirs[(label, seed)] = run_dir
    return dict(label=label, seed=seed, options=options, cfg=cfg, run_dir=run_dir, peer=peer)


def run_state(plan: Plan, run: dict) -> str:
    """'done' (trained, every analysis of ``plan`` there), 'analyse' (trained), 'resume' (cut), 'train' (new)."""
    run_dir = run["run_dir"]
    result = _load_json(run_dir / STUDY_FILE)
    if result is not None:
        return "analyse" if any(a not in result.get("analyses", {}) for a in plan.analyses) else "done"
    return "resume" if (run_dir / "last.pt").is_file() and _load_json(run_dir / "config.json") else "train"


_SAY_STATE = dict(done="finished earlier, skipped training", analyse="finished earlier, skipped training",
                  resume="resuming", train="training")


def run_one(plan: Plan, run: dict) -> dict:
    """Train (or resume) the run prepared by :func:`prepare_run` unless it finished earlier, then
    add the analyses of ``plan`` it lacks; returns its ``study.json``."""
    from ..train import train
    from . import analyses
    from .peers import build_model

    cfg, run_dir, label, seed = run["cfg"], run["run_dir"], run["label"], run["seed"]
    result = _load_json(run_dir / STUDY_FILE)
    if result is None:
        cfg.resume = "auto" if run_state(plan, run) == "resume" else ""
        out = train(cfg, build=build_model if run["peer"] else None)
        result = dict(label=label, seed=seed, run_dir=str(run_dir), options=_jsonable(run["options"]),
                      test_acc1=out["acc1"], test_acc5=out["acc5"], split=out.get("split", "val"),
                      val_acc1=out.get("val_acc1"), epochs=out["epochs"], weights=out["weights"],
                      **_throughput(run_dir), analyses={})
        _write_json(run_dir / STUDY_FILE, result)
    for name in [a for a in plan.analyses if a not in result.get("analyses", {})]:
        result.setdefault("analyses", {})[name] = analyses.run(name, run_dir, cfg, plan)
        _write_json(run_dir / STUDY_FILE, result)
    return result


def run_plan(plan: Plan, runs_root: str | os.PathLike, threads: int = 0, device: str = "auto",
             say=print, jobs: int = 1, preload: str | os.PathLike | None = None) -> list[dict]:
    """Train (or skip, or resume) every run of ``plan`` and run its analyses; the results per run.

    ``jobs`` > 1 runs up to that many runs at once, each in a worker process of its own (spawned;
    it first runs the Python file ``preload`` when given), with ``threads`` torch threads; a
    fine-tuning run waits for its source run. The training output of a worker's run goes to
    ``study.log`` in the run's folder. ``jobs`` 1 runs them one after another in this process.
    """
    runs_root = Path(runs_root)
    order = plan.runs()
    spawned_import = sys.modules.get("__mp_main__") not in (None, sys.modules.get("__main__"))
    if jobs > 1 and spawned_import:  # a spawned process running the main script again (no __main__ guard)
        raise RuntimeError("run_study(jobs > 1) was called while a worker process imported the main script: "
                           "put the script's work under `if __name__ == \"__main__\":`")
    progress = Progress(plan, len(order), say, jobs)
    if jobs > 1:
        results = _run_parallel(plan, runs_root, threads, device, progress, jobs, preload)
    else:
        results = _run_serial(plan, runs_root, threads, device, progress)
    say(f"[study {plan.name}] {len(order)} runs done in {_fmt_time(time.perf_counter() - progress.start)}", flush=True)
    return results


def _run_serial(plan: Plan, runs_root: Path, threads: int, device: str, progress: Progress) -> list[dict]:
    """Every run in plan order, in this process; see :func:`run_plan`."""
    order, run_dirs, results = plan.runs(), {}, []
    for i, (label, seed) in enumerate(order, 1):
        run = prepare_run(plan, label, seed, runs_root, threads, device, run_dirs)
        state = run_state(plan, run)
        progress.started(i, label, seed, [lab for lab, _ in order[i - 1:]], _SAY_STATE[state])
        if state == "done":
            results.append(_load_json(run["run_dir"] / STUDY_FILE))
            continue
        t0 = time.perf_counter()
        results.append(run_one(plan, run))
        progress.finished(label, time.perf_counter() - t0)
    return results


def _run_parallel(plan: Plan, runs_root: Path, threads: int, device: str, progress: Progress, jobs: int,
                  preload) -> list[dict]:
    """Up to ``jobs`` runs at once in spawned worker processes; see :func:`run_plan`."""
    import multiprocessing as mp
    from multiprocessing.connection import wait

    order, run_dirs = plan.runs(), {}
    results: dict[int, dict] = {}
    pending = list(range(len(order)))  # plan positions not started, in plan order
    prepared: dict[int, dict] = {}
    ctx = mp.get_context("spawn")
    workers: list[tuple] = []  # (process, connection)
    idle: list[tuple] = []
    running: dict = {}  # connection -> (position, run, start time, worker)
    ok = False

    def ready(i: int) -> bool:
        label, seed = order[i]
        source = plan.configs[label].get("init_from")
        return source is None or any(order[j] == (source, seed) for j in results)

    def running_labels() -> list[tuple[str, float]]:
        return [(run["label"], t0) for _, run, t0, _ in running.values()]

    try:
        while pending or running:
            for i in list(pending):  # in plan order, so a source finished earlier is in `results` by now
                if not ready(i):
                    continue
                label, seed = order[i]
                if i not in prepared:
                    prepared[i] = prepare_run(plan, label, seed, runs_root, threads, device, run_dirs)
                run, state = prepared[i], run_state(plan, prepared[i])
                if state == "done":
                    pending.remove(i)
                    results[i] = _load_json(run["run_dir"] / STUDY_FILE)
                    progress.started(i + 1, label, seed, [order[j][0] for j in pending], _SAY_STATE[state],
                                     running_labels())
                    continue
                if not workers:
                    _prepare_data(plan, progress.say)
                if not idle and len(workers) < jobs:  # workers start when there is work for them
                    workers.append(_start_worker(ctx, preload, len(workers) + 1))
                    idle.append(workers[-1])
                if not idle:
                    break
                worker = idle.pop()
                pending.remove(i)
                worker[1].send((plan, run))
                running[worker[1]] = (i, run, time.perf_counter(), worker)
                progress.started(i + 1, label, seed, [order[j][0] for j in pending], _SAY_STATE[state],
                                 running_labels())
            if not running:
                if pending:  # nothing runs and nothing can start: a source that is not in the plan
                    label, seed = order[pending[0]]
                    raise StudyRunError(f"run {label!r} seed {seed} waits for a source run that is not in the plan")
                break
            conns = list(running)
            sentinels = {w[0].sentinel: conn for conn, (_, _, _, w) in running.items()}
            for ready_obj in wait(conns + list(sentinels)):
                conn = sentinels.get(ready_obj, ready_obj)
                if conn not in running:
                    continue
                i, run, t0, worker = running.pop(conn)
                label, seed = order[i]
                try:
                    result, error = conn.recv() if conn.poll() else (None, None)
                except (EOFError, OSError):
                    result, error = None, None
                if result is None:
                    if error is None:  # the worker died: reap it, for its exit code
                        worker[0].join(5)
                    log = run["run_dir"] / LOG_FILE
                    why = error or f"its worker process ended (exit code {worker[0].exitcode})"
                    where = f"its output: {log}" if log.is_file() else "the worker's error is printed above"
                    raise StudyRunError(f"run {label!r} seed {seed} failed: {why}; {where}")
                results[i] = result
                progress.finished(label, time.perf_counter() - t0)
                acc = result.get("test_acc1")
                progress.line(i + 1, label, seed, f"done in {_fmt_time(time.perf_counter() - t0)}"
                              + (f", top-1 {acc:.2f}%" if acc is not None else ""),
                              progress.eta([order[j][0] for j in pending], running_labels()))
                idle.append(worker)
        ok = True
    except KeyboardInterrupt:
        progress.say(f"[study {plan.name}] interrupted: stopping {len(running)} running run(s); they resume from "
                     f"their last.pt when the plan runs again", flush=True)
        raise
    finally:
        _stop_workers(workers, gently=ok)
    return [results[i] for i in range(len(order))]


def _prepare_data(plan: Plan, say) -> None:
    """Generate (and cache) the plan's Pathfinder sets here, once, rather than in every worker at once."""
    from ..data.pathfinder import cache_dir, load_pathfinder
    from ..train.datasets import PATHFINDER

    for data in sorted({run_options(plan, label)["data"] for label in plan.configs} & set(PATHFINDER)):
        if not any(cache_dir().glob(f"{data}-[0-9]*.npz")):
            say(f"[study {plan.name}] generating {data} once for all workers (it is cached)", flush=True)
        load_pathfinder(data)


def _start_worker(ctx, preload, number: int) -> tuple:
    """A started worker process (:func:`_worker`) and this side of its pipe."""
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_worker, args=(child, os.getpid(), str(preload) if preload else None),
                       name=f"vmamba-study-worker-{number}")
    proc.start()
    child.close()  # so that the worker's end closing (it died) is seen here
    return proc, parent


def _stop_workers(workers: list[tuple], gently: bool) -> None:
    """End the worker processes: asked to (``gently``, all idle) or terminated, then killed if need be."""
    for proc, conn in workers:
        if proc.is_alive():
            try:
                if gently:
                    conn.send(None)
                else:
                    proc.terminate()
            except OSError:
                proc.terminate()
    for proc, conn in workers:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()
        conn.close()


def _worker(conn, parent: int, preload: str | None) -> None:
    """A worker process: runs (plan, run) pairs received on ``conn`` with :func:`run_one`, each with its
    output in the run's ``study.log``, and sends back (result, None) or (None, the error)."""
    import signal
    import threading

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the main process stops the workers
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop through `finally`: the run's lock is released

    def exit_with_parent():  # never outlive the study (its process killed without a chance to stop us)
        while os.getppid() == parent:
            time.sleep(1)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=exit_with_parent, daemon=True).start()
    try:
        _serve(conn, preload)
    except SystemExit as e:  # stopped: the run's `finally` blocks have run; skip torch's slow teardown
        sys.stdout.flush(), sys.stderr.flush()
        os._exit(e.code if isinstance(e.code, int) else 1)


def _serve(conn, preload: str | None) -> None:
    """The worker's loop (see :func:`_worker`)."""
    import contextlib
    import runpy
    import traceback

    failed = None
    if preload:
        try:
            runpy.run_path(preload, run_name="__vmamba_preload__")
        except Exception as e:
            failed = f"--preload {preload} failed in the worker: {type(e).__name__}: {e}"
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:  # done: nothing is open, so skip the interpreter's slow teardown (torch's)
            raise SystemExit(0)
        plan, run = task
        if failed:
            conn.send((None, failed))
            continue
        run["run_dir"].mkdir(parents=True, exist_ok=True)
        with open(run["run_dir"] / LOG_FILE, "a") as log:
            try:
                with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                    result = run_one(plan, run)
            except Exception as e:
                traceback.print_exc(file=log)
                conn.send((None, f"{type(e).__name__}: {e}"))
                continue
        conn.send((result, None))


def _throughput(run_dir: Path) -> dict:
    """Training images per second (mean over epochs) and total training time, from metrics.jsonl."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    if not rows:
        return dict(train_img_per_s=None, train_time_s=None)
    return dict(train_img_per_s=float(np.mean([r["img_per_s"] for r in rows])),
                train_time_s=float(sum(r["epoch_time"] for r in rows)))


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))
