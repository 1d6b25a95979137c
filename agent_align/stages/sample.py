"""stage=sample: rejection sampling. K samples per prompt from the current model, each scored step
by step; the best and the worst sample of a prompt form a pair (seed 002).

    python -m agent_align stage=sample sample.k=8 sample.temperature=1.0 sample.top_p=0.95 sample.n_prompts=300
    python -m agent_align stage=dpo loss=stepwise data.train_path=runs/x/sampled_pairs.jsonl

Writes samples.jsonl (every sample with its step scores), sampled_pairs.jsonl (chosen/rejected with
chosen_scores/rejected_scores: ready for loss=stepwise and Step-DPO), nat_samples.jsonl (each
sample with ``success`` for data.negatives=nat) and sample.json.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

from agent_align.jsonl import read_jsonl, write_json, write_jsonl
from agent_align.stages.context import RunContext
from agent_align.steps.pairs import best_worst_pair
from agent_align.steps.scorers import build_scorer
from agent_align.steps.scoring import all_correct, completion_format, mean_score, score_rows

log = logging.getLogger(__name__)


def model_path(ctx: RunContext, explicit: str | None, default: str) -> str | None:
    """``explicit``, else the run's checkpoint ``default`` when it exists, else None (= model.*)."""
    if explicit:
        return explicit
    p = ctx.path("checkpoints", default)
    return str(p) if Path(p).exists() else None


def draw(cfg, ctx: RunContext, path: str | None, rows: list[dict], *, k: int, do_sample: bool, desc: str) -> list[list[str]]:
    """``k`` completions per row from the model at ``path`` (prompts rendered like evaluation)."""
    from agent_align.generation import generate_ids
    from agent_align.hardware import resolve_precision
    from agent_align.stages.sft import policy
    from agent_align.steps.nat import with_positive_tag
    from agent_align.train.encode import chat_of, system_prompt

    model, tok, enc = policy(cfg, ctx, path, for_training=False)
    system = system_prompt(cfg)
    ids = [enc.prompt_ids(chat_of(r, system)) for r in with_positive_tag(rows, cfg)]
    batch = max(1, (cfg.evaluate.batch_size or cfg.hardware.eval_batch_size) // k)
    out = generate_ids(model, tok, ids, max_new_tokens=cfg.sample.max_new_tokens if do_sample else
                       cfg.reward_eval.max_new_tokens, batch_size=batch, do_sample=do_sample,
                       temperature=cfg.sample.temperature, top_p=cfg.sample.top_p, num_return_sequences=k,
                       bf16=resolve_precision(cfg.hardware) == "bf16", desc=desc, seed=cfg.seed)
    return [[tok.decode(s, skip_special_tokens=True) for s in seqs] for seqs in out]


def run(cfg, ctx: RunContext) -> dict:
    from agent_align.train.encode import unique_prompts

    sc = cfg.sample
    src = sc.prompts or cfg.data.train_path or str(ctx.path("data", "train.jsonl"))
    rows = unique_prompts(read_jsonl(src, "sample.prompts", required=("prompt", "chosen")))
    rows = random.Random(f"{cfg.seed}-sample").sample(rows, min(sc.n_prompts, len(rows)))
    path = model_path(ctx, sc.model_path, "sft")
    texts = draw(cfg, ctx, path, rows, k=sc.k, do_sample=True, desc=f"sampling {sc.k} per prompt")
    scorer = build_scorer(cfg.scorer, cfg)
    gold = [{**r} for r in rows]
    score_rows(gold, scorer, cfg.steps.format, sides=("chosen",), default=cfg.data.format)
    items = [{**g, "chosen": t} for g, ts in zip(gold, texts) for t in ts]  # score each sample as a "chosen"
    scores = [s["chosen_scores"] for s in score_rows([dict(i) for i in items], scorer, cfg.steps.format,
                                                      sides=("chosen",), default=cfg.data.format)]
    samples, pairs, nat = [], [], []
    threshold = cfg.steps.threshold
    for i, (row, ts) in enumerate(zip(gold, texts)):
        ss = scores[i * sc.k:(i + 1) * sc.k]
        samples.append({"id": row.get("id"), "prompt": row["prompt"], "samples": [
            {"text": t, "scores": s, "mean": round(mean_score(s), 4)} for t, s in zip(ts, ss)]})
        for j, (t, s) in enumerate(zip(ts, ss)):
            nat.append({"id": f"{row.get('id')}-s{j}", "prompt": row["prompt"], "tools": row.get("tools"),
                        "completion": t, "success": all_correct(s, threshold)})
        pair = best_worst_pair(row, ts, ss, threshold=threshold, min_margin=sc.min_margin,
                               use_gold=sc.use_gold_when_all_fail)
        if pair is not None:
            pair["id"] = f"{row.get('id')}-bw"
            pairs.append(pair)
    flat = scores
    summary = {"prompts": len(rows), "samples": len(flat), "model": path or "model.*",
               "mean_step_score": sum(map(mean_score, flat)) / len(flat) if flat else 0.0,
               "all_correct_rate": sum(all_correct(s, threshold) for s in flat) / len(flat) if flat else 0.0,
               "pairs": len(pairs), "pairs_with_gold_chosen": sum(p["chosen_source"] == "gold" for p in pairs),
               "format": completion_format(texts[0][0], cfg.steps.format, cfg.data.format) if texts else None}
    if ctx.is_main:
        write_jsonl(ctx.path("samples.jsonl"), samples)
        write_jsonl(ctx.path("sampled_pairs.jsonl"), pairs)
        write_jsonl(ctx.path("nat_samples.jsonl"), nat)
        write_json(ctx.path("sample.json"), summary)
    log.info("sampled %d x %d: mean step score %.3f, all-correct %.3f, %d pairs (%d with the gold answer as chosen)",
             len(rows), sc.k, summary["mean_step_score"], summary["all_correct_rate"], len(pairs),
             summary["pairs_with_gold_chosen"])
    return summary
