"""stage=dpo: preference optimisation of the SFT model (TRL DPOTrainer; loss=dpo|ipo|rpo|stepwise|step_dpo).

    python -m agent_align stage=dpo dpo.policy_from=runs/x/checkpoints/sft loss=ipo loss.beta=0.05

Rejected samples come from ``data.negatives_source``: ``synthetic`` (the generator's hard negatives),
``on_policy`` (the policy's own failing samples, paired with the correct call) or ``mixed``; with
``dpo.rounds`` > 1, sampling and training alternate. Reference log-probs are computed once per
round before training (no reference model held) and cached with the round's dataset on disk.

Rows whose ``chosen``/``rejected`` are lists of messages (agent trajectories and step pairs,
agent_align.env.preferences) train only on their assistant turns: tool observations and turns marked
``"train": false`` are masked out of the policy's and the reference's log-probs (agent_align.train.dpo).
On trajectory pairs, ``loss=stepwise`` weights each turn by the environment's per-turn scores and
``loss=step_dpo`` cuts each failure at its first wrong turn (docs/step_level.md, "On agent trajectories").
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections import Counter
from pathlib import Path

from agent_align.env.masking import MASKED_LOSSES, STEP_LOSSES
from agent_align.errors import UserError, config_error, file_error
from agent_align.jsonl import atomic_dir, read_jsonl, write_jsonl
from agent_align.stages.context import RunContext, checkpoint_files, finished, mark_finished
from agent_align.stages.generate import data_paths
from agent_align.train.batching import with_length_buckets
from agent_align.train.common import (fresh_for_trainer, log_history_rows, resume_point, save_final, step_progress,
                                      trainer_kwargs, wrap_peft)
from agent_align.train.dpo import TRAINERS, decision_masks, masked_preference_dataset
from agent_align.train.encode import chat_of, system_prompt
from agent_align.train.fast import dpo_fast_hooks, set_bf16_lm_head_grads, with_bf16_reference
from agent_align.train.ref_pass import with_ref_pass
from agent_align.train.shared_prompt import with_shared_prompt

log = logging.getLogger(__name__)


def check_pair_rows(cfg, rows: list[dict], path) -> None:
    """Rows are either all single-turn (string completions, with a ``schema``) or all agent pairs (message
    lists, trained through the masked path); the latter fix the loss family and the negatives' source."""
    conv = isinstance(rows[0]["chosen"], list)
    for r in rows:
        if isinstance(r["chosen"], list) != conv or isinstance(r["rejected"], list) != conv:
            raise file_error(path, r["_line"], "mixes message-list and string completions",
                             "one kind of preference row per file")
        if not conv and "schema" not in r:
            raise file_error(path, r["_line"], "missing key(s) ['schema']",
                             "every row needs ['prompt', 'chosen', 'rejected', 'schema']")
    if conv and cfg.loss.name not in MASKED_LOSSES + STEP_LOSSES:
        raise config_error("loss.name", cfg.loss.name, f"{path} holds multi-message completions (agent pairs); "
                           f"they train with loss={'|'.join(MASKED_LOSSES + STEP_LOSSES)}")
    if conv and cfg.loss.name in STEP_LOSSES:
        check_step_loss_rows(cfg, rows, path)
    if conv and cfg.data.negatives_source != "synthetic":
        raise config_error("data.negatives_source", cfg.data.negatives_source, f"{path} holds agent pairs, whose "
                           "rejected side is in the file; set data.negatives_source=synthetic")
    if conv and cfg.data.negatives == "nat":
        raise config_error("data.negatives", "nat", "negative-aware tags apply to single-turn prompts, not agent pairs; "
                           "use data.negatives=standard")


def _assistant_turns(completion: list[dict]) -> int:
    return sum(m["role"] == "assistant" for m in completion)


def check_step_loss_rows(cfg, rows: list[dict], path) -> None:
    """Agent pairs under loss=stepwise|step_dpo: some pair must have several turns on a side (with one turn
    per side both losses are plain DPO), and every pair needs the per-turn scores stage=agent writes."""
    name = cfg.loss.name
    if all(_assistant_turns(r["chosen"]) <= 1 and _assistant_turns(r["rejected"]) <= 1 for r in rows):
        raise config_error("loss.name", name, f"every pair in {path} has one assistant turn per side (informed step "
                           f"pairs), where loss={name} is plain DPO: use loss=dpo|ipo|rpo, or trajectory pairs "
                           "(agent.preference_granularity=trajectory)")
    for r in rows:
        if r.get("chosen_scores") is None or r.get("rejected_scores") is None:
            raise file_error(path, r["_line"], f"an agent pair without chosen_scores/rejected_scores, which "
                             f"loss={name} reads", "stage=agent writes them on trajectory pairs: rebuild the pairs with it")
    if name == "step_dpo" and cfg.steps.step_dpo_chosen != "step":
        raise config_error("steps.step_dpo_chosen", cfg.steps.step_dpo_chosen, "on agent trajectories the chosen is "
                           "one turn at the rejected one's state: use steps.step_dpo_chosen=step")


def build_pairs(cfg, ctx, model, tok, enc, rows: list[dict], round_idx: int) -> tuple[list[dict], dict]:
    src = cfg.data.negatives_source
    pairs, stats = [], {}
    if src in ("on_policy", "mixed"):
        from agent_align.train.on_policy import sample_negatives

        pairs, stats = sample_negatives(cfg, model, tok, enc, rows, round_idx)
    if src in ("synthetic", "mixed"):
        synthetic = list(rows)
        if src == "mixed" and pairs:  # as many synthetic as on-policy pairs, so neither drowns the other
            if cfg.dpo.max_pairs:  # half the cap each (the cut below would otherwise keep on-policy pairs only)
                pairs = pairs[: (cfg.dpo.max_pairs + 1) // 2]
            synthetic = random.Random(f"{cfg.seed}-mix-{round_idx}").sample(synthetic, min(len(pairs), len(synthetic)))
        pairs = pairs + [dict(r, source="synthetic") for r in synthetic]
    if cfg.loss.name == "step_dpo":
        from agent_align.steps.pairs import build_step_dpo_pairs

        if src in ("on_policy", "mixed") and cfg.sample.step_dpo_continuations > 0:
            # Step-DPO's chosen step from the policy itself, given the correct prefix (agent_align.steps.continuations)
            from agent_align.steps.continuations import sample_continuations
            from agent_align.steps.scorers import build_scorer
            from agent_align.steps.scoring import score_rows

            scorer = build_scorer(cfg.scorer, cfg)
            score_rows(pairs, scorer, cfg.steps.format, default=cfg.data.format)
            stats["step_dpo_continuations"] = sample_continuations(
                cfg, model, tok, enc, pairs, scorer, cfg.sample.step_dpo_continuations, seed=cfg.seed + round_idx)
        counts = Counter()
        pairs = build_step_dpo_pairs(pairs, cfg, stats=counts)
        stats["step_dpo"] = dict(sorted(counts.items()))  # pairs, chosen_<source>, skipped_<why>
    if cfg.dpo.max_pairs:
        pairs = pairs[: cfg.dpo.max_pairs]
    stats["pairs_total"] = len(pairs)
    return pairs, stats


def to_dataset(cfg, ctx, enc, pairs: list[dict], round_idx: int, write: bool = True):
    """Tokenised pairs, saved to disk so TRL's reference log-prob cache (keyed by the dataset's
    fingerprint and the model's hash, written beside the dataset) survives a resume and is shared
    by every rank. ``write=False`` (the other ranks, after rank 0 wrote it) only loads it."""
    from datasets import Dataset, load_from_disk

    path = ctx.path("cache", f"dpo_dataset_r{round_idx}")
    if not write:
        return load_from_disk(str(path))
    key = hashlib.sha256(json.dumps([cfg.loss.name, cfg.model.max_length, cfg.model.max_prompt_length,
                                     cfg.dpo.decision_tokens, cfg.dpo.decision_sides, pairs],
                                    sort_keys=True, default=str).encode()).hexdigest()
    key_file = path / "pairs.sha256"  # the cache holds exactly these pairs, tokenised for this loss and length
    if cfg.resume == "auto" and (path / "dataset_info.json").exists() and key_file.exists() \
            and key_file.read_text() == key:
        return load_from_disk(str(path))
    system = system_prompt(cfg)
    if cfg.loss.name == "stepwise":
        from agent_align.steps.trainer import prepare_stepwise_dataset

        ds = prepare_stepwise_dataset(pairs, enc.tok, system=system, max_length=cfg.model.max_length, cfg=cfg,
                                      fmt="trajectory" if isinstance(pairs[0]["chosen"], list) else None)
    elif cfg.loss.name == "step_dpo":  # the correct prefix ends the prompt
        from agent_align.steps.pairs import step_dpo_example

        ds = Dataset.from_list([step_dpo_example(enc, chat_of(p, system), p) for p in pairs])
    elif isinstance(pairs[0]["chosen"], list):  # agent pairs: observations and train:false turns masked
        ds = masked_preference_dataset(pairs, enc.tok, cfg.model.max_length, cfg.model.max_prompt_length,
                                       decision_tokens=cfg.dpo.decision_tokens, decision_sides=cfg.dpo.decision_sides)
    else:
        examples = [enc.dpo_example(chat_of(p, system), p["chosen"], p["rejected"]) for p in pairs]
        if cfg.dpo.decision_tokens:  # train where the two calls part, not the JSON after it (train/dpo.py)
            examples = [decision_masks(dict(ex, chosen_mask=[1] * len(ex["chosen_ids"]),
                                            rejected_mask=[1] * len(ex["rejected_ids"])),
                                       cfg.dpo.decision_tokens, cfg.dpo.decision_sides)
                        for ex in examples]
        ds = Dataset.from_list(examples)
    with atomic_dir(path) as tmp:  # a killed run leaves the old cache or none, never half of one
        ds.save_to_disk(str(tmp))
        (tmp / key_file.name).write_text(key)
    return load_from_disk(str(path))


def dpo_args(cfg, ctx: RunContext, round_idx: int):
    """TRL's DPOConfig for one round (creating it sets up the process group under torchrun)."""
    from trl import DPOConfig

    out = ctx.path("checkpoints", f"dpo-trainer-r{round_idx}")
    hw = cfg.hardware
    kw = trainer_kwargs(cfg, cfg.dpo, out, hw.dpo_batch_size, hw.dpo_grad_accum, f"{cfg.experiment_name}-dpo-r{round_idx}")
    if hw.dpo_gradient_checkpointing is not None:
        kw["gradient_checkpointing"] = hw.dpo_gradient_checkpointing
    return DPOConfig(**kw,
                     beta=cfg.loss.beta, loss_type=list(cfg.loss.loss_type),
                     loss_weights=list(cfg.loss.loss_weights) if cfg.loss.loss_weights else None,
                     label_smoothing=cfg.loss.label_smoothing,
                     precompute_ref_log_probs=cfg.dpo.precompute_ref_log_probs,
                     precompute_ref_batch_size=hw.eval_batch_size)


def train_round(cfg, ctx: RunContext, model, tok, dataset, round_idx: int, args=None):
    trainer_cls = TRAINERS.get(cfg.loss.name)
    hw = cfg.hardware
    if hw.shared_prompt_dpo:  # each pair's prompt through the model once (agent_align.train.shared_prompt)
        trainer_cls = with_shared_prompt(trainer_cls)
    if hw.bf16_reference:  # the precomputed reference pass on a bf16 copy where bf16 runs on CPU (train/fast.py)
        trainer_cls = with_bf16_reference(trainer_cls)
    if cfg.dpo.group_by_length:  # batches of similar length in random order (agent_align.train.batching)
        trainer_cls = with_length_buckets(trainer_cls)
    trainer_cls = with_ref_pass(trainer_cls)  # the reference pass in length order, its progress in the log
    args = args or dpo_args(cfg, ctx, round_idx)
    out = Path(args.output_dir)
    model = fresh_for_trainer(model)  # an earlier trainer's wrappers would leave training without autocast
    hooks = []
    if hw.dpo_fast_path:  # before the trainer: TRL runs the reference pass while it is built
        set_bf16_lm_head_grads(True)
        hooks = dpo_fast_hooks(model)
    desc = f"dpo round {round_idx + 1}/{cfg.dpo.rounds}" if cfg.dpo.rounds > 1 else "dpo"
    try:
        trainer = trainer_cls(model=model, args=args, train_dataset=dataset, processing_class=tok,
                              callbacks=[step_progress(desc)])
        trainer.train(resume_from_checkpoint=resume_point(cfg, out))
    finally:  # the next stage (sampling, evaluation) gets the model as transformers built it
        for hook in hooks:
            hook.remove()
    return trainer


def run(cfg, ctx: RunContext) -> dict:
    done = finished(cfg, ctx, "dpo")
    if done:
        return done
    from agent_align.stages.sft import keep_in_memory, policy

    marker = ctx.path("stages", "sft.json")
    sft_ckpt = json.loads(marker.read_text())["checkpoint"] if marker.exists() else str(ctx.path("checkpoints", "sft"))
    start = cfg.dpo.policy_from or sft_ckpt
    if not Path(start).exists() and not cfg.sft.skip:
        raise UserError(f"no SFT checkpoint at {start}: run stage=sft first or set dpo.policy_from=DIR")
    train_path, _ = data_paths(cfg, ctx)
    rows = read_jsonl(train_path, "data.train_path", required=("prompt", "chosen", "rejected"))
    check_pair_rows(cfg, rows, train_path)
    if cfg.data.negatives == "nat":  # a NAT-trained policy is always prompted with the positive tag
        from agent_align.steps.nat import with_positive_tag

        rows = with_positive_tag(rows, cfg)
    model, tok, enc = policy(cfg, ctx, start)
    model = wrap_peft(cfg, model, new_adapter=cfg.peft.new_adapter_for_dpo)
    history, rounds = [], []
    for r in range(cfg.dpo.rounds):
        pairs, stats = build_pairs(cfg, ctx, model, tok, enc, rows, r)
        if ctx.is_main:
            write_jsonl(ctx.path("data", f"dpo_pairs_r{r}.jsonl"), pairs)
        if not pairs:
            log.warning("round %d: no preference pairs (the policy passed every sample); stopping", r)
            rounds.append(stats)
            break
        args = dpo_args(cfg, ctx, r)
        # one writer: rank 0 tokenises and saves the pairs, then the other ranks load the same files
        # (two ranks replacing one directory at once crashed a DDP run)
        with args.main_process_first(local=False, desc="the DPO dataset"):
            dataset = to_dataset(cfg, ctx, enc, pairs, r, write=ctx.is_main)
        trainer = train_round(cfg, ctx, model, tok, dataset, r, args=args)
        model = trainer.model
        if r + 1 < cfg.dpo.rounds and cfg.hardware.distributed.backend in ("deepspeed", "fsdp"):
            round_dir = ctx.path("checkpoints", f"dpo-r{r}")  # sharded engines: continue from a clean reload
            save_final(trainer, tok, round_dir, cfg, {"stage": "dpo", "round": r})
            model, tok, enc = policy(cfg, ctx, str(round_dir))
        history.extend(dict(h, round=r) for h in log_history_rows(trainer))
        rounds.append(stats)
    dest = ctx.path("checkpoints", "dpo")
    if history:
        save_final(trainer, tok, dest, cfg, {"stage": "dpo", "loss": cfg.loss.name, "rounds": rounds})
    else:  # nothing to learn: the aligned model is the SFT model
        model.save_pretrained(str(dest))
        tok.save_pretrained(str(dest))
    if ctx.is_main:
        write_jsonl(ctx.path("metrics", "dpo.jsonl"), history)
    keep_in_memory(cfg, ctx, model, tok, str(dest))
    margins = [h["rewards/margins"] for h in history if "rewards/margins" in h]
    result = {"checkpoint": str(dest), "rounds": rounds, "loss": cfg.loss.name,
              "final_reward_margin": margins[-1] if margins else None,
              "final_loss": next((h["loss"] for h in reversed(history) if "loss" in h), None)}
    mark_finished(ctx, "dpo", result, outputs=checkpoint_files(dest))
    return result
