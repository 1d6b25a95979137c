"""stage=reward_eval: average step score of the base and the tuned model on held-out prompts
(seed 002's reward-score evaluation), with a plot.

    python -m agent_align stage=reward_eval run_dir=runs/x        # checkpoints/sft vs checkpoints/dpo
    python -m agent_align stage=reward_eval reward_eval.base_model=A reward_eval.tuned_model=B scorer=lm

Each model answers greedily; each answer's score is the mean of its step scores (scorer=...).
Writes reward_eval.json = {"base_avg_score", "tuned_avg_score", "improvement", "num_examples"},
reward_eval_details.json (per split and all-correct rates) and reward_eval.png.
"""

from __future__ import annotations

import logging
from collections import defaultdict

from agent_align.errors import UserError
from agent_align.jsonl import read_jsonl, write_json, write_jsonl
from agent_align.stages.context import RunContext
from agent_align.stages.sample import draw, model_path
from agent_align.steps import plots
from agent_align.steps.scorers import build_scorer
from agent_align.steps.scoring import all_correct, mean_score, score_rows

log = logging.getLogger(__name__)


def score_model(cfg, ctx, path, rows, scorer, label):
    outputs = [o[0] for o in draw(cfg, ctx, path, rows, k=1, do_sample=False, desc=f"reward_eval {label}")]
    scored = score_rows([{**r, "chosen": o} for r, o in zip(rows, outputs)], scorer, cfg.steps.format,
                        sides=("chosen",), default=cfg.data.format)
    return outputs, [s["chosen_scores"] for s in scored]


def run(cfg, ctx: RunContext) -> dict:
    rc = cfg.reward_eval
    base = model_path(ctx, rc.base_model, "sft")
    tuned = model_path(ctx, rc.tuned_model, "dpo")
    if tuned is None:
        raise UserError(f"no tuned model: set reward_eval.tuned_model=DIR (nothing at {ctx.path('checkpoints', 'dpo')})")
    data = rc.data or cfg.data.eval_path or str(ctx.path("data", "eval.jsonl"))
    rows = read_jsonl(data, "reward_eval.data", required=("prompt", "chosen"))
    rows = rows[: rc.limit] if rc.limit else rows
    scorer = build_scorer(cfg.scorer, cfg)
    results = {}
    for label, path in (("base", base), ("tuned", tuned)):
        ctx.cache.pop("policy", None)  # one model in memory at a time
        results[label] = score_model(cfg, ctx, path, rows, scorer, label)
    means = {k: [mean_score(s) for s in v[1]] for k, v in results.items()}
    out = {"base_avg_score": round(sum(means["base"]) / len(rows), 4),
           "tuned_avg_score": round(sum(means["tuned"]) / len(rows), 4), "num_examples": len(rows)}
    out["improvement"] = round(out["tuned_avg_score"] - out["base_avg_score"], 4)
    out = {k: out[k] for k in ("base_avg_score", "tuned_avg_score", "improvement", "num_examples")}
    by_split = defaultdict(lambda: defaultdict(list))
    for i, r in enumerate(rows):
        for label in results:
            by_split[r.get("split", "all")][label].append(means[label][i])
    details = {"base_model": base or "model.*", "tuned_model": tuned, "scorer": cfg.scorer.name, "data": data,
               "all_correct_rate": {k: sum(all_correct(s, cfg.steps.threshold) for s in v[1]) / len(rows)
                                    for k, v in results.items()},
               "by_split": {sp: {k: sum(v) / len(v) for k, v in d.items()} for sp, d in sorted(by_split.items())}}
    if ctx.is_main:
        write_json(ctx.path("reward_eval.json"), out)
        write_json(ctx.path("reward_eval_details.json"), details)
        write_jsonl(ctx.path("reward_eval_outputs.jsonl"), (
            {"id": r.get("id"), "base": results["base"][0][i], "base_scores": results["base"][1][i],
             "tuned": results["tuned"][0][i], "tuned_scores": results["tuned"][1][i]} for i, r in enumerate(rows)))
        plots.bars(["base", "tuned"], [out["base_avg_score"], out["tuned_avg_score"]],
                   f"Average step score ({cfg.scorer.name}, n={len(rows)})", "mean step score",
                   ctx.path("reward_eval.png"))
    log.info("reward eval: base %.3f -> tuned %.3f (%+.3f) on %d prompts", out["base_avg_score"],
             out["tuned_avg_score"], out["improvement"], len(rows))
    return {**out, **details}
