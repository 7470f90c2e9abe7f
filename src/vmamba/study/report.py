"""The study report: mean +- std tables in ``report.md``, PNG plots and ``results.json``."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..utils import pyplot
from .plans import Plan


def mean_std(values) -> dict:
    """Mean, sample standard deviation (0 for one value) and count of the non-missing values."""
    v = np.array([x for x in values if x is not None], dtype=float)
    v = v[np.isfinite(v)]  # e.g. a cross ratio that is undefined for a local ERF
    if len(v) == 0:
        return dict(mean=None, std=None, n=0)
    return dict(mean=float(v.mean()), std=float(v.std(ddof=1)) if len(v) > 1 else 0.0, n=int(len(v)))


def _pm(stat: dict, digits: int = 2, unit: str = "") -> str:
    if stat["mean"] is None:
        return "-"
    return f"{stat['mean']:.{digits}f} +- {stat['std']:.{digits}f}{unit}"


def summarise(plan: Plan, results: list[dict]) -> dict:
    """Per configuration: accuracy, cost and analysis numbers over its seeds."""
    summary = {}
    for label in plan.configs:
        runs = [r for r in results if r["label"] == label]
        an = [r.get("analyses", {}) for r in runs]
        row = dict(seeds=[r["seed"] for r in runs], top1=mean_std(r["test_acc1"] for r in runs),
                   img_per_s=mean_std(r.get("train_img_per_s") for r in runs),
                   train_time_s=mean_std(r.get("train_time_s") for r in runs))
        if any("flops" in a for a in an):
            row.update(params=an[0]["flops"]["params"], gflops=an[0]["flops"]["gflops"])
        for key in ("erf", "erf_init"):
            if any(key in a for a in an):
                row[key] = {m: mean_std(a[key][m] for a in an if key in a)
                            for m in ("cross_ratio", "mass_outside_central_half", "area_ratio_50")}
        if any("resolution" in a for a in an):
            scales = [r["scale"] for r in an[0]["resolution"]]
            row["resolution"] = [dict(scale=s, size=an[0]["resolution"][i]["size"],
                                      gflops=an[0]["resolution"][i]["gflops"],
                                      top1=mean_std(a["resolution"][i]["top1"] for a in an if "resolution" in a))
                                 for i, s in enumerate(scales)]
        summary[label] = row
    return summary


def _images(recipe: dict) -> int:
    return recipe.get("epochs", 0) * recipe.get("max_steps_per_epoch", 0) * recipe.get("batch_size", 0)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def write_report(plan: Plan, results: list[dict], out: str | os.PathLike, meta: dict) -> Path:
    """Write ``report.md``, the plots and ``results.json`` into ``out``; returns the report's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(plan, results)
    plots = plot_all(plan, results, summary, out)
    recipe = {k: v for k, v in plan.recipe.items() if k not in ("progress",)}
    doc = dict(plan=plan.name, title=plan.title, question=plan.question, budget=plan.budget, seeds=list(plan.seeds),
               recipe=recipe, configs=plan.configs, settings=plan.settings, **meta, summary=summary, runs=results,
               plots=[p.name for p in plots])
    (out / "results.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")

    lines = [f"# Study `{plan.name}`: {plan.title}", "", plan.question, "",
             f"Budget `{plan.budget}`: {recipe.get('epochs')} epochs x {recipe.get('max_steps_per_epoch')} steps x "
             f"batch {recipe.get('batch_size')} = {_images(recipe):,} training images per run "
             f"(`{recipe.get('data')}` at {recipe.get('img_size')}x{recipe.get('img_size')}), "
             f"{len(plan.seeds)} seeds per configuration ({', '.join(map(str, plan.seeds))}); "
             f"accuracy is top-1 on the test split, mean +- sample std over seeds.", ""]
    m = meta.get("machine", {})
    lines += [f"Machine: {m.get('cpu')}, {m.get('cores')} cores, torch {m.get('torch')}"
              + (f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU")
              + f"; plan wall time {meta.get('wall_s', 0):.0f} s this session"
              + (f", up to {meta['jobs']} runs at once with {meta['threads']} thread(s) each" if meta.get("jobs", 1) > 1
                 else "") + ".", ""]
    header = ["configuration", "top-1 (%)", "params", "GFLOPs", "train img/s"]
    rows = [[f"`{label}`", _pm(s["top1"]), f"{s['params'] / 1e6:.3f} M" if "params" in s else "-",
             f"{s['gflops']:.4f}" if "gflops" in s else "-", _pm(s["img_per_s"], 0)] for label, s in summary.items()]
    lines += _table(header, rows) + [""]
    if any("erf" in s or "erf_init" in s for s in summary.values()):
        header = ["configuration"]
        keys = [k for k in ("erf_init", "erf") if any(k in s for s in summary.values())]
        for k in keys:
            when = "init" if k == "erf_init" else "trained"
            header += [f"cross ratio ({when})", f"mass outside centre/2 ({when})"]
        rows = []
        for label, s in summary.items():
            row = [f"`{label}`"]
            for k in keys:
                row += [_pm(s[k]["cross_ratio"]), _pm(s[k]["mass_outside_central_half"], 3)] if k in s else ["-", "-"]
            rows.append(row)
        lines += ["ERF at about 4x the training size, an odd number of last-stage cells (mean over seeds; "
                  "'-': undefined). Cross ratio: mean ERF near the centre row and column over its mean near the "
                  "diagonals, at equal distances from the centre; 1 = no cross shape.", ""]
        lines += _table(header, rows) + [""]
    if any("resolution" in s for s in summary.values()):
        first = next(s for s in summary.values() if "resolution" in s)["resolution"]
        header = ["configuration"] + [f"{r['size']}px top-1 (%)" for r in first] + [f"GFLOPs at {first[-1]['size']}px"]
        rows = [[f"`{label}`"] + [_pm(r["top1"]) for r in s["resolution"]] + [f"{s['resolution'][-1]['gflops']:.3f}"]
                for label, s in summary.items() if "resolution" in s]
        lines += ["Accuracy of the same trained models at larger inputs (no fine-tuning).", ""] + _table(header, rows) + [""]
    lines += [f"![{p.stem}]({p.name})" for p in plots] + [""]
    lines += ["Every run is an ordinary `vmamba train` run; its checkpoints, metrics and curves are in:", ""]
    lines += [f"* `{r['label']}` seed {r['seed']}: `{r['run_dir']}`" for r in results] + [""]
    (out / "report.md").write_text("\n".join(lines))
    return out / "report.md"


def plot_all(plan: Plan, results: list[dict], summary: dict, out: Path) -> list[Path]:
    """Accuracy bars, ERF maps (mean over seeds), accuracy against resolution; the PNGs written."""
    plt = pyplot()
    if plt is None:
        return []
    from ..analysis.erf import plot_erfs

    written = []
    labels = list(summary)
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(labels), 3.6))
    means = [summary[lab]["top1"]["mean"] or 0 for lab in labels]
    ax.bar(range(len(labels)), means, yerr=[summary[lab]["top1"]["std"] or 0 for lab in labels], capsize=4,
           color="tab:blue", alpha=0.8)
    for i, lab in enumerate(labels):  # every seed as a dot
        ys = [r["test_acc1"] for r in results if r["label"] == lab]
        ax.scatter([i] * len(ys), ys, color="k", s=10, zorder=3)
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("test top-1 (%)")
    ax.set_ylim(max(0, min(means) - 15), min(100, max(means) + 8))
    ax.set_title(f"{plan.name}: accuracy, mean +- std over {len(plan.seeds)} seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=110)
    plt.close(fig)
    written.append(out / "accuracy.png")

    for key, title in (("erf_init", "ERF at initialisation"), ("erf", "ERF after training")):
        maps = {}
        for lab in labels:
            arrays = [np.load(Path(r["run_dir"]) / f"{key}.npy") for r in results
                      if r["label"] == lab and (Path(r["run_dir"]) / f"{key}.npy").is_file()]
            if arrays:
                maps[lab] = np.mean(arrays, 0)
        if maps and plot_erfs(maps, out / f"{key}.png", title=title):
            written.append(out / f"{key}.png")

    if any("resolution" in s for s in summary.values()):
        fig, ax = plt.subplots(figsize=(6, 4))
        for lab, s in summary.items():
            if "resolution" in s:
                ax.errorbar([r["size"] for r in s["resolution"]], [r["top1"]["mean"] for r in s["resolution"]],
                            yerr=[r["top1"]["std"] for r in s["resolution"]], marker="o", capsize=3, label=lab)
        ax.set_xlabel("input side (pixels); trained at the first")
        ax.set_ylabel("test top-1 (%)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title("Accuracy against input resolution", fontsize=9)
        fig.tight_layout()
        fig.savefig(out / "resolution.png", dpi=110)
        plt.close(fig)
        written.append(out / "resolution.png")
    return written
