"""stage=analyze: failure modes of an evaluation (validator categories, per tool, agent step
categories) as a table and plots, and targeted negatives for the next round.

    python -m agent_align stage=analyze run_dir=runs/x                  # newest verdicts in the run
    python -m agent_align stage=analyze analyze.verdicts=runs/x/verdicts_aligned.jsonl \
        analyze.trajectories=runs/agent/trajectories
    python -m agent_align data.targeted_negatives=runs/x/analysis/targeted_negatives.json   # next round

Writes analysis/failure_modes.{md,json}, analysis/failures_by_category.png,
analysis/failures_by_tool.png and analysis/targeted_negatives.json.
"""

from __future__ import annotations

import logging
from pathlib import Path

from agent_align.errors import UserError
from agent_align.jsonl import atomic_open, read_jsonl, write_json
from agent_align.stages.context import RunContext
from agent_align.steps import analysis, plots

log = logging.getLogger(__name__)
VERDICT_FILES = ("verdicts_aligned.jsonl", "verdicts_baseline.jsonl", "verdicts.jsonl")


def find_verdicts(cfg, ctx: RunContext) -> str:
    if cfg.analyze.verdicts:
        return cfg.analyze.verdicts
    for name in VERDICT_FILES:
        if ctx.path(name).exists():
            return str(ctx.path(name))
    found = sorted(ctx.run_dir.glob("verdicts*.jsonl"), key=lambda p: p.stat().st_mtime)
    if found:
        return str(found[-1])
    raise UserError(f"no verdicts*.jsonl in {ctx.run_dir}: run stage=evaluate (or stage=score) first, "
                    f"or set analyze.verdicts=FILE")


def run(cfg, ctx: RunContext) -> dict:
    vpath = find_verdicts(cfg, ctx)
    verdicts = read_jsonl(vpath, "analyze.verdicts", required=("passed",))
    data_rows = None
    if any(not v.get("tool") for v in verdicts):
        dpath = cfg.analyze.data or cfg.data.eval_path or str(ctx.path("data", "eval.jsonl"))
        if Path(dpath).exists():
            data_rows = read_jsonl(dpath, "analyze.data")
    table = analysis.failure_table(analysis.join_tools(verdicts, data_rows))
    steps = None
    if cfg.analyze.trajectories:
        steps = analysis.step_categories(analysis.load_trajectories(cfg.analyze.trajectories))
    targeted = analysis.targeted_negatives(table, cfg.analyze.top_k, cfg.analyze.boost)
    out = ctx.path("analysis")
    result = {"verdicts": vpath, **table, "step_categories": steps, "targeted": targeted,
              "targeted_negatives_path": str(out / "targeted_negatives.json")}
    if ctx.is_main:
        write_json(out / "failure_modes.json", result)
        with atomic_open(out / "failure_modes.md") as fh:
            fh.write(analysis.markdown(table, steps))
        write_json(out / "targeted_negatives.json", {"negative_types": targeted["negative_types"],
                                                     "tools": targeted["tools"], "source": vpath})
        cats = {c: k for c, k in table["by_category"].items() if k}
        if cats:
            plots.bars(list(cats), list(cats.values()), f"Failures by category ({table['failed']}/{table['n']})",
                       "failures", out / "failures_by_category.png", fmt="{:.0f}")
            tools = [t for t, s in table["by_tool"].items() if s["failed"]]
            counts = {(c["tool"], c["category"]): c["count"] for c in table["cells"]}
            plots.stacked(tools, list(cats), counts, "Failures by tool and category", out / "failures_by_tool.png")
        if steps and steps["by_category"]:
            sc = steps["by_category"]
            plots.bars(list(sc), list(sc.values()), "Agent step categories", "steps", out / "step_categories.png",
                       fmt="{:.0f}")
    print(analysis.markdown(table, steps))
    log.info("targeted negatives for the next round: %s (data.targeted_negatives=%s)",
             targeted["from"], out / "targeted_negatives.json")
    return result
