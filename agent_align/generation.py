"""Batched generation with KV cache and left padding: one call advances many prompts.

    outputs = generate(model, tokenizer, [{"messages": [...], "tools": [...]}, ...], max_new_tokens=96)

Prompts are sorted by length so each batch pads little. ``decode_compacting`` (greedy or sampled) drops
each row from the batch and its KV cache once it ends, at end of turn or, with ``stop_at_call``, once
its text holds a complete call (``agent_align.call_end``).
"""

from __future__ import annotations

from typing import Callable, Sequence

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


def generate_ids(model, tokenizer, prompt_ids: Sequence[list[int]], *, max_new_tokens: int = 96, batch_size: int = 64,
                 do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, num_return_sequences: int = 1,
                 bf16: bool = False, desc: str | None = "generating", seed: int | None = None,
                 cache_implementation: str | None = None, compact: bool | None = None,
                 stop_at_call: str | Sequence[str | None] | None = None,
                 text_before: Sequence[str] | None = None) -> list[list[list[int]]]:
    """New token ids per prompt (a list of ``num_return_sequences`` sequences each), in input order.

    ``cache_implementation``: None (transformers' dynamic cache) or "static" (preallocated; measured slower in
    fp32 here, benchmarks/README.md). ``compact`` (default ``COMPACT_DECODING``): decode with
    ``decode_compacting`` (greedy or sampled, several samples per prompt) instead of ``model.generate``.
    ``stop_at_call``: an output format ("json" | "react"), one per prompt, or None: a row also ends once its
    text holds a complete call, with the same verdict as the whole text (``agent_align.call_end``);
    ``text_before``: per prompt, answer text already in the prompt (a Step-DPO prefix) that the call continues.
    ``desc``: progress on the terminal and in the log (``agent_align.progress``); None for neither.
    """
    import torch

    compact = COMPACT_DECODING if compact is None else compact
    n = num_return_sequences
    if seed is not None:
        torch.manual_seed(seed)
    pad = tokenizer.pad_token_id
    eos = tokenizer.eos_token_id
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    fmts = [stop_at_call] * len(prompt_ids) if stop_at_call is None or isinstance(stop_at_call, str) else list(stop_at_call)
    texts = _TokenTexts(tokenizer) if any(fmts) else None
    out: list = [None] * len(prompt_ids)
    was_training = model.training
    model.eval()
    decoder = inference_copy(model, bf16)
    ours = (compact and (do_sample or n == 1) and cache_implementation is None and plain_decoding(decoder, do_sample))
    bar = Progress(len(order) * n, desc, unit="sample" if n > 1 else "prompt")
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
            ids, mask = ids.to(model.device), mask.to(model.device)
            ends_after = None
            if texts is not None:
                from agent_align.call_end import call_end

                machines = [call_end(fmts[i], text_before[i] if text_before else "") if fmts[i] else None
                            for i in idx for _ in range(n)]
                ends_after = lambda row, tok: machines[row] is not None and machines[row].feed(texts(tok))  # noqa: E731
            with torch.inference_mode():
                if ours:
                    pick = sampler(temperature, top_p) if do_sample else None
                    new = decode_compacting(decoder, ids, mask, max_new_tokens, eos, pick=pick, n=n, ends_after=ends_after)
                else:
                    new = _hf_generate(decoder, ids, mask, max_new_tokens=max_new_tokens, pad=pad, eos=eos,
                                       do_sample=do_sample, temperature=temperature, top_p=top_p, n=n,
                                       cache_implementation=cache_implementation, ends_after=ends_after)
            for row, i in enumerate(idx):
                out[i] = [_strip(s, pad, eos) for s in new[row * n:(row + 1) * n]]
            bar.update(len(idx) * n)
    finally:
        bar.close()
        model.train(was_training)
    return out


def generate_by_budget(model, tokenizer, prompt_ids: Sequence[list[int]], budgets: Sequence[int], **kwargs):
    """``generate_ids`` with a token budget per prompt (a request needing n calls gets n times one call's):
    prompts are grouped by budget, so short answers are not decoded under the longest one's budget."""
    out: list = [None] * len(prompt_ids)
    for budget in sorted(set(budgets)):
        idx = [i for i, b in enumerate(budgets) if b == budget]
        for i, seqs in zip(idx, generate_ids(model, tokenizer, [prompt_ids[i] for i in idx], max_new_tokens=budget,
                                             **kwargs)):
            out[i] = seqs
    return out


def call_budgets(rows: Sequence[dict], per_call: int) -> list[int]:
    """New-token budget per row: ``per_call`` times the calls it needs (parallel rows list them in ``calls``)."""
    return [per_call * len(r.get("calls") or [None]) for r in rows]


COMPACT_DECODING = True  # hardware.compact_decoding; benchmarks/run.py compares both


def set_compact_decoding(enabled: bool) -> None:
    global COMPACT_DECODING
    COMPACT_DECODING = bool(enabled)


def sampler(temperature: float, top_p: float) -> Callable:
    """Next tokens from last-position logits as ``generate(do_sample=True, top_k=0)`` draws them: an fp32 copy,
    transformers' own temperature and top-p warpers, softmax, one ``torch.multinomial`` over the batch (so with
    the same batch rows and seed, the same tokens)."""
    import torch
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

    warpers = LogitsProcessorList()
    if temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))

    def pick(logits):
        scores = warpers(None, logits.to(dtype=torch.float32))
        return torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
    return pick


def decode_compacting(model, ids, mask, max_new_tokens: int, eos: int, *, pick: Callable | None = None, n: int = 1,
                      ends_after: Callable[[int, int], bool] | None = None) -> list[list[int]]:
    """Decode a left-padded batch, greedy (``pick=None``: argmax) or sampled (``pick``: ``sampler``), computing
    only the rows still going. Returns new tokens per row (``n`` rows per prompt, prompt-major), without eos.

    ``model.generate`` keeps every row of the batch until the longest output ends: in an eval batch whose
    outputs averaged 37 of at most 96 tokens, most row-steps were spent on rows already finished. Here rows
    that emitted ``eos``, or whose token made ``ends_after(row, token)`` true (kept), leave the batch and the
    KV cache (``DynamicCache.batch_select_indices``) once they are an eighth of the live rows, so each step
    costs what the live rows need. Several samples per prompt share one prefill: its cache rows are repeated
    (``batch_repeat_interleave``), where ``generate`` prefills each copy. Same tokens as ``generate`` for
    greedy decoding, and for sampling until the first row leaves (the same multinomial draws over the same
    rows); after that the same distribution (tests/test_sampling.py). Used only when the model's generation
    config asks for no other logits processing (``plain_decoding``).
    """
    import inspect

    import torch

    rows = ids.shape[0] * n
    out: list[list[int]] = [[] for _ in range(rows)]
    live = list(range(rows))  # batch position -> output row
    cache = _cache_with_room(model.config, max_new_tokens)
    params = inspect.signature(model.forward).parameters
    kw = {"cache" if "cache" in params else "past_key_values": cache, "use_cache": True}
    if "logits_to_keep" in params:
        kw["logits_to_keep"] = 1  # the LM head on the last position only, as generate does
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, **kw).logits[:, -1]
    last = pos[:, -1]
    if n > 1:
        cache.batch_repeat_interleave(n)
        logits, mask, last = logits.repeat_interleave(n, 0), mask.repeat_interleave(n, 0), last.repeat_interleave(n, 0)
    ended = [False] * rows
    for step in range(max_new_tokens):
        nxt = logits.argmax(-1) if pick is None else pick(logits)
        for k, (row, tok) in enumerate(zip(live, nxt.tolist())):
            if ended[k]:
                continue
            if tok == eos:
                ended[k] = True
                continue
            out[row].append(tok)
            if ends_after is not None and ends_after(row, tok):
                ended[k] = True
        n_ended = sum(ended)
        if n_ended == len(live) or step == max_new_tokens - 1:
            break
        if n_ended and n_ended * 8 >= len(live):  # drop ended rows from the batch and the cache
            keep_rows = [k for k, e in enumerate(ended) if not e]
            keep = torch.tensor(keep_rows, device=ids.device)
            cache.batch_select_indices(keep)
            live = [live[k] for k in keep_rows]
            nxt, mask, last, ended = nxt[keep], mask[keep], last[keep], [False] * len(keep_rows)
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
        last = last + 1
        logits = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=last[:, None], **kw).logits[:, -1]
    return out


def _cache_with_room(config, room: int):
    """A ``DynamicCache`` whose full-attention layers write new tokens into room left after the prompt.

    ``DynamicLayer.update`` concatenates, copying the whole cache every step: measured on SmolLM2-135M (bf16,
    96 rows, 250 cached tokens) that was a third of a decoding step (0.36 -> 0.25 CPU-s with the room).
    Attention reads a view of the filled part; dropping and repeating rows act on the whole buffer.
    """
    import torch
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    class RoomyLayer(DynamicLayer):
        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized or self.keys.numel() == 0:
                if not self.is_initialized:
                    self.lazy_initialization(key_states, value_states)
                b, h, t, d = key_states.shape
                self.k_buf = key_states.new_empty(b, h, t + room, d)
                self.v_buf = value_states.new_empty(b, h, t + room, d)
                self.filled = 0
            n, t = self.filled, key_states.shape[-2]
            if n + t > self.k_buf.shape[-2]:  # more than the room asked for: grow like DynamicLayer would
                self.k_buf, self.v_buf = (torch.cat([buf[:, :, :n], x], dim=-2) for buf, x in
                                          ((self.k_buf, key_states), (self.v_buf, value_states)))
            else:
                self.k_buf[:, :, n:n + t] = key_states
                self.v_buf[:, :, n:n + t] = value_states
            self.filled = n + t
            self.keys, self.values = self.k_buf[:, :, :self.filled], self.v_buf[:, :, :self.filled]
            return self.keys, self.values

        def _rebuild(self, fn) -> None:
            if self.get_seq_length() > 0:
                self.k_buf, self.v_buf = fn(self.k_buf), fn(self.v_buf)
                self.keys, self.values = self.k_buf[:, :, :self.filled], self.v_buf[:, :, :self.filled]

        def batch_select_indices(self, indices) -> None:
            self._rebuild(lambda buf: buf[indices])

        def batch_repeat_interleave(self, repeats: int) -> None:
            self._rebuild(lambda buf: buf.repeat_interleave(repeats, dim=0))

    cache = DynamicCache(config=config)
    cache.layers = [RoomyLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


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
