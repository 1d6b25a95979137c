"""stage=sample: rejection sampling. K samples per prompt from the current model, each scored step
by step; the best and the worst sample of a prompt form a pair (seed 002).

    python -m agent_align stage=sample sample.k=8 sample.temperature=1.0 sample.top_p=0.95 sample.n_prompts=300
    python -m agent_align stage=dpo loss=stepwise data.negatives_source=synthetic data.train_path=runs/x/sampled_pairs.jsonl

Writes samples.jsonl (every sample with its step scores), sampled_pairs.jsonl (chosen/rejected with
chosen_scores/rejected_scores: ready for loss=stepwise and Step-DPO), nat_samples.jsonl (each
sample with ``success`` for data.negatives=nat) and sample.json.

``sample.step_dpo_continuations=N``: each pair's rejected sample is cut at its first wrong step and
N continuations of the correct prefix are sampled and scored (``agent_align.steps.continuations``);
the verified ones become the pair's ``continuations``, the on-policy chosen steps of loss=step_dpo.
sample.json's ``step_dpo`` counts where the Step-DPO pairs' chosen steps come from.
(``data.negatives_source=synthetic`` makes stage=dpo train on the file's pairs as they are; the
default ``on_policy`` would sample fresh negatives from its prompts instead.)
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from pathlib import Path

from agent_align.jsonl import read_jsonl, write_json, write_jsonl
from agent_align.stages.context import RunContext
from agent_align.steps.pairs import best_worst_pair, build_step_dpo_pairs
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


def step_dpo_counts(cfg, ctx: RunContext, path: str | None, pairs: list[dict], scorer) -> dict:
    """Sample on-policy continuations for the pairs (in place), then count where the Step-DPO
    pairs that loss=step_dpo will build from them take their chosen step."""
    from agent_align.stages.sft import policy
    from agent_align.steps.continuations import sample_continuations

    n = cfg.sample.step_dpo_continuations
    model, tok, enc = policy(cfg, ctx, path, for_training=False)  # the model draw() loaded, still cached
    counts = sample_continuations(cfg, model, tok, enc, pairs, scorer, n, seed=cfg.seed + 1,
                                  desc=f"sampling {n} continuations per first wrong step")
    stats = Counter()
    build_step_dpo_pairs(pairs, scorer, threshold=cfg.steps.threshold, fmt=cfg.steps.format,
                         chosen=cfg.steps.step_dpo_chosen, stats=stats, default=cfg.data.format)
    counts.update({"step_pairs": stats["pairs"],
                   "chosen_on_policy": stats["chosen_continuation"],
                   "chosen_gold": stats["chosen_gold"],  # fallbacks: the gold answer's step at the cut,
                   "chosen_best_sample": stats["chosen_sample"],  # or the pair's all-correct best sample's
                   "skipped_no_correct_step": stats["skipped_no_correct_step"]})
    return counts


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
    step_dpo = step_dpo_counts(cfg, ctx, path, pairs, scorer) if sc.step_dpo_continuations else None
    flat = scores
    summary = {"prompts": len(rows), "samples": len(flat), "model": path or "model.*",
               "mean_step_score": sum(map(mean_score, flat)) / len(flat) if flat else 0.0,
               "all_correct_rate": sum(all_correct(s, threshold) for s in flat) / len(flat) if flat else 0.0,
               "pairs": len(pairs), "pairs_with_gold_chosen": sum(p["chosen_source"] == "gold" for p in pairs),
               "format": completion_format(texts[0][0], cfg.steps.format, cfg.data.format) if texts else None}
    if step_dpo is not None:
        summary["step_dpo"] = step_dpo
    if ctx.is_main:
        write_jsonl(ctx.path("samples.jsonl"), samples)
        write_jsonl(ctx.path("sampled_pairs.jsonl"), pairs)
        write_jsonl(ctx.path("nat_samples.jsonl"), nat)
        write_json(ctx.path("sample.json"), summary)
    log.info("sampled %d x %d: mean step score %.3f, all-correct %.3f, %d pairs (%d with the gold answer as chosen)",
             len(rows), sc.k, summary["mean_step_score"], summary["all_correct_rate"], len(pairs),
             summary["pairs_with_gold_chosen"])
    if step_dpo is not None:
        log.info("step-dpo: %d pairs, chosen step on-policy in %d, gold in %d, best sample in %d, %d skipped; "
                 "train with: python -m agent_align stage=dpo loss=step_dpo data.negatives_source=synthetic "
                 "data.train_path=%s", step_dpo["step_pairs"], step_dpo["chosen_on_policy"], step_dpo["chosen_gold"],
                 step_dpo["chosen_best_sample"], step_dpo["skipped_no_correct_step"], ctx.path("sampled_pairs.jsonl"))
    return summary
