"""Batched generation with KV cache and left padding: one ``generate`` call advances many prompts.

    outputs = generate(model, tokenizer, [{"messages": [...], "tools": [...]}, ...], max_new_tokens=96)

Prompts are sorted by length so each batch pads little, and a batch stops as soon as every
sequence in it has emitted EOS.
"""

from __future__ import annotations

from typing import Sequence

from tqdm import tqdm


def prompt_text(tokenizer, chat: dict) -> str:
    return tokenizer.apply_chat_template(chat["messages"], tools=chat.get("tools") or None,
                                         add_generation_prompt=True, tokenize=False)


def encode_prompts(tokenizer, chats: Sequence[dict]) -> list[list[int]]:
    texts = [prompt_text(tokenizer, c) for c in chats]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def inference_copy(model, bf16: bool):
    """The model to decode with. On a CPU where bf16 is fast: a bf16 copy (the training weights stay fp32).

    The KV cache is chosen in ``generate_ids`` (``cache_implementation``; dynamic by default: a static
    cache measured slower in fp32 here, see benchmarks/README.md).
    """
    import copy

    import torch

    if not bf16 or model.device.type != "cpu" or model.dtype != torch.float32:
        return model
    fast = copy.deepcopy(model).to(torch.bfloat16)
    for module in fast.modules():  # drop trainer-installed forward wrappers (fp32 upcast, autocast, fused head)
        module.__dict__.pop("forward", None)
        module.__dict__.pop("_original_forward", None)
    return fast


def generate_ids(model, tokenizer, prompt_ids: Sequence[list[int]], *, max_new_tokens: int = 96, batch_size: int = 64,
                 do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, num_return_sequences: int = 1,
                 bf16: bool = False, desc: str | None = "generating", seed: int | None = None,
                 cache_implementation: str | None = None, compact: bool | None = None) -> list[list[list[int]]]:
    """New token ids per prompt (a list of ``num_return_sequences`` sequences each), in input order.
    ``cache_implementation``: None (default: transformers' dynamic cache) or "static" (preallocated; measured
    slower in fp32 here, benchmarks/README.md). ``compact`` (default ``COMPACT_DECODING``): greedy decoding
    drops finished rows from the batch and its KV cache (``greedy_compacting``)."""
    import torch

    compact = COMPACT_DECODING if compact is None else compact

    if seed is not None:
        torch.manual_seed(seed)
    pad = tokenizer.pad_token_id
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    out: list = [None] * len(prompt_ids)
    was_training = model.training
    model.eval()
    decoder = inference_copy(model, bf16)
    gen_kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=pad,
                      eos_token_id=tokenizer.eos_token_id, num_return_sequences=num_return_sequences, use_cache=True,
                      cache_implementation=cache_implementation)
    if do_sample:
        gen_kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
    else:
        gen_kwargs.update(temperature=None, top_p=None, top_k=None)
    bar = tqdm(total=len(order), desc=desc, unit="prompt", disable=desc is None or None, mininterval=1.0)
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            longest = max(len(prompt_ids[i]) for i in idx)
            ids = torch.full((len(idx), longest), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), longest), dtype=torch.long)
            for row, i in enumerate(idx):  # left padding: generation continues right after each prompt
                seq = prompt_ids[i]
                ids[row, longest - len(seq):] = torch.tensor(seq)
                mask[row, longest - len(seq):] = 1
            with torch.inference_mode():
                if (compact and not do_sample and num_return_sequences == 1 and cache_implementation is None
                        and plain_greedy(decoder)):
                    new = greedy_compacting(decoder, ids.to(model.device), mask.to(model.device), max_new_tokens,
                                            tokenizer.eos_token_id)
                else:
                    gen = decoder.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                                           **gen_kwargs)
                    new = gen[:, longest:].tolist()
            for row, i in enumerate(idx):
                seqs = new[row * num_return_sequences:(row + 1) * num_return_sequences]
                out[i] = [_strip(s, pad, tokenizer.eos_token_id) for s in seqs]
            bar.update(len(idx))
    finally:
        bar.close()
        model.train(was_training)
    return out


COMPACT_DECODING = True  # hardware.compact_decoding; benchmarks/run.py compares both


def set_compact_decoding(enabled: bool) -> None:
    global COMPACT_DECODING
    COMPACT_DECODING = bool(enabled)


def greedy_compacting(model, ids, mask, max_new_tokens: int, eos: int) -> list[list[int]]:
    """Greedy decoding of a left-padded batch that stops computing rows once they end.

    ``model.generate`` keeps every row of the batch until the longest output ends: in an eval batch whose
    outputs averaged 37 of at most 96 tokens, most row-steps were spent on rows already finished. Here
    rows that emitted ``eos`` leave the batch and the KV cache (``DynamicCache.batch_select_indices``)
    once they are an eighth of the live rows, so each step costs what the live rows need. Same tokens as
    ``generate(do_sample=False)`` (positions from the attention mask, the same cache, argmax of the same
    logits; tests/test_generation.py checks it); used only when the model's generation config asks for
    no logits processing (``plain_greedy``).
    """
    import inspect

    import torch
    from transformers import DynamicCache

    out: list[list[int]] = [[] for _ in range(ids.shape[0])]
    live = list(range(ids.shape[0]))  # batch position -> input row
    cache = DynamicCache(config=model.config)
    params = inspect.signature(model.forward).parameters
    kw = {"cache" if "cache" in params else "past_key_values": cache, "use_cache": True}
    if "logits_to_keep" in params:
        kw["logits_to_keep"] = 1  # the LM head on the last position only, as generate does
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, **kw).logits[:, -1]
    last = pos[:, -1]
    ended = torch.zeros(len(live), dtype=torch.bool, device=ids.device)
    for step in range(max_new_tokens):
        nxt = logits.argmax(-1)
        for row, tok, done in zip(live, nxt.tolist(), ended.tolist()):
            if not done and tok != eos:
                out[row].append(tok)
        ended |= nxt == eos
        if bool(ended.all()) or step == max_new_tokens - 1:
            break
        n_ended = int(ended.sum())
        if n_ended and n_ended * 8 >= len(live):  # drop ended rows from the batch and the cache
            keep = (~ended).nonzero().squeeze(-1)
            cache.batch_select_indices(keep)
            live = [live[k] for k in keep.tolist()]
            nxt, mask, last, ended = nxt[keep], mask[keep], last[keep], ended[keep]
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
        last = last + 1
        logits = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=last[:, None], **kw).logits[:, -1]
    return out


def plain_greedy(model) -> bool:
    """The model's generation config adds no logits processing that ``greedy_compacting`` would skip."""
    gc = getattr(model, "generation_config", None)
    if gc is None:
        return True
    return (gc.repetition_penalty in (None, 1.0) and not gc.no_repeat_ngram_size and gc.bad_words_ids is None
            and gc.suppress_tokens is None and gc.begin_suppress_tokens is None and gc.forced_bos_token_id is None
            and gc.forced_eos_token_id is None and not gc.min_length and not gc.min_new_tokens
            and gc.sequence_bias is None and getattr(gc, "encoder_repetition_penalty", None) in (None, 1.0))


def _strip(seq: list[int], pad: int, eos: int) -> list[int]:
    if eos in seq:
        seq = seq[:seq.index(eos)]
    while seq and seq[-1] == pad:
        seq.pop()
    return seq


def generate(model, tokenizer, chats: Sequence[dict], *, max_new_tokens: int = 96, batch_size: int = 64,
             do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, num_return_sequences: int = 1,
             bf16: bool = False, desc: str | None = "generating", seed: int | None = None):
    """Decoded completions: one string per chat, or a list of ``num_return_sequences`` strings."""
    ids = generate_ids(model, tokenizer, encode_prompts(tokenizer, chats), max_new_tokens=max_new_tokens,
                       batch_size=batch_size, do_sample=do_sample, temperature=temperature, top_p=top_p,
                       num_return_sequences=num_return_sequences, bf16=bf16, desc=desc, seed=seed)
    texts = [[tokenizer.decode(s, skip_special_tokens=True) for s in seqs] for seqs in ids]
    return [t[0] for t in texts] if num_return_sequences == 1 else texts
