"""report.md: SSPR and failures of base, baseline and aligned per split and tool, BFCL, training metrics, plots."""

from __future__ import annotations

from pathlib import Path

from agent_align.jsonl import atomic_open
from agent_align.report import plots
from agent_align.validation.categories import CATEGORIES


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out + [""]


def write_report(run_dir: Path, summary: dict, metrics: dict[str, list[dict]], title: str) -> Path:
    models = summary["models"]
    figs = run_dir / "plots"
    images = [plots.sspr_by_split(models, figs / "sspr_by_split.png"), plots.failures(models, figs / "failures.png")]
    bfcl = summary.get("bfcl")
    if bfcl:
        from agent_align.bfcl.report import bfcl_table, plot_bfcl

        images.append(plot_bfcl(bfcl, figs / "bfcl.png"))
    curves = plots.training_curves(metrics, figs / "training_curves.png")
    if curves:
        images.append(curves)
    labels = list(models)
    lines = [f"# {title}", ""]
    splits = sorted({s for m in models.values() for s in m.get("by_split", {})})
    rows = [["overall"] + [_pct(models[m]["sspr"]) for m in labels]]
    rows += [[s] + [_pct(models[m].get("by_split", {}).get(s, {}).get("sspr")) for m in labels] for s in splits]
    rows += [["n"] + [models[m]["n"] for m in labels]]
    lines += ["## Strict Schema Pass Rate", ""] + _table(["split"] + labels, rows)
    lines += ["## Failure breakdown", ""] + _table(["category"] + labels,
                                                  [[c] + [models[m]["failures"].get(c, 0) for m in labels] for c in CATEGORIES])
    if bfcl:
        lines += ["## BFCL (AST accuracy / strict SSPR)", "", bfcl_table(bfcl)]
    tools = sorted({t for m in models.values() for t in m.get("by_tool", {})})
    if tools:
        rows = [[t] + [_pct(models[m].get("by_tool", {}).get(t, {}).get("sspr")) for m in labels]
                + [models[labels[0]].get("by_tool", {}).get(t, {}).get("n", 0)] for t in tools]
        lines += ["## Per tool", ""] + _table(["tool"] + labels + ["n"], rows)
    robust = {m: models[m].get("robustness", {}) for m in labels}
    names = sorted({k for r in robust.values() for k in r})
    if names:
        lines += ["## Robustness sets", ""] + _table(["set"] + labels, [[n] + [_pct(robust[m].get(n, {}).get("sspr")) for m in labels]
                                                                          for n in names])
    train = summary.get("train", {})
    if train:
        rows = [[k, v] for stage, d in train.items() for k, v in ((f"{stage}.{k}", v) for k, v in d.items())
                if not isinstance(v, (list, dict))]
        lines += ["## Training", ""] + _table(["metric", "value"], rows)
    lines += ["## Time and memory", ""] + _table(["stage", "seconds", "peak MB"],
                                                 [[s, summary["timings"][s], summary["peak_memory_mb"].get(s, "-")]
                                                  for s in summary["timings"]])
    lines += ["## Plots", ""] + [f"![{Path(i).stem}](plots/{i})" for i in images] + [""]
    path = run_dir / "report.md"
    with atomic_open(path) as fh:
        fh.write("\n".join(lines))
    return path
