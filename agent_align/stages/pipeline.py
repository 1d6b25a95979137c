"""stage=pipeline (the default): generate -> sft -> evaluate (baseline) -> dpo -> evaluate (aligned) -> report.

    python -m agent_align                       # the CPU default on the embedded tiny model
    python -m agent_align loss=ipo model=small  # same loop, other groups

Finished stages are not redone when the same command is re-run (resume=auto); a killed training
stage resumes from its newest checkpoint. Models stay in memory between stages.
"""

from __future__ import annotations

import json
import logging

from agent_align.jsonl import read_jsonl, write_json
from agent_align.profiling import measure
from agent_align.stages import STAGES
from agent_align.stages.context import RunContext, finished, mark_finished
from agent_align.tracking import Tracker

log = logging.getLogger(__name__)


def _evaluate(cfg, ctx: RunContext, label: str, tracker: Tracker) -> dict:
    done = finished(cfg, ctx, f"evaluate_{label}")
    if done:
        return done
    from agent_align.stages.evaluate import evaluate_model
    from agent_align.stages.sft import policy

    held = ctx.cache.get("policy")
    path = held[2] if held else str(ctx.path("checkpoints", "sft" if label == "baseline" else "dpo"))
    model, tok, enc = policy(cfg, ctx, path)
    summary = evaluate_model(cfg, ctx, model, tok, enc, label)
    tracker.log_eval(label, summary)
    mark_finished(ctx, f"evaluate_{label}", summary)
    return summary


def _metrics(ctx: RunContext) -> dict[str, list[dict]]:
    out = {}
    for stage in ("sft", "dpo"):
        p = ctx.path("metrics", f"{stage}.jsonl")
        if p.exists() and p.stat().st_size:
            out[stage] = [{k: v for k, v in r.items() if not k.startswith("_")} for r in read_jsonl(p)]
    return out


def run(cfg, ctx: RunContext) -> dict:
    prev = finished(cfg, ctx, "pipeline")
    if prev:
        return prev
    timings_path = ctx.path("stages", "timings.json")
    saved = json.loads(timings_path.read_text()) if timings_path.exists() and cfg.resume == "auto" else {}
    timings, peaks = saved.get("timings", {}), saved.get("peak_memory_mb", {})
    tracker = Tracker(cfg, ctx)
    results = {}
    steps = [("generate", lambda: STAGES.get("generate")(cfg, ctx)),
             ("sft", lambda: STAGES.get("sft")(cfg, ctx)),
             ("evaluate_baseline", lambda: _evaluate(cfg, ctx, "baseline", tracker)),
             ("dpo", lambda: STAGES.get("dpo")(cfg, ctx)),
             ("evaluate_aligned", lambda: _evaluate(cfg, ctx, "aligned", tracker))]
    try:
        for name, step in steps:
            done = finished(cfg, ctx, name) if name in timings else None
            if done:
                results[name] = done
                continue
            with measure(timings, peaks, name):
                results[name] = step()
            if ctx.is_main:
                write_json(timings_path, {"timings": timings, "peak_memory_mb": peaks})
        summary = {"models": {"baseline": results["evaluate_baseline"], "aligned": results["evaluate_aligned"]},
                   "timings": timings, "peak_memory_mb": peaks,
                   "objective": results["evaluate_aligned"]["sspr"],
                   "train": {"sft": results["sft"], "dpo": results["dpo"]},
                   "data": {k: results["generate"].get(k) for k in ("n_train", "n_eval", "tools")},
                   "experiment": cfg.experiment_name}
        summary["timings"]["total"] = round(sum(v for k, v in timings.items() if k != "total"), 2)
        if ctx.is_main:
            write_json(ctx.path("summary.json"), summary)
            from agent_align.report import write_report

            report = write_report(ctx.run_dir, summary, _metrics(ctx), f"agent_align run: {cfg.experiment_name}")
            log.info("report: %s", report)
        mark_finished(ctx, "pipeline", summary)
        b, a = summary["models"]["baseline"], summary["models"]["aligned"]
        log.info("SSPR baseline %.3f -> aligned %.3f (%s)", b["sspr"], a["sspr"], ", ".join(
            f"{s}: {b['by_split'][s]['sspr']:.3f} -> {a['by_split'][s]['sspr']:.3f}" for s in a.get("by_split", {})))
        tracker.finish(summary)
        return summary
    finally:
        tracker.finish()
