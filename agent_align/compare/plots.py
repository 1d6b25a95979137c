"""PNG plots of a comparison table (matplotlib, Agg: no display needed on cluster nodes)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)


def _label(row: dict, keys: list[str]) -> str:
    vals = [f"{k.split('.')[-1]}={row[k]}" for k in keys if row.get(k) is not None]
    return f"{row['run']}: " + ", ".join(vals) if vals else str(row["run"])


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def sspr_bars(rows: list[dict], keys: list[str], path: Path) -> Path:
    """Per run: baseline SSPR, aligned SSPR on seen tools and on held-out tools."""
    series = [("baseline_sspr", "baseline", "#9e9e9e"), ("aligned_seen", "aligned, seen tools", "#1f77b4"),
              ("aligned_unseen", "aligned, unseen tools", "#ff7f0e")]
    n = len(rows)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * n + 2), 4.5))
    width = 0.8 / len(series)
    for i, (key, name, color) in enumerate(series):
        vals = [100 * (r[key] or 0.0) for r in rows]
        ax.bar([x + (i - 1) * width for x in range(n)], vals, width, label=name, color=color)
    ax.set_xticks(range(n), [_label(r, keys) for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("SSPR (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Strict schema pass rate per run")
    ax.legend(fontsize=8)
    return _save(fig, path)


def failure_bars(rows: list[dict], keys: list[str], path: Path) -> Path:
    """Per run: the aligned model's failures stacked by category."""
    cats = [c for c in rows[0] if c.startswith("fail_")]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(rows) + 2), 4.5))
    bottom = [0.0] * len(rows)
    for cat in cats:
        vals = [float(r[cat] or 0) for r in rows]
        ax.bar(range(len(rows)), vals, 0.6, bottom=bottom, label=cat[len("fail_"):])
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_xticks(range(len(rows)), [_label(r, keys) for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("failed eval prompts (aligned model)")
    ax.set_title("Failures by category")
    if cats:
        ax.legend(fontsize=8)
    return _save(fig, path)


def margin_vs_sspr(rows: list[dict], keys: list[str], path: Path) -> Path | None:
    """Final DPO reward margin against aligned SSPR (does a larger margin mean better calls?)."""
    pts = [r for r in rows if r.get("reward_margin") is not None and r.get("aligned_sspr") is not None]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter([r["reward_margin"] for r in pts], [100 * r["aligned_sspr"] for r in pts])
    for r in pts:
        ax.annotate(_label(r, keys), (r["reward_margin"], 100 * r["aligned_sspr"]), fontsize=7)
    ax.set_xlabel("final DPO reward margin")
    ax.set_ylabel("aligned SSPR (%)")
    ax.set_title("Reward margin vs SSPR")
    return _save(fig, path)
