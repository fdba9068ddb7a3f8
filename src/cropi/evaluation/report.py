"""Run reports: ``summary.json`` (machine-readable), ``accuracy.png`` and ``report.md`` (for people)."""

from __future__ import annotations

import platform
from pathlib import Path

from cropi.io import write_json, write_text


def machine_description() -> str:
    import os

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return (f"{cpu}, {os.cpu_count()} cores{mem}{gpu}; torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}")


def plot_curves(curves: dict[str, list[dict]], path: Path, title: str = "", split: str = "test") -> None:
    """Targeted and untargeted accuracy on ``split`` against GRPO steps, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def write_run_report(run_dir: Path, summary: dict) -> None:
    """``summary.json``, ``accuracy.png`` and ``report.md`` for one training run."""
    run_dir = Path(run_dir)
    write_json(run_dir / "summary.json", summary)
    split = summary.get("config", {}).get("eval", {}).get("split", "test")
    plot_curves({summary["selector"]: summary["curve"]}, run_dir / "accuracy.png",
                f"{summary['selector']} · model {summary.get('model')} · seed {summary['seed']}", split=split)
    curve = summary["curve"]
    lines = [
        f"# cropi run: {summary['selector']} (seed {summary['seed']})",
        "",
        f"- model: `{summary.get('model')}`; {summary['steps']} GRPO steps of {summary.get('prompts_per_step')} "
        f"prompts x G={summary.get('group_size')}",
        f"- machine: {summary.get('machine')}",
        f"- training wall time (rollouts + updates, evaluation excluded): {summary['wall_seconds']:.1f} s; "
        f"{summary.get('steps_per_minute', 0):.2f} GRPO steps/min; rollout {summary.get('rollout_tokens_per_second', 0):.0f} tokens/s",
        f"- targeted {split} accuracy: step 0 {100 * curve[0]['targeted']:.1f}% -> best {100 * summary['best_targeted']:.1f}% "
        f"(last-3 mean {100 * summary.get('final_targeted', 0):.1f}%)",
        "",
        "![accuracy](accuracy.png)",
        "",
        "| step | targeted | untargeted | train seconds |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for c in curve:
        unt = "" if c.get("untargeted") is None else f"{100 * c['untargeted']:.1f}"
        lines.append(f"| {c['step']} | {100 * c['targeted']:.1f} | {unt} | {c.get('seconds', 0):.0f} |")
    fams = summary.get("per_family_final") or {}
    if fams:
        lines += ["", "Per-family accuracy at the last evaluation:", "", "| family | accuracy |", "| --- | ---: |"]
        lines += [f"| {f} | {100 * a:.1f} |" for f, a in fams.items()]
    write_text(run_dir / "report.md", "\n".join(lines) + "\n")
