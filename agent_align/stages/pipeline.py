"""stage=pipeline (the default): generate -> evaluate (base) -> sft -> evaluate (baseline) -> dpo ->
evaluate (aligned) -> report; each evaluation also scores BFCL (``evaluate.bfcl``).

    python -m agent_align                       # the CPU default: SmolLM2-135M-Instruct
    python -m agent_align loss=ipo              # same loop, other groups
    python -m agent_align +experiment=from_scratch   # the embedded tiny model, trained from scratch

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
    """SSPR of model ``label``: ``base`` (the pretrained model, zero-shot), ``baseline`` (after SFT) or
    ``aligned`` (after DPO). Reuses the model a previous stage left in memory when it is that one."""
    done = finished(cfg, ctx, f"evaluate_{label}")
    if done:
        return done
    from agent_align.stages.evaluate import evaluate_model

    model, tok, enc = _policy_for(cfg, ctx, label)
    summary = evaluate_model(cfg, ctx, model, tok, enc, label)
    tracker.log_eval(label, summary)
    mark_finished(ctx, f"evaluate_{label}", summary, outputs=[ctx.path(f"eval_{label}.json")])
    return summary


def _bfcl(cfg, ctx: RunContext, label: str) -> dict:
    """BFCL's AST categories (the first ``evaluate.bfcl_limit`` questions of each) for model ``label``."""
    done = finished(cfg, ctx, f"bfcl_{label}")
    if done:
        return done
    from agent_align.bfcl.stages import evaluate_bfcl

    model, tok, _ = _policy_for(cfg, ctx, label)
    result = evaluate_bfcl(cfg, ctx, model, tok, label)
    mark_finished(ctx, f"bfcl_{label}", result, outputs=[ctx.path(f"bfcl_{label}.json")])
    return result


def _policy_for(cfg, ctx: RunContext, label: str):
    """(model, tokenizer, encoder) of model ``label``; ``policy`` reuses the one in memory when it is that one."""
    from agent_align.stages.sft import policy

    if label == "base":
        return policy(cfg, ctx, cfg.sft.init_from, for_training=False)
    stage = "sft" if label == "baseline" else "dpo"
    marker = ctx.path("stages", f"{stage}.json")
    path = json.loads(marker.read_text())["checkpoint"] if marker.exists() else str(ctx.path("checkpoints", stage))
    return policy(cfg, ctx, path, for_training=False)


def _metrics(ctx: RunContext) -> dict[str, list[dict]]:
    out = {}
    for stage in ("sft", "dpo"):
        p = ctx.path("metrics", f"{stage}.jsonl")
        if p.exists() and p.stat().st_size:
            out[stage] = [{k: v for k, v in r.items() if not k.startswith("_")} for r in read_jsonl(p)]
    return out


def _model_source(cfg) -> dict:
    """Where the base weights came from (package, version, file hash for GGUF-shipped models)."""
    from agent_align.models import resolve_model_path
    from agent_align.models.gguf import model_source

    path = resolve_model_path(cfg)
    return model_source(path) or {"path": path}


def run(cfg, ctx: RunContext) -> dict:
    prev = finished(cfg, ctx, "pipeline")
    if prev:
        return prev
    timings_path = ctx.path("stages", "timings.json")
    saved = json.loads(timings_path.read_text()) if timings_path.exists() and cfg.resume == "auto" else {}
    timings, peaks = saved.get("timings", {}), saved.get("peak_memory_mb", {})
    tracker = Tracker(cfg, ctx)
    results = {}
    labels = (["base"] if cfg.evaluate.base else []) + ["baseline", "aligned"]
    train = {"baseline": "sft", "aligned": "dpo"}
    steps = [("generate", lambda: STAGES.get("generate")(cfg, ctx))]
    for label in labels:
        if label in train:
            steps.append((train[label], lambda stage=train[label]: STAGES.get(stage)(cfg, ctx)))
        steps.append((f"evaluate_{label}", lambda label=label: _evaluate(cfg, ctx, label, tracker)))
        if cfg.evaluate.bfcl:
            steps.append((f"bfcl_{label}", lambda label=label: _bfcl(cfg, ctx, label)))
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
        summary = {"models": {label: results[f"evaluate_{label}"] for label in labels},
                   "timings": timings, "peak_memory_mb": peaks,
                   "objective": results["evaluate_aligned"]["sspr"],
                   "train": {"sft": results["sft"], "dpo": results["dpo"]},
                   "data": {k: results["generate"].get(k) for k in ("n_train", "n_eval", "tools")},
                   "experiment": cfg.experiment_name, "model_source": _model_source(cfg)}
        if cfg.evaluate.bfcl:
            summary["bfcl"] = {label: {k: results[f"bfcl_{label}"][k] for k in ("categories", "overall")}
                               for label in labels}
        summary["timings"]["total"] = round(sum(v for k, v in timings.items() if k != "total"), 2)
        if ctx.is_main:
            write_json(ctx.path("summary.json"), summary)
            from agent_align.report import write_report

            report = write_report(ctx.run_dir, summary, _metrics(ctx), f"agent_align run: {cfg.experiment_name}")
            log.info("report: %s", report)
        mark_finished(ctx, "pipeline", summary, outputs=[ctx.path("summary.json"), ctx.path("report.md")])
        b, a = summary["models"]["baseline"], summary["models"]["aligned"]
        log.info("SSPR baseline %.3f -> aligned %.3f (%s)", b["sspr"], a["sspr"], ", ".join(
            f"{s}: {b['by_split'][s]['sspr']:.3f} -> {a['by_split'][s]['sspr']:.3f}" for s in a.get("by_split", {})))
        tracker.finish(summary)
        return summary
    finally:
        tracker.finish()
