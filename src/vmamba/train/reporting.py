"""What a run writes: metrics log (JSONL + CSV, TensorBoard when
installed), loss/accuracy curves as a PNG and a one-screen summary. Rank 0 only."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from ..utils import pyplot


class MetricsLog:
    """Appends one record per epoch to ``metrics.jsonl`` and ``metrics.csv`` (and TensorBoard)."""

    def __init__(self, out: str | Path, tensorboard: bool = True):
        self.out = Path(out)
        self.jsonl = self.out / "metrics.jsonl"
        self.csv = self.out / "metrics.csv"
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.out / "tensorboard"))
            except Exception:  # tensorboard not installed
                self.tb = None

    def truncate(self, last_epoch: int, last_record: dict | None = None) -> None:
        """Keep the records up to ``last_epoch``, dropping an epoch that was in flight when the run
        was killed. ``last_record`` (the metrics saved in the checkpoint of ``last_epoch``) replaces
        that epoch's row, so a kill between the checkpoint write and the log append loses nothing."""
        rows = [r for r in self.read() if r["epoch"] <= last_epoch]
        if last_record is not None:
            rows = [r for r in rows if r["epoch"] < last_record["epoch"]] + [last_record]
        self.jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
        self.csv.unlink(missing_ok=True)
        for r in rows:
            self._append_csv(r)

    def read(self) -> list[dict]:
        if not self.jsonl.exists():
            return []
        rows = []
        for line in self.jsonl.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line torn by a kill
                pass
        return rows

    def _append_csv(self, record: dict) -> None:
        new = not self.csv.exists()
        with open(self.csv, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(record))
            if new:
                w.writeheader()
            w.writerow(record)

    def append(self, record: dict) -> None:
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(record) + "\n")
        self._append_csv(record)
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "epoch":
                    self.tb.add_scalar(k, v, record["epoch"])
            self.tb.flush()


def plot_curves(rows: list[dict], path: str | Path) -> bool:
    """Loss and accuracy per epoch as a PNG; False when matplotlib is missing or nothing to plot."""
    plt = pyplot()
    if not rows or plt is None:
        return False
    ep = [r["epoch"] for r in rows]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.plot(ep, [r["train_loss"] for r in rows], "o-", label="train (augmented, smoothed labels)")
    a1.plot(ep, [r["val_loss"] for r in rows], "o-", label="val")
    a1.set_xlabel("epoch"), a1.set_ylabel("loss"), a1.legend(), a1.grid(alpha=0.3)
    a2.plot(ep, [r["train_acc"] for r in rows], "o-", label="train (augmented)")
    a2.plot(ep, [r["val_acc1"] for r in rows], "o-", label="val top-1")
    if any("val_acc1_ema" in r for r in rows):
        a2.plot(ep, [r.get("val_acc1_ema") for r in rows], "o-", label="val top-1 (EMA)")
    a2.set_xlabel("epoch"), a2.set_ylabel("accuracy (%)"), a2.legend(), a2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def summary(lines: dict) -> str:
    """A boxed key/value table for the end of a run."""
    width = max(len(k) for k in lines)
    body = [f"  {k:<{width}}  {v}" for k, v in lines.items()]
    rule = "=" * max(len(b) for b in body)
    return "\n".join([rule, *body, rule])
