"""Matplotlib figures: one run's accuracy curve, and a comparison's accuracy against steps and seconds.

Each figure is written under a temporary name and renamed, like every other file cropi writes."""

from __future__ import annotations

import statistics
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on the machines that run experiments
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    plt = _pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")  # "tight" takes in a legend placed outside the axes
    plt.close(fig)
    tmp.replace(path)


def plot_curves(curves: dict[str, list[dict]], path: Path, title: str = "", split: str = "test") -> None:
    """Targeted and untargeted accuracy on ``split`` against GRPO steps, one line per run."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    for ax, key in zip(axes, ("targeted", "untargeted")):
        for name, curve in curves.items():
            pts = [(c["step"], c[key]) for c in curve if c.get(key) is not None]
            if pts:
                ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", ms=3, label=name)
        ax.set_title(f"{key} {split} accuracy (macro over families)")
        ax.set_xlabel("GRPO step")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


def plot_comparison(results: dict, out: Path) -> list[str]:
    """Accuracy vs steps and vs seconds, targeted and untargeted: seed mean (line) and min-max (band)."""
    plt = _pyplot()
    names = []
    for xkey, fname in (("step", "accuracy_vs_steps.png"), ("seconds", "accuracy_vs_seconds.png")):
        fig, axes = plt.subplots(1, 2, figsize=(13.5, 4.2))
        for ax, key in zip(axes, ("targeted", "untargeted")):
            if len(results["selectors"]) > 10:  # the default cycle repeats after 10 colours
                ax.set_prop_cycle(color=plt.cm.tab20.colors)
            for sel, block in results["selectors"].items():
                curves = [r["curve"] for r in block["seeds"].values()]
                n = min(len(c) for c in curves)
                xs = [statistics.fmean(c[i][xkey] for c in curves) for i in range(n)]
                vals = [[c[i][key] for c in curves] for i in range(n)]
                if any(v is None for row in vals for v in row):
                    continue
                ax.plot(xs, [100 * statistics.fmean(v) for v in vals], label=sel, lw=1.6)
                ax.fill_between(xs, [100 * min(v) for v in vals], [100 * max(v) for v in vals], alpha=0.15)
            if key == "targeted":
                ax.axhline(100 * results["threshold_targeted"], color="k", ls=":", lw=1, label="full-data best")
            ax.set_title(f"{key} {results.get('eval_split', 'test')} accuracy")
            ax.set_xlabel("GRPO step" if xkey == "step" else "collection + scoring + training seconds")
            ax.set_ylabel("accuracy (%)")
            ax.grid(alpha=0.3)
        # one legend beside the panels: with many selectors it would hide the curves inside them
        handles, labels = axes[0].get_legend_handles_labels()
        fig.tight_layout()
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
        _save(fig, Path(out) / fname)
        names.append(fname)
    return names
