"""BFCL results of several models side by side, for report.md: a markdown table and a grouped bar plot.

    from agent_align.bfcl.report import bfcl_table, plot_bfcl
    bfcl_table(summary["bfcl"]); plot_bfcl(summary["bfcl"], run_dir / "plots" / "bfcl.png")

Both take ``{label: result}`` where a result has bfcl_score.json's shape (``evaluate_bfcl``'s return).
"""

from __future__ import annotations

from pathlib import Path


def _groups(by_model: dict[str, dict]) -> list[str]:
    cats = list(dict.fromkeys(c for r in by_model.values() for c in r["categories"]))
    return cats + ["overall"]


def _stats(result: dict, group: str) -> dict | None:
    return result["overall"] if group == "overall" else result["categories"].get(group)


def bfcl_table(by_model: dict[str, dict]) -> str:
    """Markdown: one row per category (and overall, the micro average), one column per model; each cell
    is BFCL's AST accuracy, then our strict SSPR on the same answers."""
    labels = list(by_model)
    lines = ["| category | n | " + " | ".join(f"{m} AST / SSPR" for m in labels) + " |",
             "|---|---:|" + "---:|" * len(labels)]
    for group in _groups(by_model):
        cells, n = [], "-"
        for m in labels:
            s = _stats(by_model[m], group)
            if s is None:
                cells.append("-")
                continue
            n = s["n"]
            cells.append(f"{100 * s['ast_accuracy']:.1f}% / {100 * s['sspr']:.1f}%")
        name = "**overall**" if group == "overall" else group
        lines.append(f"| {name} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_bfcl(by_model: dict[str, dict], out_png: str | Path) -> str:
    """Grouped bars: BFCL AST accuracy per category (and overall), one bar per model. Returns the file name."""
    from agent_align.report.plots import COLORS, _save, plt

    groups = _groups(by_model)
    fig, ax = plt.subplots(figsize=(7.0, 3.6))
    width = 0.8 / max(1, len(by_model))
    for j, (label, result) in enumerate(by_model.items()):
        vals = [(_stats(result, g) or {}).get("ast_accuracy", 0.0) for g in groups]
        xs = [i + j * width for i in range(len(groups))]
        ax.bar(xs, vals, width, label=label, color=COLORS.get(label))
        for x, v in zip(xs, vals):
            ax.text(x, v + 0.01, f"{100 * v:.0f}%", ha="center", fontsize=7)
    ax.set_xticks([i + width * (len(by_model) - 1) / 2 for i in range(len(groups))],
                  [g.replace("_", "\n") for g in groups], fontsize=8)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("AST accuracy")
    ax.set_title("BFCL (first questions of each category)")
    ax.legend(loc="upper right", fontsize=8)
    return _save(fig, Path(out_png))
