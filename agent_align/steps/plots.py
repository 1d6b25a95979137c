"""PNG plots of the step-level stages (matplotlib, Agg backend), written atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def save(fig, path: Path) -> str:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a plot is for everyone who can read the run
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return str(path)


def bars(labels: list[str], values: list[float], title: str, ylabel: str, path: Path, fmt: str = "{:.3f}") -> str:
    fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(labels) + 2), 3.6))
    rects = ax.bar(labels, values, color=["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860"][: len(labels)]
                   or None)
    for r, v in zip(rects, values):
        ax.annotate(fmt.format(v), (r.get_x() + r.get_width() / 2, r.get_height()), ha="center", va="bottom", fontsize=8)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.tick_params(axis="x", rotation=30)
    return save(fig, path)


def stacked(rows: list[str], cols: list[str], counts: dict[tuple[str, str], int], title: str, path: Path) -> str:
    """Stacked bars: one bar per row label, one colour per column label."""
    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * len(rows) + 3), 4.0))
    bottom = [0] * len(rows)
    for c in cols:
        vals = [counts.get((r, c), 0) for r in rows]
        ax.bar(rows, vals, bottom=bottom, label=c)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_title(title)
    ax.set_ylabel("failures")
    ax.tick_params(axis="x", rotation=45)
    ax.legend(fontsize=7)
    return save(fig, path)


def lines(xs: list[float], series: dict[str, list[float]], title: str, xlabel: str, ylabel: str, path: Path) -> str:
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, ys in series.items():
        ax.plot(xs, ys, marker="o", label=name)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save(fig, path)


def grouped_bars(labels: list[str], series: dict[str, list[float]], errors: dict[str, list[float]], title: str,
                 ylabel: str, path: Path) -> str:
    """One group of bars per label, one bar per series, each with an error bar (e.g. sd over seeds)."""
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(labels) * max(1, len(series)) / 2 + 2), 4.0))
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(labels))]
        ax.bar(xs, values, width, yerr=errors.get(name), capsize=3, label=name)
    ax.set_xticks(range(len(labels)), labels, rotation=30)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    top = max([1.0] + [v + (e or 0) for name, vs in series.items() for v, e in zip(vs, errors.get(name) or [0] * len(vs))])
    ax.set_ylim(0, 1.05 * top)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return save(fig, path)
