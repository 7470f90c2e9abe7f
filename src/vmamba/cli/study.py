"""``vmamba study PLAN``: run a named experiment plan end to end and write its report.

Plans: scan (cross2d vs bidi vs unidi), peers (timm's ResNet, ConvNeXt, DeiT, Swin at the same
FLOPs; needs timm importable), resolution (peers' models at 1x-4x their size), erf (ERF at
initialisation and after training), components (d_state, ssm_ratio, dwconv, z gate, scan mode,
one at a time), transfer (fine-tuned vs from scratch). Every run is an ordinary ``vmamba train``
run kept under the runs folder: a rerun skips finished runs, a killed study resumes (Ctrl-C
stops every run; running the command again continues them). Independent runs go on at once in
--jobs worker processes (automatic by default: one per CPU core at --threads 1).
"""
from __future__ import annotations

import argparse
import sys

from . import UsageError
from .validate import add_preload, check_preload, int_range


def add_parser(sub) -> None:
    from ..study.plans import BUDGETS, PLANS

    p = sub.add_parser("study", help="run an experiment plan on the paper's claims and write a report",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("plan", choices=list(PLANS), help="the experiment plan")
    p.add_argument("--quick", action="store_const", const="quick", dest="budget",
                   help="the quick budget: runs of 20-60 s on one CPU core (scan, components: about 3 minutes "
                        "each with --jobs 2 on 2 cores)")
    p.add_argument("--budget", choices=BUDGETS, default="full",
                   help="micro (smoke tests: a minute or two), quick (= --quick) or full (default)")
    p.add_argument("--out", metavar="DIR", help="report folder (default: outputs/study/PLAN)")
    p.add_argument("--runs", metavar="DIR", help="where the training runs are kept (default: runs/ next to the "
                                                 "report folder, shared by plans)")
    p.add_argument("--seeds", type=int, help="seeds per configuration (default: full 3, quick and micro 2)")
    p.add_argument("--data", help="train on this dataset instead of Pathfinder: a built-in name or an "
                                  "ImageFolder root (train/ and val/)")
    p.add_argument("--img-size", type=int, help="training size with --data")
    p.add_argument("--in-chans", type=int, help="image channels with --data")
    p.add_argument("--source", help="transfer: the dataset to pre-train on (default: fashion-mnist-subset)")
    p.add_argument("--jobs", type=int_range(0), default=0, metavar="N",
                   help="runs at once, each in a worker process of its own (0, the default: automatic = one on a "
                        "GPU, else max(1, CPU cores // threads); 1: one after another in this process). A "
                        "fine-tuning run waits for its source; a worker's training output goes to study.log in "
                        "its run's folder")
    p.add_argument("--threads", type=int_range(0), default=0, metavar="N",
                   help="torch threads per run (0: torch's default with --jobs 1, else 1)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    add_preload(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..study import StudyRunError, run_study
    from ..study.peers import PeerUnavailable
    from ..train import DataError

    data = dict(data=args.data, img_size=args.img_size, in_chans=args.in_chans)
    if args.source:
        if args.plan != "transfer":
            raise UsageError(f"--source applies to the transfer plan only, not {args.plan!r}")
        data["source"] = args.source
    check_preload(args.preload)
    try:
        run_study(args.plan, budget=args.budget or "full", out=args.out, runs=args.runs, seeds=args.seeds,
                  threads=args.threads, device=args.device, jobs=args.jobs, preload=args.preload, **data)
    except StudyRunError as e:  # a worker's run failed: the study stopped, finished runs are kept
        print(f"vmamba study: error: {e}", file=sys.stderr)
        return 1
    except (ValueError, DataError, PeerUnavailable) as e:
        raise UsageError(str(e))
    return 0
