"""stage=score_steps: one score in [0, 1] per step of every chosen and rejected answer (seed 002's
``rewarded.jsonl``), ready for ``loss=stepwise`` and Step-DPO pairs.

    python -m agent_align stage=score_steps steps.input=runs/x/data/train.jsonl scorer=verifier
    python -m agent_align stage=score_steps scorer=lm scorer.backend=openai scorer.base_url=... scorer.api_model=...
    python -m agent_align stage=dpo loss=stepwise data.train_path=runs/x/rewarded.jsonl

Each output row is the input row plus ``chosen_steps``/``rejected_steps`` (the step texts) and
``chosen_scores``/``rejected_scores``. Writes rewarded.jsonl (or steps.output) and score_steps.json.
"""

from __future__ import annotations

import logging
import time

from agent_align.jsonl import read_jsonl, write_json, write_jsonl
from agent_align.stages.context import RunContext
from agent_align.steps.scorers import build_scorer
from agent_align.steps.scoring import completion_format, first_wrong, mean_score, score_rows
from agent_align.steps.split import step_texts

log = logging.getLogger(__name__)


def summarize(rows: list[dict], threshold: float) -> dict:
    rej = [r["rejected_scores"] for r in rows if r.get("rejected_scores") is not None]
    cho = [r["chosen_scores"] for r in rows if r.get("chosen_scores") is not None]
    partly = [s for s in rej if first_wrong(s, threshold) is not None and any(x >= threshold for x in s)]
    return {"n": len(rows),
            "chosen_mean_score": sum(map(mean_score, cho)) / len(cho) if cho else None,
            "rejected_mean_score": sum(map(mean_score, rej)) / len(rej) if rej else None,
            "chosen_all_correct": sum(first_wrong(s, threshold) is None for s in cho) / len(cho) if cho else None,
            # the rows where step-level losses differ from DPO: a rejected answer with correct steps in it
            "rejected_with_correct_steps": len(partly) / len(rej) if rej else None,
            "mean_steps": sum(len(s) for s in cho + rej) / len(cho + rej) if cho + rej else 0.0}


def run(cfg, ctx: RunContext) -> dict:
    src = cfg.steps.input or cfg.data.train_path or str(ctx.path("data", "train.jsonl"))
    dest = cfg.steps.output or str(ctx.path("rewarded.jsonl"))
    rows = read_jsonl(src, "steps.input", required=("prompt",))
    start = time.perf_counter()
    scorer = build_scorer(cfg.scorer, cfg)
    score_rows(rows, scorer, cfg.steps.format, default=cfg.data.format)
    for r in rows:
        for side in ("chosen", "rejected"):
            if r.get(side) is not None:
                r[f"{side}_steps"] = step_texts(r[side], completion_format(r[side], cfg.steps.format, cfg.data.format))
    summary = {"input": src, "output": dest, "scorer": cfg.scorer.name, **summarize(rows, cfg.steps.threshold),
               "seconds": round(time.perf_counter() - start, 2), "scorer_stats": dict(getattr(scorer, "stats", {}))}
    if ctx.is_main:
        write_jsonl(dest, rows)
        write_json(ctx.path("score_steps.json"), summary)
    log.info("scored %d rows with %s -> %s: chosen %.3f, rejected %.3f mean step score; %.1f%% of rejected "
             "answers have correct steps", summary["n"], cfg.scorer.name, dest, summary["chosen_mean_score"] or 0,
             summary["rejected_mean_score"] or 0, 100 * (summary["rejected_with_correct_steps"] or 0))
    return summary
