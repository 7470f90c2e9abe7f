"""Controlled experiments on the paper's claims: ``vmamba study PLAN``.

    from vmamba.study import run_study
    report = run_study("scan", budget="quick")      # -> outputs/study/scan/report.md

Each plan (see :mod:`vmamba.study.plans`) is a set of configurations x seeds; every run is an
ordinary training run (:func:`vmamba.train.train`), kept in a shared store so that a rerun skips
finished runs and a killed study resumes; the report (tables, plots, ``results.json``) is
written at the end (:mod:`vmamba.study.report`).
"""
from __future__ import annotations

import os
import runpy
import time
from datetime import datetime, timezone
from pathlib import Path

from . import runner
from .plans import BUDGETS, PLANS, Plan, make_plan
from .report import write_report
from .runner import StudyRunError, machine, resolve_jobs, run_plan

DEFAULT_ROOT = Path("outputs") / "study"


def run_study(plan: str | Plan, budget: str = "full", out: str | os.PathLike | None = None,
              runs: str | os.PathLike | None = None, seeds: int | None = None, threads: int = 0,
              device: str = "auto", say=print, jobs: int = 1, preload: str | os.PathLike | None = None,
              **data) -> Path:
    """Run ``plan`` (a name or a :class:`Plan`) and write its report; returns ``report.md``'s path.

    ``out``: report folder (default ``outputs/study/<plan>``); ``runs``: where the training runs
    are kept (default ``runs/`` next to the report folder, shared by plans); ``data``:
    ``data=``, ``img_size=``, ``in_chans=`` to run the plan on another dataset.
    ``jobs``: runs at once, each in a worker process of its own (1, the default: one after
    another in this process; 0: automatic, see :func:`vmamba.study.runner.resolve_jobs`);
    ``threads``: torch threads per run (0: torch's default, or 1 when more than one run goes at
    once). ``preload``: a Python file run first, here and in every worker (a fix-up an
    installation needs before timm imports). With ``jobs`` > 1 a calling script needs its work
    under ``if __name__ == "__main__":``, as for any spawned process.
    """
    if preload is not None:
        if not os.path.isfile(preload):
            raise ValueError(f"preload {preload}: no such file")
        runpy.run_path(str(preload), run_name="__vmamba_preload__")
    jobs, threads = resolve_jobs(jobs, threads, device)
    plan = plan if isinstance(plan, Plan) else make_plan(plan, budget, seeds, **data)
    out = Path(out) if out is not None else DEFAULT_ROOT / plan.name
    runs = Path(runs) if runs is not None else out.resolve().parent / "runs"
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    if jobs > 1:
        say(f"[study {plan.name}] {len(plan.runs())} runs, up to {jobs} at once with {threads} thread(s) each; "
            f"each run's training output goes to {runner.LOG_FILE} in its folder", flush=True)
    results = run_plan(plan, runs, threads=threads, device=device, say=say, jobs=jobs, preload=preload)
    meta = dict(machine=machine(), started=started, wall_s=time.perf_counter() - t0, runs_dir=str(runs),
                jobs=jobs, threads=threads)
    report = write_report(plan, results, out, meta)
    say(f"[study {plan.name}] report: {report}", flush=True)
    return report


__all__ = ["BUDGETS", "PLANS", "Plan", "StudyRunError", "make_plan", "run_study"]
