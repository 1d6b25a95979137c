"""The embedded default model, built locally and deterministically (no hub access).

A byte-level BPE tokenizer trained with `tokenizers` on rendered training conversations (requests,
tool signatures, calls), our compact chat template, and a small Llama-architecture causal LM
initialised from a config. Cached by a hash of everything that shapes it, so later runs reuse it.

    python -m agent_align stage=build_model model=tiny
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from agent_align.data.formats import SYSTEM_PROMPTS
from agent_align.jsonl import atomic_dir
from agent_align.models.templates import chat_template

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
CHAT_TEMPLATE = chat_template("builtin")
SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>", "<|tool|>"]
BUILDER_VERSION = "2"  # bump when the build recipe changes so stale caches are not reused


def cache_root() -> Path:
    return Path(os.environ.get("AGENT_ALIGN_CACHE", Path.home() / ".cache" / "agent_align"))


def _arch(model_cfg) -> dict:
    keys = ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size", "max_length",
            "tokenizer_corpus_rows", "pretokenizer", "copy_prior", "copy_warmup_steps", "init_seed")
    return {k: getattr(model_cfg, k) for k in keys}


def _corpus_key(data_cfg, seed: int) -> dict:
    keys = ("format", "tools_file", "include_builtin_tools", "procedural_tools", "procedural_fraction",
            "rename_fraction", "rename_style", "distractor_tools", "parallel_fraction", "system_prompt")
    return {"seed": seed, **{k: getattr(data_cfg, k) for k in keys}}


def model_hash(model_cfg, data_cfg, seed: int) -> str:
    blob = json.dumps({"v": BUILDER_VERSION, "arch": _arch(model_cfg), "corpus": _corpus_key(data_cfg, seed)},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def corpus_texts(data_cfg, seed: int, n_rows: int) -> list[str]:
    """Training conversations rendered as plain text, plus every tool signature, for BPE training."""
    from agent_align.data.generator import Generator
    from transformers.utils.chat_template_utils import _compile_jinja_template

    gen = Generator(data_cfg, seed)
    template = _compile_jinja_template(CHAT_TEMPLATE)
    system = data_cfg.system_prompt or SYSTEM_PROMPTS[data_cfg.format]
    texts = []
    for i in range(n_rows):
        for row in gen.make_rows("train", i)[:1]:
            msgs = [{"role": "system", "content": system}, {"role": "user", "content": row["prompt"]},
                    {"role": "assistant", "content": row["chosen"]}]
            texts.append(template.render(messages=msgs, tools=row["tools"], bos_token="", add_generation_prompt=False))
            texts.append(row["rejected"])
    for tool in gen.pools.all:  # every tool name and signature, held-out ones included, so none is out of vocabulary
        texts.append(template.render(messages=[{"role": "system", "content": ""}], tools=[tool.openai()],
                                     bos_token="", add_generation_prompt=False))
    return texts


# letter runs | one digit | runs of anything else (spaces, quotes, braces, underscores...)
WORDS_PATTERN = r"[A-Za-z]+|[0-9]|[^A-Za-z0-9]+"


def train_tokenizer(texts: list[str], vocab_size: int, pretokenizer: str = "words"):
    """Byte-level BPE. With ``words``, BPE never merges across a letter/non-letter boundary, so a word
    is tokenised the same way wherever it appears ("hotel" in 'Book a hotel', in book_hotel and in the
    call), and numbers are copied digit by digit. GPT-2's pre-tokeniser glues the leading space on
    (' hotel' vs 'hotel'), which makes every copy from request or schema a different token."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    if pretokenizer == "words":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(WORDS_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=2)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|end|>",
                                   pad_token="<|pad|>", model_max_length=4096)
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"  # batched generation; trainers pad on the right themselves
    return fast


def build_model(model_cfg, tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=model_cfg.hidden_size, num_hidden_layers=model_cfg.num_layers,
        num_attention_heads=model_cfg.num_heads, num_key_value_heads=model_cfg.num_heads,
        intermediate_size=model_cfg.intermediate_size, max_position_embeddings=max(1024, 2 * model_cfg.max_length),
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, rms_norm_eps=1e-5, attention_bias=model_cfg.copy_prior)
    torch.manual_seed(model_cfg.init_seed)
    model = LlamaForCausalLM(config)
    if model_cfg.copy_prior:
        from agent_align.models.copy_prior import install_previous_token_heads

        heads = min(2, model_cfg.num_heads)
        install_previous_token_heads(model, heads=tuple(range(heads)), offsets=(1, 2)[:heads])
    return model


def ensure_tiny(model_cfg, data_cfg, seed: int) -> Path:
    """Path of the built model directory, building it on first use (atomically, so a killed build
    leaves no half-written cache entry)."""
    import fcntl

    digest = model_hash(model_cfg, data_cfg, seed)
    out = cache_root() / "models" / f"{model_cfg.name}-{digest}"
    if (out / "config.json").exists() and (out / "tokenizer.json").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:  # several ranks/jobs: one builds, the others wait
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / "config.json").exists() and (out / "tokenizer.json").exists():
            return out
        return _build(model_cfg, data_cfg, seed, out)


def _build(model_cfg, data_cfg, seed: int, out: Path) -> Path:
    log.info("building %s model (tokenizer + random init), cached at %s", model_cfg.name, out)
    texts = corpus_texts(data_cfg, seed, model_cfg.tokenizer_corpus_rows)
    tokenizer = train_tokenizer(texts, model_cfg.vocab_size, model_cfg.pretokenizer)
    model = build_model(model_cfg, tokenizer)
    warmup = None
    if model_cfg.copy_prior and model_cfg.copy_warmup_steps > 0:
        from agent_align.models.copy_prior import warm_up_copying

        warmup = warm_up_copying(model, (len(SPECIAL_TOKENS), len(tokenizer)), max_steps=model_cfg.copy_warmup_steps,
                                 seed=model_cfg.init_seed)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "agent_align_build.json").write_text(json.dumps(
            {"arch": _arch(model_cfg), "corpus": _corpus_key(data_cfg, seed), "version": BUILDER_VERSION,
             "parameters": sum(p.numel() for p in model.parameters()), "copy_warmup": warmup}, indent=2, default=str))
    return out
