"""The checks that run on a composed config before any heavy work: enums, ranges, and cross-field
rules, in one place, with messages that quote the values and say what to change.

    from agent_align.checks import check_config
    check_config(cfg)   # raises UserError naming the key, the value and the fix
"""

from __future__ import annotations

from typing import Any

from agent_align.env.config import check_agent_config
from agent_align.env.masking import STEP_LOSSES
from agent_align.errors import config_error
from agent_align.steps.config import check_steps_config

CHOICES = {
    "data.format": ("json", "react"),
    "data.name": ("synthetic", "bfcl"),
    "data.negatives_source": ("synthetic", "on_policy", "mixed"),
    "data.negatives": ("standard", "nat"),
    "data.rename_style": ("synonym", "pseudo"),
    "model.chat_template": ("builtin", "chatml", "tokenizer"),
    "model.tool_format": ("compact", "call", "json"),
    "model.pretokenizer": ("words", "bytelevel"),
    "peft.name": ("none", "lora", "qlora"),
    "hardware.device": ("cpu", "cuda"),
    "hardware.precision": ("auto", "bf16", "fp16", "fp32"),
    "hardware.attn_implementation": ("sdpa", "eager", "flash_attention_2"),
    "hardware.distributed.backend": ("none", "ddp", "deepspeed", "fsdp"),
    "logger.name": ("none", "wandb"),
    "logger.mode": ("auto", "online", "offline"),
    "resume": ("auto", "never"),
    "dpo.decision_sides": ("both", "rejected"),
}
MAX_ROWS = 1_000_000  # generated rows per split: ~1 GB of JSONL; more is almost surely a typo
# key -> (lowest, highest) allowed, None = unbounded; checked before any heavy work
RANGES = {
    "seed": (0, 2**32 - 1),  # numpy seeds are uint32
    "data.n_train": (1, MAX_ROWS),
    "data.n_eval": (1, MAX_ROWS),
    "data.procedural_tools": (0, 100_000),
    "data.optional_arg_p": (0.0, 1.0),
    "model.max_length": (8, None),
    "model.max_prompt_length": (1, None),
    "evaluate.batch_size": (0, None),  # 0 -> hardware.eval_batch_size
    "evaluate.max_new_tokens": (1, None),
    "evaluate.limit": (0, None),
    "evaluate.bfcl_limit": (0, None),  # 0 -> every question
    "evaluate.bfcl_max_new_tokens": (1, None),
    "evaluate.bfcl_max_prompt_length": (1, None),
    "hardware.torch_threads": (0, None),
    "sft.save_steps": (1, None),
    "sft.logging_steps": (1, None),
    "sft.warmup_steps": (0, None),
    "dpo.save_steps": (1, None),
    "dpo.logging_steps": (1, None),
    "dpo.warmup_steps": (0, None),
    "dpo.rounds": (1, None),
    "dpo.samples_per_prompt": (1, None),
    "dpo.sample_prompts": (0, None),
    "dpo.max_pairs": (0, None),
    "dpo.decision_tokens": (0, None),
    "dpo.top_p": (0.0, 1.0),
    "peft.r": (1, None),
    "peft.dropout": (0.0, 1.0),
}
POSITIVE = ("sft.lr", "dpo.lr", "sft.epochs", "dpo.epochs", "loss.beta", "dpo.temperature")  # must be > 0


def check_ranges(cfg: Any) -> None:
    for key, (lo, hi) in RANGES.items():
        value = _get(cfg, key)
        if lo is not None and value < lo or hi is not None and value > hi:
            bound = f"must be >= {lo}" if hi is None else f"must be between {lo} and {hi}"
            if key in ("data.n_train", "data.n_eval") and value > hi:
                bound += "; for more rows run stage=generate with several seeds and concatenate the files"
            raise config_error(key, value, bound)
    for key in POSITIVE:
        if not _get(cfg, key) > 0:
            raise config_error(key, _get(cfg, key), "must be > 0")
    if cfg.model.max_prompt_length >= cfg.model.max_length:
        raise config_error("model.max_prompt_length", cfg.model.max_prompt_length,
                           f"must be below model.max_length={cfg.model.max_length} (room for the completion)")
    if cfg.score.format is not None and cfg.score.format not in CHOICES["data.format"]:
        raise config_error("score.format", cfg.score.format, f"valid values: {', '.join(CHOICES['data.format'])} "
                                                             "(or null for data.format)")


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def check_config(cfg: Any) -> None:
    """Cross-field checks, in one place, before any heavy work. Messages quote the values."""
    from agent_align.cli_errors import check_known_keys

    check_known_keys(cfg)  # `+data.formt=json` adds a key Hydra's struct mode would have refused
    check_steps_config(cfg)
    check_agent_config(cfg)
    for key, valid in CHOICES.items():
        value = _get(cfg, key)
        if value not in valid:
            raise config_error(key, value, f"valid values: {', '.join(valid)}")
    check_ranges(cfg)
    if cfg.loss.name in STEP_LOSSES and cfg.dpo.decision_tokens:
        raise config_error("dpo.decision_tokens", cfg.dpo.decision_tokens, f"loss={cfg.loss.name} weighs whole turns "
                           "by their step scores; the decision mask is for loss=dpo|ipo|rpo: set it to 0")
    hw = cfg.hardware
    if hw.name == "t4" and hw.precision == "bf16":
        raise config_error("hardware.precision", "bf16", "the T4 has no bf16; use hardware.precision=fp16 or fp32")
    if hw.device == "cpu" and hw.precision == "fp16":
        raise config_error("hardware.precision", "fp16", "fp16 training is not supported on CPU; use bf16 or fp32")
    if hw.device == "cpu" and hw.attn_implementation == "flash_attention_2":
        raise config_error("hardware.attn_implementation", "flash_attention_2",
                           "flash attention needs a CUDA GPU; use sdpa on CPU")
    if hw.device == "cpu" and hw.liger_kernels:
        raise config_error("hardware.liger_kernels", True, "Liger kernels are Triton/GPU-only; set it to false on CPU")
    ds = hw.distributed
    if cfg.peft.name == "qlora" and ds.backend == "deepspeed" and ds.deepspeed_config and "zero3" in ds.deepspeed_config:
        raise config_error("peft.name", "qlora", "QLoRA cannot shard 4-bit weights with ZeRO-3; use ZeRO-2 or peft=lora")
    if ds.backend == "deepspeed" and not ds.deepspeed_config:
        raise config_error("hardware.distributed.deepspeed_config", None, "set a DeepSpeed JSON, e.g. conf/deepspeed/zero2.json")
    for key in ("sft_batch_size", "dpo_batch_size", "eval_batch_size", "sft_grad_accum", "dpo_grad_accum"):
        if getattr(hw, key) < 1:
            raise config_error(f"hardware.{key}", getattr(hw, key), "must be >= 1")
    if cfg.loss.loss_weights is not None and len(cfg.loss.loss_weights) != len(cfg.loss.loss_type):
        raise config_error("loss.loss_weights", list(cfg.loss.loss_weights),
                           f"needs one weight per loss.loss_type {list(cfg.loss.loss_type)}")
    if cfg.data.negatives_per_prompt < 1:
        raise config_error("data.negatives_per_prompt", cfg.data.negatives_per_prompt, "must be >= 1")
    if cfg.data.distractor_tools < 0:
        raise config_error("data.distractor_tools", cfg.data.distractor_tools, "must be >= 0")
    for key in ("procedural_fraction", "rename_fraction", "parallel_fraction", "parallel_eval_share"):
        if not 0.0 <= cfg.data[key] <= 1.0:
            raise config_error(f"data.{key}", cfg.data[key], "must be within [0, 1]")
    from agent_align.data.negatives import NEGATIVES

    for name, w in cfg.data.negative_weights.items():
        if name not in NEGATIVES:
            raise config_error(f"data.negative_weights.{name}", w, f"unknown negative type; valid: {', '.join(NEGATIVES)}")
        if w < 0:
            raise config_error(f"data.negative_weights.{name}", w, "weights must be >= 0")
    if not any(w > 0 for w in cfg.data.negative_weights.values()):
        raise config_error("data.negative_weights", dict(cfg.data.negative_weights), "at least one weight must be > 0")
    if cfg.model.gguf_package and not cfg.model.gguf_file:
        raise config_error("model.gguf_file", None, f"name the .gguf file inside package {cfg.model.gguf_package}")
    local = cfg.model.path is None and cfg.model.hub_id is None and not cfg.model.gguf_path and not cfg.model.gguf_package
    if local and cfg.model.chat_template != "builtin":
        raise config_error("model.chat_template", cfg.model.chat_template,
                           "a model built locally has no tokenizer template; use model.chat_template=builtin")
