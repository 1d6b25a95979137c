"""PNG plots of the agentic comparison table (``agent_table.build_agent_rows``): success with ± SE error
bars, and valid calls / steps / policy violations per method. matplotlib, Agg backend (``plots``)."""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.ticker import MaxNLocator

from agent_align.compare.plots import _save, plt


def _v(x, scale: float = 1.0) -> float:
    """A plotted value or error bar; NaN (nothing drawn) where it is unknown."""
    return math.nan if x is None else scale * float(x)


def _color(row: dict) -> str:
    """Grey for the shared rows (base model lighter, SFT darker), blue for the trained methods."""
    return {"base": "#c7c7c7", "sft": "#7f7f7f"}.get(row["kind"], "#1f77b4")


def _ticks(ax, rows: list[dict]) -> None:
    ax.set_xticks(range(len(rows)), [r["method"] for r in rows], rotation=30, ha="right", fontsize=8)


def success_bars(rows: list[dict], path: Path) -> Path:
    """Per method: success rate and answerable-task success, each ± one SE."""
    series = [("success_rate", "success_se", "all test tasks", "#1f77b4"),
              ("answerable_rate", "answerable_se", "answerable tasks", "#ff7f0e")]
    n = len(rows)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * n + 2), 4.5))
    width = 0.8 / len(series)
    for i, (key, se, name, color) in enumerate(series):
        xs = [x + (i - 0.5) * width for x in range(n)]
        vals, errs = [_v(r[key], 100) for r in rows], [_v(r[se], 100) for r in rows]
        ax.bar(xs, vals, width, yerr=errs, capsize=3, label=name, color=color)
        for x, v, e in zip(xs, vals, errs):  # the value above its error bar (a 0% bar is otherwise invisible)
            if not math.isnan(v):
                ax.annotate(f"{v:.0f}", (x, v + (0 if math.isnan(e) else e)), xytext=(0, 2), textcoords="offset points",
                            ha="center", fontsize=7)
    _ticks(ax, rows)
    ax.set_ylabel("success (%), ± 1 SE")
    ax.set_ylim(0, 105)
    ax.set_title("Test-task success per method (no expert)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def step_panels(rows: list[dict], path: Path) -> Path:
    """Per method: valid-call rate ± SE, average steps ± SE, policy violations."""
    n = len(rows)
    fig, axes = plt.subplots(1, 3, figsize=(max(10.0, 3 * (0.6 * n + 1.5)), 4.5))
    colors = [_color(r) for r in rows]
    panels = [("valid_call_rate", "valid_call_se", 100, "valid calls (% of steps), ± 1 SE"),
              ("avg_steps", "avg_steps_se", 1, "steps per episode, ± 1 SE"),
              ("policy_violations", None, 1, "policy violations (steps)")]
    for ax, (key, se, scale, title) in zip(axes, panels):
        ax.bar(range(n), [_v(r[key], scale) for r in rows], 0.6, color=colors,
               yerr=[_v(r[se], scale) for r in rows] if se else None, capsize=3)
        _ticks(ax, rows)
        ax.set_title(title, fontsize=9)
    axes[0].set_ylim(0, 105)
    axes[2].yaxis.set_major_locator(MaxNLocator(integer=True))
    return _save(fig, path)
