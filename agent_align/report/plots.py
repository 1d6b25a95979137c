"""PNG plots (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from agent_align.validation.categories import CATEGORIES  # noqa: E402

COLORS = {"base": "#e0c9a6", "baseline": "#9aa5b1", "aligned": "#1f77b4"}


def _save(fig, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path.name


def sspr_by_split(models: dict, path: Path) -> str:
    groups = ["overall"] + sorted({s for m in models.values() for s in m.get("by_split", {})})
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    width = 0.8 / max(1, len(models))
    for j, (label, m) in enumerate(models.items()):
        vals = [m["sspr"] if g == "overall" else m.get("by_split", {}).get(g, {}).get("sspr", 0.0) for g in groups]
        xs = [i + j * width for i in range(len(groups))]
        ax.bar(xs, vals, width, label=label, color=COLORS.get(label))
        for x, v in zip(xs, vals):
            ax.text(x, v + 0.01, f"{100 * v:.1f}%", ha="center", fontsize=8)
    ax.set_xticks([i + width * (len(models) - 1) / 2 for i in range(len(groups))], groups)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("SSPR")
    ax.set_title("Strict Schema Pass Rate by split")
    ax.legend(loc="upper left", ncol=len(models), fontsize=8)
    return _save(fig, path)


def failures(models: dict, path: Path) -> str:
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    width = 0.8 / max(1, len(models))
    for j, (label, m) in enumerate(models.items()):
        vals = [m["failures"].get(c, 0) for c in CATEGORIES]
        ax.bar([i + j * width for i in range(len(CATEGORIES))], vals, width, label=label, color=COLORS.get(label))
    ax.set_xticks([i + width * (len(models) - 1) / 2 for i in range(len(CATEGORIES))],
                  [c.replace("_", "\n") for c in CATEGORIES], fontsize=8)
    ax.set_ylabel("outputs")
    ax.set_title("Failure breakdown")
    ax.legend()
    return _save(fig, path)


def training_curves(metrics: dict[str, list[dict]], path: Path) -> str | None:
    series = []
    for stage, rows in metrics.items():
        steps = [r["step"] if "step" in r else i for i, r in enumerate(rows) if "loss" in r]
        loss = [r["loss"] for r in rows if "loss" in r]
        if loss:
            series.append((f"{stage} loss", steps, loss))
    dpo = metrics.get("dpo", [])
    margin = [(i, r["rewards/margins"]) for i, r in enumerate(dpo) if "rewards/margins" in r]
    if not series:
        return None
    fig, axes = plt.subplots(1, 2 if margin else 1, figsize=(10 if margin else 5.5, 3.4), squeeze=False)
    for name, xs, ys in series:
        axes[0][0].plot(range(len(ys)), ys, label=name)
    axes[0][0].set_xlabel("logged step")
    axes[0][0].set_title("training loss")
    axes[0][0].legend()
    if margin:
        axes[0][1].plot([m[0] for m in margin], [m[1] for m in margin], color="#d62728")
        axes[0][1].set_title("DPO reward margin (chosen - rejected)")
        axes[0][1].set_xlabel("logged step")
    return _save(fig, path)
