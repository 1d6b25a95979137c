"""stage=sft: supervised cold start on the chosen calls (TRL SFTTrainer, assistant tokens only).

    python -m agent_align stage=sft data.train_path=runs/x/data/train.jsonl sft.epochs=2

Writes checkpoints/sft (loadable with AutoModelForCausalLM, or PEFT for adapters), metrics/sft.jsonl.
Re-running after a kill resumes from the newest checkpoint in checkpoints/sft-trainer.
"""

from __future__ import annotations

import logging

from agent_align.errors import file_error
from agent_align.jsonl import read_jsonl, write_jsonl
from agent_align.stages.context import RunContext, checkpoint_files, finished, mark_finished
from agent_align.stages.generate import data_paths
from agent_align.train.common import (fresh_for_trainer, log_history_rows, resume_point, save_final, step_progress,
                                      trainer_kwargs, wrap_peft)
from agent_align.train.encode import Encoder, chat_of, system_prompt, unique_prompts

log = logging.getLogger(__name__)


def policy(cfg, ctx: RunContext, path: str | None = None, for_training: bool = True):
    """(model, tokenizer, encoder): reused from an earlier pipeline stage when it holds ``path``."""
    from agent_align.hardware import set_threads
    from agent_align.models import load_model_and_tokenizer

    held = ctx.cache.get("policy")
    if held and held[2] == path:
        return held[0], held[1], ctx.cache["encoder"]
    set_threads(cfg.hardware)
    model, tok = load_model_and_tokenizer(cfg, path=path, for_training=for_training)
    enc = ctx.cache.get("encoder")
    if enc is None or enc.tok.get_vocab() != tok.get_vocab():
        enc = Encoder(tok, cfg.model.max_length, cfg.model.max_prompt_length)
        ctx.cache["encoder"] = enc
    ctx.cache["policy"] = (model, tok, path)
    return model, tok, enc


def keep_in_memory(cfg, ctx: RunContext, model, tok, path: str) -> None:
    """Hand the trained model to the next pipeline stage without a reload, unless a sharding
    engine (DeepSpeed, FSDP) has hooked it: then the next stage reloads ``path``."""
    if cfg.hardware.distributed.backend in ("deepspeed", "fsdp"):
        ctx.cache.pop("policy", None)
    else:
        ctx.cache["policy"] = (model, tok, path)


def sft_examples(cfg, rows: list[dict], enc: Encoder) -> list[dict]:
    if "messages" in rows[0]:  # agent trajectories: tool observations (and, with mask_history, earlier turns) masked
        from agent_align.env.masking import encode_sft_row

        encoded = (encode_sft_row(r, enc.tok, cfg.sft.mask_history, cfg.model.max_length) for r in rows)
        return [{"input_ids": e["input_ids"], "labels": e["labels"]} for e in encoded]
    system = system_prompt(cfg)
    from agent_align.steps import mixture

    if cfg.data.negatives == "nat" or mixture.active(cfg):  # NAT tags and/or a positive/negative/synthetic mix
        return [enc.sft_example(chat_of(r, r.get("system", system)), r["completion"]) for r in mixture.sft_rows(rows, cfg)]
    return [enc.sft_example(chat_of(r, system), r["chosen"]) for r in unique_prompts(rows)]


def build_trainer(cfg, ctx: RunContext, model, tok, examples: list[dict]):
    """(SFTTrainer, its output dir) for tokenised ``examples``; benchmarks/run.py times this same path."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    dataset = Dataset.from_list(examples)
    out = ctx.path("checkpoints", "sft-trainer")
    hw = cfg.hardware
    args = SFTConfig(**trainer_kwargs(cfg, cfg.sft, out, hw.sft_batch_size, hw.sft_grad_accum, f"{cfg.experiment_name}-sft"),
                     weight_decay=cfg.sft.weight_decay, packing=cfg.sft.packing)
    trainer_cls = SFTTrainer
    if cfg.sft.group_by_length and not cfg.sft.packing:  # similar lengths a batch, in random order (train/batching.py)
        from agent_align.train.batching import with_length_buckets

        trainer_cls = with_length_buckets(SFTTrainer)
    trainer = trainer_cls(model=fresh_for_trainer(model), args=args, train_dataset=dataset, processing_class=tok,
                         callbacks=[step_progress("sft")])
    trainer.fast_hooks = []
    if hw.sft_fast_path:  # what the SFT profile found wasteful: benchmarks/README.md, *Where an SFT step's time goes*
        from agent_align.train.fast import set_bf16_lm_head_grads, sft_fast_hooks

        set_bf16_lm_head_grads(True)
        trainer.fast_hooks = sft_fast_hooks(trainer.model)
    return trainer, out


def run(cfg, ctx: RunContext) -> dict:
    done = finished(cfg, ctx, "sft")
    if done:
        return done
    if cfg.sft.skip:  # DPO starts from the base model itself
        from agent_align.models import resolve_model_path

        result = {"checkpoint": cfg.sft.init_from or resolve_model_path(cfg), "skipped": True}
        mark_finished(ctx, "sft", result)
        return result
    train_path, _ = data_paths(cfg, ctx)
    rows = read_jsonl(train_path, "data.train_path")
    need = ("messages",) if "messages" in rows[0] else ("prompt", "chosen")
    for r in rows:
        if any(k not in r for k in need):
            raise file_error(train_path, r["_line"], f"row lacks {[k for k in need if k not in r]}",
                             "SFT rows are triplets (prompt, chosen) or conversations (messages, tools)")
    model, tok, enc = policy(cfg, ctx, cfg.sft.init_from)
    model = wrap_peft(cfg, model)
    examples = sft_examples(cfg, rows, enc)
    trainer, out = build_trainer(cfg, ctx, model, tok, examples)
    trainer.train(resume_from_checkpoint=resume_point(cfg, out))
    for hook in trainer.fast_hooks:  # the next stage gets the model as transformers built it
        hook.remove()
    dest = ctx.path("checkpoints", "sft")
    save_final(trainer, tok, dest, cfg, {"stage": "sft", "examples": len(examples)})
    history = log_history_rows(trainer)
    if ctx.is_main:
        write_jsonl(ctx.path("metrics", "sft.jsonl"), history)
    keep_in_memory(cfg, ctx, trainer.model, tok, str(dest))
    n_tokens = sum(len(e["input_ids"]) for e in examples)
    result = {"checkpoint": str(dest), "examples": len(examples), "tokens_per_epoch": n_tokens,
              "steps": trainer.state.global_step, "final_loss": next((h["loss"] for h in reversed(history) if "loss" in h), None)}
    mark_finished(ctx, "sft", result, outputs=checkpoint_files(dest))
    return result
