"""What SFT and DPO share: trainer arguments from our config, PEFT wrapping, checkpoints, resume."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

from agent_align.hardware import resolve_precision
from agent_align.jsonl import atomic_dir

log = logging.getLogger(__name__)


def trainer_kwargs(cfg, stage_cfg, out_dir: Path, batch: int, accum: int, run_name: str) -> dict:
    """Keyword arguments shared by SFTConfig and DPOConfig (validated by TRL itself)."""
    from agent_align.train.fast import set_bf16_lm_head_grads, set_compact_lm_head

    hw = cfg.hardware
    set_compact_lm_head(hw.compact_lm_head)
    set_bf16_lm_head_grads(False)  # TRL's fp32 GEMMs unless a stage turns them on (stages/sft.py build_trainer)
    prec = resolve_precision(hw)
    ds = hw.distributed
    kw = dict(
        output_dir=str(out_dir), run_name=run_name, seed=cfg.seed, data_seed=cfg.seed,
        per_device_train_batch_size=batch, gradient_accumulation_steps=accum,
        learning_rate=stage_cfg.lr, num_train_epochs=stage_cfg.epochs, max_steps=stage_cfg.max_steps,
        warmup_steps=stage_cfg.warmup_steps, lr_scheduler_type=stage_cfg.lr_scheduler,
        logging_steps=stage_cfg.logging_steps, logging_first_step=True,
        save_strategy="steps", save_steps=stage_cfg.save_steps, save_total_limit=2,
        bf16=prec == "bf16", fp16=prec == "fp16", use_cpu=hw.device == "cpu",
        gradient_checkpointing=hw.gradient_checkpointing,
        report_to=["wandb"] if cfg.logger.name == "wandb" else [],
        dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=False,
        max_length=cfg.model.max_length,
        # bf16 on CPU (oneDNN) builds a kernel per new tensor shape: padding lengths to a multiple of
        # 32 keeps the set of shapes small (measured here: 2.4 s -> 0.64 s per step on the tiny model)
        pad_to_multiple_of=32,
    )
    if ds.backend == "deepspeed":
        from agent_align.distributed import deepspeed_config_path

        kw["deepspeed"] = deepspeed_config_path(ds.deepspeed_config)
    if ds.backend in ("ddp", "deepspeed") and hw.device == "cpu":
        kw["ddp_backend"] = "gloo"
    if hw.liger_kernels:
        from agent_align.hardware import liger_available

        if liger_available():
            kw["use_liger_kernel"] = True
        else:
            log.warning("hardware.liger_kernels=true but liger-kernel is not installed (pip install "
                        "'agent_align[gpu]'); training without it")
    return kw


_MIXED: dict[tuple[type, type], type] = {}


def mixed_in(mixin: type, trainer_cls: type, prefix: str) -> type:
    """``trainer_cls`` with ``mixin`` in front, one class per pair (so pickling and ``isinstance`` behave)."""
    key = (mixin, trainer_cls)
    if key not in _MIXED:
        _MIXED[key] = type(f"{prefix}{trainer_cls.__name__}", (mixin, trainer_cls),
                           {"__module__": mixin.__module__, "__doc__": trainer_cls.__doc__})
    return _MIXED[key]


def fresh_for_trainer(model):
    """``model`` as a new trainer must get it, after an earlier trainer trained it in this process (the pipeline hands
    the SFT model to DPO in memory; DPO rounds and the agentic loop's rounds hand theirs on). accelerate's ``prepare``
    wraps ``model.forward`` in autocast once and marks the model prepared; TRL's next trainer then puts its fused-head
    forward in front of that wrapper and accelerate, seeing the mark, does not wrap again, so every training forward
    after the first trainer ran without autocast: fp32 on a bf16 machine (measured: a second DPO round at 36 s a step
    where the first took 16). Dropping the instance's forward overrides and the mark gives the class's forward back;
    each trainer adds its own wrappers. Returns ``model``."""
    from peft import PeftModel

    modules = [model, model.get_base_model()] if isinstance(model, PeftModel) else [model]
    for m in modules:
        for attr in ("forward", "_original_forward", "_is_accelerate_prepared"):
            m.__dict__.pop(attr, None)
    return model


def step_progress(desc: str):
    """A TrainerCallback that logs the trainer's optimizer steps through ``Progress`` on the main process, with the
    latest logged loss: TRL's own bar draws only on a terminal, so a log file or a SLURM job's output showed nothing
    for the 10-30 minutes of a training stage. A resumed run counts from the checkpoint's step."""
    from transformers import TrainerCallback

    from agent_align.progress import Progress

    class StepProgress(TrainerCallback):
        def __init__(self):
            self.bar, self.note = None, ""

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.bar = Progress(state.max_steps, desc, unit="step", initial=state.global_step, bar=False)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.note = f"loss {logs['loss']:.4g}"

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.done, self.note)

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()

    return StepProgress()


def last_checkpoint(out_dir: Path) -> str | None:
    """Newest complete ``checkpoint-N`` (one with trainer_state.json) in ``out_dir``."""
    if not out_dir.is_dir():
        return None
    ckpts = []
    for p in out_dir.iterdir():
        m = re.fullmatch(r"checkpoint-(\d+)", p.name)
        if m and (p / "trainer_state.json").exists():
            ckpts.append((int(m.group(1)), p))
    return str(max(ckpts)[1]) if ckpts else None


def resume_point(cfg, out_dir: Path) -> str | None:
    if cfg.resume != "auto":
        shutil.rmtree(out_dir, ignore_errors=True)  # every rank gets here: the one that comes second finds less
        return None
    ckpt = last_checkpoint(out_dir)
    if ckpt:
        log.info("resuming from %s", ckpt)
    return ckpt


def peft_config(cfg):
    if cfg.peft.name == "none":
        return None
    from peft import LoraConfig

    targets = list(cfg.peft.target_modules or cfg.model.lora_target_modules)
    return LoraConfig(r=cfg.peft.r, lora_alpha=cfg.peft.alpha, lora_dropout=cfg.peft.dropout,
                      target_modules=targets, task_type="CAUSAL_LM")


def wrap_peft(cfg, model, new_adapter: bool = True):
    """Adds a LoRA adapter (QLoRA: after preparing the 4-bit base) unless the model already has one
    that should keep training."""
    from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training

    pc = peft_config(cfg)
    if pc is None:
        return model
    if isinstance(model, PeftModel) and not new_adapter:
        return model
    if isinstance(model, PeftModel):  # new adapter for DPO on top of the merged SFT adapter
        model = model.merge_and_unload()
    if cfg.peft.name == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.hardware.gradient_checkpointing)
    return get_peft_model(model, pc)


def save_final(trainer, tokenizer, dest: Path, cfg, extra: dict | None = None) -> None:
    """Save the trained model where plain transformers (or PEFT, for adapters) loads it; written to
    a temp dir and renamed so a kill never leaves a half-saved checkpoint."""
    if not trainer.is_world_process_zero():
        trainer.save_model(str(dest.parent / f".{dest.name}.rank"))  # collective under ZeRO-3; rank 0 writes
        trainer.accelerator.wait_for_everyone()  # the next stage may load `dest` on every rank
        return
    with atomic_dir(dest) as tmp:
        trainer.save_model(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / "agent_align_stage.json").write_text(json.dumps(extra or {}, indent=2, default=str))
    if cfg.peft.name != "none" and cfg.peft.export_merged:
        export_merged(dest, cfg)
    trainer.accelerator.wait_for_everyone()


def export_merged(adapter_dir: Path, cfg) -> Path:
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    out = adapter_dir.parent / f"{adapter_dir.name}-merged"
    model = AutoPeftModelForCausalLM.from_pretrained(str(adapter_dir))
    merged = model.merge_and_unload()
    with atomic_dir(out) as tmp:
        merged.save_pretrained(str(tmp))
        AutoTokenizer.from_pretrained(str(adapter_dir)).save_pretrained(str(tmp))
    log.info("merged checkpoint exported to %s", out)
    return out


def log_history_rows(trainer) -> list[dict]:
    return [dict(r) for r in trainer.state.log_history]
