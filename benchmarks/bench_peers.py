"""Whole-model CPU speed against timm peers: ``vmamba peers`` (see ``vmamba peers --help``).

    python benchmarks/bench_peers.py --quick
    python benchmarks/bench_peers.py --sizes 224 --batch 1 8 --json outputs/peers.json

On a CPU-only torch whose torchvision does not import, pass ``--preload FILE`` with a Python
file that makes it importable; without timm the zoo models are measured alone.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vmamba.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["peers", *sys.argv[1:]]))
