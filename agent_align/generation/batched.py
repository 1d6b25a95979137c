"""Batched generation over many prompts: ordering, budgets, stopping at the call, our decoder or ``generate``."""

from __future__ import annotations

from typing import Generator, Hashable, Sequence

from agent_align.generation.attention import packed_decoding
from agent_align.generation.decoder import _left_pad, decode_compacting, decode_stream
from agent_align.generation.sampling import sampler
from agent_align.progress import Progress


def prompt_text(tokenizer, chat: dict) -> str:
    return tokenizer.apply_chat_template(chat["messages"], tools=chat.get("tools") or None,
                                         add_generation_prompt=True, tokenize=False)


def encode_prompts(tokenizer, chats: Sequence[dict]) -> list[list[int]]:
    texts = [prompt_text(tokenizer, c) for c in chats]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def call_stop(cfg) -> str | None:
    """The ``stop_at_call`` a stage passes: its output format, or None when ``evaluate.stop_at_call_end`` is off."""
    return cfg.data.format if cfg.evaluate.stop_at_call_end else None


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


def generate_ids(model, tokenizer, prompt_ids: Sequence[list[int]], *, max_new_tokens: int | Sequence[int] = 96,
                 batch_size: int = 64,
                 do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, num_return_sequences: int = 1,
                 bf16: bool = False, desc: str | None = "generating", seed: int | None = None,
                 cache_implementation: str | None = None, compact: bool | None = None,
                 stop_at_call: str | Sequence[str | None] | None = None, fail_fast: str | None = None,
                 text_before: Sequence[str] | None = None) -> list[list[list[int]]]:
    """New token ids per prompt (a list of ``num_return_sequences`` sequences each), in input order.

    ``max_new_tokens``: one limit, or one per prompt. ``batch_size``: prompts decoded at once; with
    ``decode_compacting`` the rest wait and take the places of rows that end (continuous batching).

    ``cache_implementation``: None (transformers' dynamic cache) or "static" (preallocated; measured slower in
    fp32 here, benchmarks/README.md). ``compact`` (default ``COMPACT_DECODING``): decode with
    ``decode_compacting`` (greedy or sampled, several samples per prompt) instead of ``model.generate``.
    ``stop_at_call``: an output format ("json" | "react"), one per prompt, or None: a row also ends once its
    text holds a complete call, with the same verdict as the whole text (``agent_align.call_end``);
    ``fail_fast``: and once its verdict is a failure whatever follows: "json" (stage=evaluate's strict SSPR) or
    "bfcl" (JSON or Python call syntax, stage=evaluate data=bfcl; ``agent_align.call_end``);
    ``text_before``: per prompt, answer text already in the prompt (a Step-DPO prefix) that the call continues.
    ``desc``: progress on the terminal and in the log (``agent_align.progress``); None for neither.
    """
    import itertools

    import torch

    compact = COMPACT_DECODING if compact is None else compact
    n = num_return_sequences
    if seed is not None:
        torch.manual_seed(seed)
    pad = tokenizer.pad_token_id
    eos = tokenizer.eos_token_id
    budgets = [max_new_tokens] * len(prompt_ids) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    fmts = [stop_at_call] * len(prompt_ids) if stop_at_call is None or isinstance(stop_at_call, str) else list(stop_at_call)
    texts = _TokenTexts(tokenizer) if any(fmts) else None
    out: list = [None] * len(prompt_ids)
    was_training = model.training
    model.eval()
    decoder = inference_copy(model, bf16)
    ours = (compact and (do_sample or n == 1) and cache_implementation is None and plain_decoding(decoder, do_sample))
    # ours: the largest budgets first, so the longest rows start early and shorter ones fill in around them;
    # generate: by budget, so short answers are not decoded under the longest one's limit. Then by length.
    sign = -1 if ours else 1
    order = sorted(range(len(prompt_ids)), key=lambda i: (sign * budgets[i], len(prompt_ids[i])))
    bar = Progress(len(order) * n, desc, unit="sample" if n > 1 else "prompt")
    ends_after = None
    if texts is not None:
        from agent_align.call_end import call_end

        machines = [call_end(fmts[i], text_before[i] if text_before else "", fail_fast) if fmts[i] else None
                    for i in order for _ in range(n)]  # per output row: prompts in ``order``, n rows each
        ends_after = lambda row, tok: machines[row] is not None and machines[row].feed(texts(tok))  # noqa: E731
    try:
        with torch.inference_mode(), packed_decoding(decoder):  # grouped-query steps packed (attention.py)
            if ours:  # one call: the prompts past the first batch wait and refill rows as they end
                first, rest = order[:batch_size], order[batch_size:]
                ids, mask = _left_pad([prompt_ids[i] for i in first], pad, model.device)
                new = decode_compacting(decoder, ids, mask, [budgets[i] for i in order], eos,
                                        pick=sampler(temperature, top_p) if do_sample else None, n=n,
                                        ends_after=ends_after, waiting=[prompt_ids[i] for i in rest], pad=pad,
                                        progress=bar.update)
            else:
                new = []
                for _, group in itertools.groupby(order, key=budgets.__getitem__):
                    group = list(group)
                    for start in range(0, len(group), batch_size):
                        idx = group[start:start + batch_size]
                        ids, mask = _left_pad([prompt_ids[i] for i in idx], pad, model.device)
                        off = len(new)  # output rows so far: ``ends_after`` counts rows over all batches
                        rows_ends = None if ends_after is None else (
                            lambda row, tok, off=off: ends_after(off + row, tok))
                        new += _hf_generate(decoder, ids, mask, max_new_tokens=budgets[idx[0]], pad=pad, eos=eos,
                                            do_sample=do_sample, temperature=temperature, top_p=top_p, n=n,
                                            cache_implementation=cache_implementation, ends_after=rows_ends)
                        bar.update(len(idx) * n)
        for row, i in enumerate(order):
            out[i] = [_strip(s, pad, eos) for s in new[row * n:(row + 1) * n]]
    finally:
        bar.close()
        model.train(was_training)
    return out


def generate_stream(model, tokenizer, prompts: Sequence[tuple[Hashable, list[int]]], *, max_new_tokens: int = 96,
                    batch_size: int = 64, do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                    bf16: bool = False, seed: int | None = None, stop_at_call: str | None = None,
                    fail_fast: str | None = None) -> Generator[tuple[Hashable, list[int]], list | None, None]:
    """A generator over answers as they end: ``(key, new token ids)`` for each ``(key, prompt ids)`` of ``prompts``
    and of every list sent back, ``send([(key, prompt ids), ...])``, which join the decoding batch as rows end
    (``decode_stream``): a multi-turn agent's next turn starts when its last answer ends. One answer per prompt,
    greedy or sampled, ``batch_size`` rows at a time; ``stop_at_call``/``fail_fast`` as in ``generate_ids``.
    Needs the compacting decoder (``streams``)."""
    import torch

    if seed is not None:
        torch.manual_seed(seed)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    keys: list = []  # output row -> key
    machines: list = []
    ends_after = None
    if stop_at_call:
        from agent_align.call_end import call_end

        texts = _TokenTexts(tokenizer)
        ends_after = lambda row, tok: machines[row].feed(texts(tok))  # noqa: E731

    def admit(more) -> list[list[int]]:
        """Number ``more`` on from the rows so far (the decoder does the same) and give each its call-end machine."""
        keys.extend(key for key, _ in more)
        if stop_at_call:
            machines.extend(call_end(stop_at_call, "", fail_fast) for _ in more)
        return [ids for _, ids in more]

    first = admit(prompts)
    if not first:
        return
    was_training = model.training
    model.eval()
    decoder = inference_copy(model, bf16)
    ids, mask = _left_pad(first[:batch_size], pad, model.device)
    pick = sampler(temperature, top_p) if do_sample else None
    rows = decode_stream(decoder, ids, mask, max_new_tokens, eos, pick=pick,
                         ends_after=ends_after, waiting=first[batch_size:], pad=pad)
    sent = None
    try:
        while True:
            with torch.inference_mode(), packed_decoding(decoder):
                try:
                    row, tokens = rows.send(sent)
                except StopIteration:
                    return
            more = (yield keys[row], _strip(tokens, pad, eos)) or []
            sent = [(ids, max_new_tokens) for ids in admit(more)]
    finally:
        rows.close()
        model.train(was_training)


def streams(model, do_sample: bool) -> bool:
    """``generate_stream`` can decode for ``model``: the compacting decoder is on and has every logits step it asks."""
    return COMPACT_DECODING and plain_decoding(model, do_sample)


def generate_by_budget(model, tokenizer, prompt_ids: Sequence[list[int]], budgets: Sequence[int], **kwargs):
    """``generate_ids`` with a token budget per prompt (a request needing n calls gets n times one call's)."""
    return generate_ids(model, tokenizer, prompt_ids, max_new_tokens=list(budgets), **kwargs)


def call_budgets(rows: Sequence[dict], per_call: int) -> list[int]:
    """New-token budget per row: ``per_call`` times the calls it needs (parallel rows list them in ``calls``)."""
    return [per_call * len(r.get("calls") or [None]) for r in rows]


COMPACT_DECODING = True  # hardware.compact_decoding; benchmarks/run.py compares both


def set_compact_decoding(enabled: bool) -> None:
    global COMPACT_DECODING
    COMPACT_DECODING = bool(enabled)


def _hf_generate(model, ids, mask, *, max_new_tokens, pad, eos, do_sample, temperature, top_p, n, cache_implementation,
                 ends_after) -> list[list[int]]:
    """transformers' ``generate`` (``hardware.compact_decoding=false``, or logits processing ours does not do)."""
    kw = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=pad, eos_token_id=eos,
              num_return_sequences=n, use_cache=True, cache_implementation=cache_implementation)
    if do_sample:
        kw.update(temperature=temperature, top_p=top_p, top_k=0)
    else:
        kw.update(temperature=None, top_p=None, top_k=None)
    if ends_after is not None:
        kw["stopping_criteria"] = _call_end_criteria(ends_after, ids.shape[0] * n, eos)
    gen = model.generate(input_ids=ids, attention_mask=mask, **kw)
    return gen[:, ids.shape[1]:].tolist()


def _call_end_criteria(ends_after, rows: int, eos: int):
    """``ends_after`` as a transformers stopping criterion: per-row flags, sticky once a row has ended."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class CallEnd(StoppingCriteria):
        def __init__(self):
            self.ended = [False] * rows

        def __call__(self, input_ids, scores, **kwargs):
            for row, tok in enumerate(input_ids[:, -1].tolist()):
                if not self.ended[row]:
                    self.ended[row] = tok == eos or ends_after(row, tok)
            return torch.tensor(self.ended, device=input_ids.device)
    return StoppingCriteriaList([CallEnd()])


class _TokenTexts:
    """Decoded text of single tokens, each decoded once: what the call-end machines read each step, instead
    of re-decoding each row's sequence. Special tokens read as "" (the answer is decoded without them)."""

    def __init__(self, tokenizer):
        self.tok, self.cache = tokenizer, {}

    def __call__(self, tok: int) -> str:
        text = self.cache.get(tok)
        if text is None:
            text = self.cache[tok] = self.tok.decode([tok], skip_special_tokens=True)
        return text


def plain_decoding(model, do_sample: bool = False) -> bool:
    """The model's generation config adds no logits processing that ``decode_compacting`` would skip."""
    gc = getattr(model, "generation_config", None)
    if gc is None:
        return True
    plain = (gc.repetition_penalty in (None, 1.0) and not gc.no_repeat_ngram_size and gc.bad_words_ids is None
             and gc.suppress_tokens is None and gc.begin_suppress_tokens is None and gc.forced_bos_token_id is None
             and gc.forced_eos_token_id is None and not gc.min_length and not gc.min_new_tokens
             and gc.sequence_bias is None and getattr(gc, "encoder_repetition_penalty", None) in (None, 1.0))
    if do_sample:  # warpers generate adds from the model's config on top of temperature / top_p / top_k=0
        plain = plain and (getattr(gc, "typical_p", None) in (None, 1.0) and not getattr(gc, "min_p", None)
                           and not getattr(gc, "epsilon_cutoff", None) and not getattr(gc, "eta_cutoff", None)
                           and getattr(gc, "top_h", None) is None)
    return plain


def _strip(seq: list[int], pad: int, eos: int) -> list[int]:
    if eos in seq:
        seq = seq[:seq.index(eos)]
    while seq and seq[-1] == pad:
        seq.pop()
    return seq


def generate(model, tokenizer, chats: Sequence[dict], *, max_new_tokens: int = 96, batch_size: int = 64,
             do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, num_return_sequences: int = 1,
             bf16: bool = False, desc: str | None = "generating", seed: int | None = None,
             stop_at_call: str | None = None):
    """Decoded completions: one string per chat, or a list of ``num_return_sequences`` strings."""
    ids = generate_ids(model, tokenizer, encode_prompts(tokenizer, chats), max_new_tokens=max_new_tokens,
                       batch_size=batch_size, do_sample=do_sample, temperature=temperature, top_p=top_p,
                       num_return_sequences=num_return_sequences, bf16=bf16, desc=desc, seed=seed,
                       stop_at_call=stop_at_call)
    texts = [[tokenizer.decode(s, skip_special_tokens=True) for s in seqs] for seqs in ids]
    return [t[0] for t in texts] if num_return_sequences == 1 else texts
