"""Batched generation with KV cache and left padding: one call advances many prompts.

    outputs = generate(model, tokenizer, [{"messages": [...], "tools": [...]}, ...], max_new_tokens=96)

Prompts are sorted by length so each batch pads little. ``decode_compacting`` (greedy or sampled) ends a
row at end of turn or, with ``stop_at_call``, once its text holds a complete call (``agent_align.call_end``),
and puts the next waiting prompt in its place (continuous batching); once none wait, ended rows leave the
batch and the KV cache.
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


def generate_ids(model, tokenizer, prompt_ids: Sequence[list[int]], *, max_new_tokens: int | Sequence[int] = 96,
                 batch_size: int = 64,
                 do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, num_return_sequences: int = 1,
                 bf16: bool = False, desc: str | None = "generating", seed: int | None = None,
                 cache_implementation: str | None = None, compact: bool | None = None,
                 stop_at_call: str | Sequence[str | None] | None = None, fail_fast: bool = False,
                 text_before: Sequence[str] | None = None) -> list[list[list[int]]]:
    """New token ids per prompt (a list of ``num_return_sequences`` sequences each), in input order.

    ``max_new_tokens``: one limit, or one per prompt. ``batch_size``: prompts decoded at once; with
    ``decode_compacting`` the rest wait and take the places of rows that end (continuous batching).

    ``cache_implementation``: None (transformers' dynamic cache) or "static" (preallocated; measured slower in
    fp32 here, benchmarks/README.md). ``compact`` (default ``COMPACT_DECODING``): decode with
    ``decode_compacting`` (greedy or sampled, several samples per prompt) instead of ``model.generate``.
    ``stop_at_call``: an output format ("json" | "react"), one per prompt, or None: a row also ends once its
    text holds a complete call, with the same verdict as the whole text (``agent_align.call_end``);
    ``fail_fast``: and once its strict JSON verdict is a failure whatever follows (stage=evaluate's SSPR only);
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
        with torch.inference_mode():
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


def sampler(temperature: float, top_p: float) -> Callable:
    """Next tokens from last-position logits with ``generate(do_sample=True, top_k=0)``'s distribution: an fp32
    copy, transformers' own temperature and top-p warpers, softmax, then one inverse-CDF draw per row
    (``draw``) where ``generate`` calls ``torch.multinomial``."""
    import torch
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

    warpers = LogitsProcessorList()
    if temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))

    def pick(logits):
        return draw(torch.softmax(warpers(None, logits.to(dtype=torch.float32)), dim=-1))
    return pick


def draw(probs):
    """One token per row of ``probs`` (rows summing to 1), by inverse CDF: a uniform draw per row scaled to the
    row's total, located in the fp64 running sum (``side=right``, so a zero-probability token is never the
    first sum above it). ``torch.multinomial`` draws one sample on CPU as ``argmax(p / Exponential(1))``: one
    exponential variate per vocabulary entry, 38 ms a step for 32 rows of SmolLM2's 49,152 tokens on a 2-core
    AMD EPYC, against 1.9 ms here (in a 60 s sampling job of 48 rows: 5.0 s -> 1.4 s; benchmarks/README.md)."""
    import torch

    cdf = probs.cumsum(dim=-1, dtype=torch.float64)
    total = cdf[:, -1:].contiguous()
    u = torch.rand(total.shape, dtype=torch.float64, device=probs.device) * total
    idx = torch.searchsorted(cdf, u, right=True)
    # u * total can round up to total itself: the last token with any probability is the first to reach it
    return torch.minimum(idx, torch.searchsorted(cdf, total)).squeeze(1)


def decode_compacting(model, ids, mask, max_new_tokens: int | Sequence[int], eos: int, *,
                      pick: Callable | None = None, n: int = 1, ends_after: Callable[[int, int], bool] | None = None, waiting: Sequence[list[int]] = (),
                      pad: int = 0, refill_at: float | None = None,
                      progress: Callable[[int], None] | None = None) -> list[list[int]]:
    """Decode a left-padded batch, then the ``waiting`` prompts as rows free up, greedy (``pick=None``: argmax)
    or sampled (``pick``: ``sampler``), computing only rows still going. Returns new tokens per row (``n`` rows
    per prompt, prompt-major: the batch's prompts, then ``waiting``'s), without eos.

    ``model.generate`` keeps every row of the batch until the longest output ends: in an eval batch whose
    outputs averaged 37 of at most 96 tokens, most row-steps were spent on rows already finished. Here a row
    ends on ``eos``, on a token that makes ``ends_after(row, token)`` true (kept), or after ``max_new_tokens``
    (one limit, or one per prompt).
    Several samples per prompt share one prefill: its cache rows are repeated (``batch_repeat_interleave``),
    where ``generate`` prefills each copy.

    Continuous batching: once ``refill_at`` (default ``REFILL_AT``) of the batch's rows have ended, as many
    waiting prompts as fit are prefilled together and their cache rows written into the ended rows' slots,
    right-aligned to the running cache's last column, with a mask hiding the columns before them; positions
    are each row's own, so a row decodes as it would alone. When every row has ended at once the next batch
    starts afresh (as separate calls would). With nothing left waiting, ended rows leave the batch and the
    KV cache (``DynamicCache.batch_select_indices``) once they are an eighth of it. Same tokens as
    ``generate`` for greedy decoding, and the same distribution for sampling (``draw``; tests/test_sampling.py).
    Used only when the model's generation config asks for no other logits processing (``plain_decoding``).
    ``progress(k)``: k rows ended.
    """
    import inspect

    import torch
    from transformers import DynamicCache

    refill_at = REFILL_AT if refill_at is None else refill_at
    queue = list(waiting)
    total = ids.shape[0] + len(queue)
    budget = [max_new_tokens] * total if isinstance(max_new_tokens, int) else list(max_new_tokens)
    out: list[list[int]] = [[] for _ in range(total * n)]
    params = inspect.signature(model.forward).parameters
    cache_key = "cache" if "cache" in params else "past_key_values"
    head = {"logits_to_keep": 1} if "logits_to_keep" in params else {}  # the LM head on the last position only

    def prefill(ids, mask, cache):
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                       **{cache_key: cache}, **head).logits[:, -1]
        return logits.repeat_interleave(n, 0), mask.repeat_interleave(n, 0), pos[:, -1].repeat_interleave(n, 0)

    def start(ids, mask, first_row):
        cache = _cache_with_room(model.config, max(budget))
        logits, mask, last = prefill(ids, mask, cache)
        if n > 1:
            cache.batch_repeat_interleave(n)
        return cache, logits, mask, last, list(range(first_row, first_row + ids.shape[0] * n))

    cache, logits, mask, last, live = start(ids, mask, 0)  # live: batch position -> output row
    next_row = len(live)
    refillable = bool(queue) and all(isinstance(layer, _slot_layer()) for layer in cache.layers)
    slots = len(live)  # rows the batch holds while prompts wait
    left = [budget[row // n] for row in live]  # new tokens each row may still make
    ended = [False] * len(live)
    while True:
        nxt = logits.argmax(-1) if pick is None else pick(logits)
        for k, (row, tok) in enumerate(zip(live, nxt.tolist())):
            if ended[k]:
                continue
            left[k] -= 1
            if tok == eos:
                ended[k] = True
            else:
                out[row].append(tok)
                ended[k] = left[k] == 0 or (ends_after is not None and ends_after(row, tok))
            if ended[k] and progress is not None:
                progress(1)
        n_ended = sum(ended)
        if n_ended == len(live):
            if not queue:
                break
            take, queue = queue[:slots // n], queue[slots // n:]  # all ended at once: a fresh batch
            cache, logits, mask, last, live = start(*_left_pad(take, pad, ids.device), next_row)
            next_row += len(live)
            left, ended = [budget[row // n] for row in live], [False] * len(live)
            continue
        if n_ended and (not queue or not refillable) and n_ended * 8 >= len(live):  # drop them from batch and cache
            keep_rows = [k for k, e in enumerate(ended) if not e]
            keep = torch.tensor(keep_rows, device=ids.device)
            cache.batch_select_indices(keep)
            live, left = [live[k] for k in keep_rows], [left[k] for k in keep_rows]
            nxt, mask, last, ended = nxt[keep], mask[keep], last[keep], [False] * len(keep_rows)
            mask = _trim(cache, mask, ended)
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
        last = last + 1
        logits = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=last[:, None], use_cache=True,
                       **{cache_key: cache}, **head).logits[:, -1]
        free = [k for k, e in enumerate(ended) if e]
        if refillable and queue and len(free) >= max(n, refill_at * len(live)):
            take, queue = queue[:len(free) // n], queue[len(free) // n:]
            into = free[:len(take) * n]
            new_ids, new_mask = _left_pad(take, pad, ids.device)
            fresh = DynamicCache(config=model.config)
            new_logits, new_mask, new_last = prefill(new_ids, new_mask, fresh)
            width = new_mask.shape[1]
            slot_idx = torch.tensor(into, device=ids.device)
            for layer, src in zip(cache.layers, fresh.layers):
                layer.admit(slot_idx, src.keys.repeat_interleave(n, 0), src.values.repeat_interleave(n, 0))
            grow = width - mask.shape[1]
            if grow > 0:  # the new prompts are longer than the running cache: it grew on the left (admit)
                mask = torch.cat([mask.new_zeros((mask.shape[0], grow)), mask], dim=-1)
            mask[slot_idx] = 0
            mask[slot_idx, mask.shape[1] - width:] = new_mask
            logits[slot_idx], last[slot_idx] = new_logits.to(logits.dtype), new_last
            for j, k in enumerate(into):
                live[k], left[k], ended[k] = next_row + j, budget[(next_row + j) // n], False
            next_row += len(into)
            mask = _trim(cache, mask, ended)
    return out


REFILL_AT = 0.125  # continuous batching: refill once this share of the batch's rows has ended (benchmarks/README.md)


def _left_pad(prompts: Sequence[list[int]], pad: int, device):
    import torch

    longest = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), longest), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), longest), dtype=torch.long)
    for row, seq in enumerate(prompts):  # left padding: generation continues right after each prompt
        ids[row, longest - len(seq):] = torch.tensor(seq)
        mask[row, longest - len(seq):] = 1
    return ids.to(device), mask.to(device)


def _trim(cache, mask, ended):
    """Drop the cache's leading columns that no running row attends to (a view: nothing is copied), so attention
    spans the live rows' tokens, not every column since the first batch began."""
    alive = [k for k, e in enumerate(ended) if not e]
    if not alive:
        return mask
    first = int(mask[alive].any(0).to(mask.dtype).argmax())
    if first > 0 and all(isinstance(layer, _slot_layer()) for layer in cache.layers):
        for layer in cache.layers:
            layer.drop_columns(first)
        mask = mask[:, first:]
    return mask


def _cache_with_room(config, room: int):
    """A ``DynamicCache`` whose full-attention layers (``_SlotLayer``) write new tokens into room left after the
    prompt, and take in refilled rows.

    ``DynamicLayer.update`` concatenates, copying the whole cache every step: measured on SmolLM2-135M (bf16,
    96 rows, 250 cached tokens) that was a third of a decoding step (0.36 -> 0.25 CPU-s with the room).
    Attention reads a view of the filled part; dropping and repeating rows act on the whole buffer.
    """
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache(config=config)
    cache.layers = [_slot_layer()(room) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


_SLOT_LAYER = None


def _slot_layer():
    """The cache layer class, made on first use (transformers is imported lazily in this module)."""
    global _SLOT_LAYER
    if _SLOT_LAYER is not None:
        return _SLOT_LAYER
    from transformers.cache_utils import DynamicLayer

    class SlotLayer(DynamicLayer):
        """Keys and values in a buffer ``[rows, heads, columns, dim]``; the cache is the view ``[lo, hi)``."""

        def __init__(self, room: int):
            super().__init__()
            self.room = room

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized or self.keys.numel() == 0:
                if not self.is_initialized:
                    self.lazy_initialization(key_states, value_states)
                b, h, t, d = key_states.shape
                # zeros, not empty: columns a refill exposes are masked, and 0 * NaN would still be NaN
                self.k_buf = key_states.new_zeros(b, h, t + self.room, d)
                self.v_buf = value_states.new_zeros(b, h, t + self.room, d)
                self.lo = self.hi = 0
            t = key_states.shape[-2]
            if self.hi + t > self.k_buf.shape[-2]:  # out of room: move the view to a new buffer with room again
                self._move(0, self.hi - self.lo + t + self.room)
            self.k_buf[:, :, self.hi:self.hi + t] = key_states
            self.v_buf[:, :, self.hi:self.hi + t] = value_states
            self.hi += t
            self._view()
            return self.keys, self.values

        def _view(self) -> None:
            self.keys, self.values = self.k_buf[:, :, self.lo:self.hi], self.v_buf[:, :, self.lo:self.hi]

        def _move(self, left: int, size: int) -> None:
            """Copy the view into a new zeroed buffer of ``size`` columns, starting at column ``left``."""
            span = self.hi - self.lo
            for name in ("k_buf", "v_buf"):
                old = getattr(self, name)
                new = old.new_zeros(old.shape[0], old.shape[1], size, old.shape[3])
                new[:, :, left:left + span] = old[:, :, self.lo:self.hi]
                setattr(self, name, new)
            self.lo, self.hi = left, left + span

        def admit(self, slots, keys, values) -> None:
            """Write a refill's prefilled rows into ``slots``, ending at the last column; the view grows on the
            left when they are longer than it (into room there, else into a new buffer)."""
            width = keys.shape[-2]
            if width > self.hi - self.lo:
                if self.hi - width < 0:
                    self._move(width - (self.hi - self.lo), width + self.room)
                self.lo = self.hi - width
            self.k_buf[slots, :, self.hi - width:self.hi] = keys
            self.v_buf[slots, :, self.hi - width:self.hi] = values
            self._view()

        def drop_columns(self, count: int) -> None:
            self.lo += count
            self._view()

        def _rebuild(self, fn) -> None:
            if self.get_seq_length() > 0:
                self.k_buf, self.v_buf = fn(self.k_buf), fn(self.v_buf)
                self._view()

        def batch_select_indices(self, indices) -> None:
            self._rebuild(lambda buf: buf[indices])

        def batch_repeat_interleave(self, repeats: int) -> None:
            self._rebuild(lambda buf: buf.repeat_interleave(repeats, dim=0))

    _SLOT_LAYER = SlotLayer
    return SlotLayer


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
