"""The compacting decoder: rows leave the batch and the KV cache as they end, and waiting prompts take their
places (continuous batching)."""

from __future__ import annotations

from typing import Callable, Generator, Sequence

from agent_align.generation.kv_cache import cache_with_room, slotted, trim


def decode_compacting(model, ids, mask, max_new_tokens: int | Sequence[int], eos: int, *,
                      pick: Callable | None = None, n: int = 1, ends_after: Callable[[int, int], bool] | None = None, waiting: Sequence[list[int]] = (),
                      pad: int = 0, refill_at: float | None = None, share_prefix: bool | None = None,
                      progress: Callable[[int], None] | None = None) -> list[list[int]]:
    """Decode a left-padded batch, then the ``waiting`` prompts as rows free up, greedy (``pick=None``: argmax)
    or sampled (``pick``: ``sampler``), computing only rows still going. Returns new tokens per row (``n`` rows
    per prompt, prompt-major: the batch's prompts, then ``waiting``'s), without eos.

    ``model.generate`` keeps every row of the batch until the longest output ends: in an eval batch whose
    outputs averaged 37 of at most 96 tokens, most row-steps were spent on rows already finished. Here a row
    ends on ``eos``, on a token that makes ``ends_after(row, token)`` true (kept), or after ``max_new_tokens``
    (one limit, or one per prompt).
    Several samples per prompt share one prefill: its cache rows are repeated (``batch_repeat_interleave``),
    where ``generate`` prefills each copy. Prompts are prefilled in groups of similar length of at most
    ``PREFILL_TOKENS`` padded tokens, each group cut to its longest prompt (``prefill``).

    Continuous batching: once ``refill_at`` (default ``REFILL_AT``) of the batch's rows have ended, as many
    waiting prompts as fit are prefilled together and their cache rows written into the ended rows' slots,
    right-aligned to the running cache's last column, with a mask hiding the columns before them; positions
    are each row's own, so a row decodes as it would alone. When every row has ended at once the next batch
    starts afresh (as separate calls would). With nothing left waiting, ended rows leave the batch and the
    KV cache (``DynamicCache.batch_select_indices``) once they are an eighth of it. Same tokens as
    ``generate`` for greedy decoding, and the same distribution for sampling (``draw``; tests/test_sampling.py).
    Shared prefix (``share_prefix``, default ``SHARE_PREFIX``): the tokens every prompt of the call starts with (the
    system prompt: 64 of an eval prompt's ~220 tokens) are run once, and each prefill group continues from copies of
    their keys and values, so a row's cache holds ``[prefix | its padding | the rest of its prompt]`` (``prefill``).
    Used only when the model's generation config asks for no other logits processing (``plain_decoding``).
    ``progress(k)``: k rows ended.
    """
    rows = decode_stream(model, ids, mask, max_new_tokens, eos, pick=pick, n=n, ends_after=ends_after, waiting=waiting,
                         pad=pad, refill_at=refill_at, share_prefix=share_prefix)
    while True:
        try:
            next(rows)
        except StopIteration as done:
            return done.value
        if progress is not None:
            progress(1)


def decode_stream(model, ids, mask, max_new_tokens: int | Sequence[int], eos: int, *, pick: Callable | None = None,
                  n: int = 1, ends_after: Callable[[int, int], bool] | None = None, waiting: Sequence[list[int]] = (),
                  pad: int = 0, refill_at: float | None = None, share_prefix: bool | None = None
                  ) -> Generator[tuple[int, list[int]], Sequence[tuple[list[int], int]] | None, list[list[int]]]:
    """``decode_compacting`` as a generator: yields ``(row, new tokens)`` as each output row ends, and takes more
    prompts while it runs: ``send([(prompt ids, max new tokens), ...])`` queues them behind ``waiting`` (their rows
    are numbered on in the order sent), to refill rows as they end. Returns every row's tokens.

    An agent's next turn can so start as soon as its last answer ends, instead of waiting for the slowest answer
    of its time step (``agents.runner``). Prompts sent later share the prefix only if they start with it.
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

    def prefill(ids, mask, cache, shared):
        """Run the left-padded prompts into the empty ``cache``: rows of similar length together (``_chunks``),
        each group cut to its own longest prompt, so padding columns are not computed; their keys and values
        land right-aligned in the batch's rows as one forward would have left them. With a shared prefix each group
        continues from the prefix's cache and its rows land as ``[padding | prefix | padding | rest]``; the mask
        returned says which columns hold tokens."""
        if shared:
            ids, mask = _left_pad(_rows(ids, mask, len(shared)), pad, ids.device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0) + len(shared)
        lengths = mask.sum(-1)
        rows_by_length = torch.argsort(lengths, stable=True)
        groups = _chunks(lengths[rows_by_length].tolist(), PREFILL_TOKENS)
        if (len(groups) == 1 and not shared) or not slotted(cache):
            logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                           **{cache_key: cache}, **head).logits[:, -1]
        else:
            width, logits, p = ids.shape[1], None, len(shared)
            full = mask.new_zeros((ids.shape[0], p + width))
            for lo, hi in groups:
                rows = rows_by_length[lo:hi]
                cut = width - int(lengths[rows].max())
                part = DynamicCache(config=model.config)
                group_mask = mask[rows, cut:]
                if p:
                    for layer, (k, v) in zip(part.layers, shared_kv):
                        layer.update(k.expand(len(rows), -1, -1, -1), v.expand(len(rows), -1, -1, -1))
                    group_mask = torch.cat([group_mask.new_ones((len(rows), p)), group_mask], dim=-1)
                group_logits = model(input_ids=ids[rows, cut:], attention_mask=group_mask,
                                     position_ids=pos[rows, cut:], use_cache=True, **{cache_key: part}, **head).logits[:, -1]
                if logits is None:
                    logits = group_logits.new_empty((ids.shape[0], group_logits.shape[-1]))
                logits[rows] = group_logits
                full[rows, cut:] = group_mask
                for layer, src in zip(cache.layers, part.layers):
                    layer.place(rows, src.keys, src.values, ids.shape[0], p + width)
            mask = full
        return logits.repeat_interleave(n, 0), mask.repeat_interleave(n, 0), pos[:, -1].repeat_interleave(n, 0)

    def start(ids, mask, first_row, shared):
        cache = cache_with_room(model.config, max(budget))
        logits, mask, last = prefill(ids, mask, cache, shared)
        if n > 1:
            cache.batch_repeat_interleave(n)
        return cache, logits, mask, last, list(range(first_row, first_row + ids.shape[0] * n))

    share_prefix = SHARE_PREFIX if share_prefix is None else share_prefix
    refillable = slotted(cache_with_room(model.config, 0))  # and rows can share a prefix, or resume
    prompt_of = [*_rows(ids, mask), *queue]  # prompt index -> its tokens
    shared = _common_prefix(prompt_of) if share_prefix else []
    if len(shared) < SHARED_PREFIX_MIN or not refillable:
        shared = []
    shared_kv = []  # per layer: the prefix's keys and values, [1, kv_heads, prefix, dim]
    if shared:
        prefix_cache = DynamicCache(config=model.config)
        prefix_ids = torch.tensor([shared], device=ids.device)
        model(input_ids=prefix_ids, position_ids=torch.arange(len(shared), device=ids.device)[None], use_cache=True,
              **{cache_key: prefix_cache}, **head)
        shared_kv = [(layer.keys, layer.values) for layer in prefix_cache.layers]

    def sharing(prompts):
        """The shared prefix if every one of ``prompts`` starts with it (prompts sent later may not)."""
        return shared if all(p[:len(shared)] == shared for p in prompts) else []

    def resume(prompts, pasts):
        """Prefill ``prompts`` whose first tokens' keys and values a row that ended left (``pasts``: (count, per
        layer (keys, values) [kv_heads, count, dim])): only the rest of each runs, from a cache of those, and the
        rows land as ``[padding | held | padding | rest]``. Returns (cache, logits, mask, last position)."""
        held = [r for r, _ in pasts]
        width = max(held)
        rest_ids, rest_mask = _left_pad([p[r:] for p, r in zip(prompts, held)], pad, ids.device)
        part = DynamicCache(config=model.config)
        for i, layer in enumerate(part.layers):
            k0 = pasts[0][1][i][0]
            keys = k0.new_zeros((len(prompts), k0.shape[0], width, k0.shape[-1]))
            values = keys.clone()
            for row, (r, kv) in enumerate(pasts):
                keys[row, :, width - r:], values[row, :, width - r:] = kv[i]
            layer.update(keys, values)
        held_mask = rest_mask.new_zeros((len(prompts), width))
        for row, r in enumerate(held):
            held_mask[row, width - r:] = 1
        full = torch.cat([held_mask, rest_mask], dim=-1)
        pos = (rest_mask.cumsum(-1) - 1).clamp(min=0) + torch.tensor(held, device=ids.device)[:, None]
        logits = model(input_ids=rest_ids, attention_mask=full, position_ids=pos, use_cache=True,
                       **{cache_key: part}, **head).logits[:, -1]
        return part, logits, full, pos[:, -1]

    def place(into, src, new_logits, new_mask, new_last, mask):
        """Write prefilled rows (``src``'s cache, ``n`` output rows a prompt) into the batch's ended rows ``into``,
        right-aligned to the last column; returns the batch's mask."""
        width = new_mask.shape[1]
        slot_idx = torch.tensor(into, device=ids.device)
        for layer, part in zip(cache.layers, src.layers):
            layer.admit(slot_idx, part.keys.repeat_interleave(n, 0), part.values.repeat_interleave(n, 0))
        grow = width - mask.shape[1]
        if grow > 0:  # the new prompts are longer than the running cache: it grew on the left (admit)
            mask = torch.cat([mask.new_zeros((mask.shape[0], grow)), mask], dim=-1)
        mask[slot_idx] = 0
        mask[slot_idx, mask.shape[1] - width:] = new_mask
        logits[slot_idx], last[slot_idx] = new_logits.to(logits.dtype), new_last
        return mask

    resumes = n == 1 and refillable and RESUME  # sent prompts reuse what the row they continue holds (``resume``)
    cache, logits, mask, last, live = start(ids, mask, 0, shared)  # live: batch position -> output row
    next_row = len(live)
    past = {}  # prompt index -> what a sent prompt continues of the row that ended before it (``resume``)
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
            if ended[k]:
                more = yield row, out[row]
                for prompt, limit in more or ():
                    if resumes:  # the row's keys and values for the tokens this prompt starts with
                        fed = prompt_of[row] + out[row][:len(out[row]) - (tok != eos)]  # the last token is not fed yet
                        r = min(_common_length(prompt, fed), len(prompt) - 1)
                        if r >= RESUME_MIN:
                            cols = mask[k].nonzero().squeeze(-1)[:r]
                            past[len(budget)] = (r, [(layer.keys[k][:, cols], layer.values[k][:, cols])
                                                     for layer in cache.layers])
                    prompt_of.append(prompt)
                    queue.append(prompt)
                    budget.append(limit)
                    out.extend([] for _ in range(n))
        n_ended = sum(ended)
        if n_ended == len(live):
            if not queue:
                break
            if not any(next_row + j in past for j in range(min(len(queue), len(live)))):
                take, queue = queue[:slots // n], queue[slots // n:]  # all ended at once: a fresh batch
                for j in range(len(take)):
                    past.pop(next_row // n + j, None)
                cache, logits, mask, last, live = start(*_left_pad(take, pad, ids.device), next_row, sharing(take))
                next_row += len(live)
                left, ended = [budget[row // n] for row in live], [False] * len(live)
                continue
            # else the waiting turns resume from rows of this batch: they refill it below, nothing to decode first
        else:
            if n_ended and (not queue or not refillable) and n_ended * 8 >= len(live):  # drop them from batch and cache
                keep_rows = [k for k, e in enumerate(ended) if not e]
                keep = torch.tensor(keep_rows, device=ids.device)
                cache.batch_select_indices(keep)
                live, left = [live[k] for k in keep_rows], [left[k] for k in keep_rows]
                nxt, mask, last, ended = nxt[keep], mask[keep], last[keep], [False] * len(keep_rows)
                mask = trim(cache, mask, ended)
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
            last = last + 1
            logits = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=last[:, None], use_cache=True,
                           **{cache_key: cache}, **head).logits[:, -1]
        free = [k for k, e in enumerate(ended) if e]
        if refillable and queue and len(free) >= max(n, refill_at * len(live)):
            take, queue = queue[:len(free) // n], queue[len(free) // n:]
            into = free[:len(take) * n]
            first = next_row // n  # the prompt index of take[0]
            held = [j for j in range(len(take)) if first + j in past]
            anew = [j for j in range(len(take)) if first + j not in past]
            if anew:
                new_ids, new_mask = _left_pad([take[j] for j in anew], pad, ids.device)
                fresh = cache_with_room(model.config, 0)
                new_logits, new_mask, new_last = prefill(new_ids, new_mask, fresh, sharing([take[j] for j in anew]))
                mask = place([into[j * n + i] for j in anew for i in range(n)], fresh, new_logits, new_mask, new_last,
                             mask)
            if held:  # n == 1
                resumed = resume([take[j] for j in held], [past.pop(first + j) for j in held])
                mask = place([into[j] for j in held], *resumed, mask)
            for j, k in enumerate(into):
                live[k], left[k], ended[k] = next_row + j, budget[(next_row + j) // n], False
            next_row += len(into)
            mask = trim(cache, mask, ended)
    return out


SHARE_PREFIX = True  # hardware.share_prefix; benchmarks/README.md has the measurement
SHARED_PREFIX_MIN = 8  # shorter common prefixes are prefilled with each prompt
RESUME = True  # hardware.resume_turns: a sent prompt reuses the keys and values of the row it continues
RESUME_MIN = 16  # when it starts with at least this many of that row's tokens


def set_share_prefix(enabled: bool) -> None:
    global SHARE_PREFIX
    SHARE_PREFIX = bool(enabled)


def set_resume_turns(enabled: bool) -> None:
    global RESUME
    RESUME = bool(enabled)


REFILL_AT = 0.125  # continuous batching: refill once this share of the batch's rows has ended (benchmarks/README.md)
PREFILL_TOKENS = 2048  # prompt tokens, padding included, per prefill forward (benchmarks/README.md)


def _chunks(lengths: Sequence[int], budget: int) -> list[tuple[int, int]]:
    """Consecutive groups ``[lo, hi)`` of ascending ``lengths``, each as many rows as fit ``budget`` tokens when
    padded to its longest (at least one row a group)."""
    groups, lo = [], 0
    for i, length in enumerate(lengths):
        if i > lo and (i - lo + 1) * length > budget:
            groups.append((lo, i))
            lo = i
    return groups + [(lo, len(lengths))] if lengths else groups


def _rows(ids, mask, skip: int = 0) -> list[list[int]]:
    """The left-padded batch's prompts as token lists, each without its first ``skip`` tokens."""
    return [row[m.bool()].tolist()[skip:] for row, m in zip(ids, mask)]


def _common_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many tokens ``a`` and ``b`` start with alike."""
    k, end = 0, min(len(a), len(b))
    while k < end and a[k] == b[k]:
        k += 1
    return k


def _common_prefix(prompts: Sequence[list[int]]) -> list[int]:
    """The tokens every prompt starts with, leaving each at least its last token (whose logits start decoding)."""
    if len(prompts) < 2:
        return []
    end = min(len(p) for p in prompts) - 1
    for p in prompts[1:]:
        end = min(end, _common_length(p, prompts[0]))
    return list(prompts[0][:max(end, 0)])


def _left_pad(prompts: Sequence[list[int]], pad: int, device):
    import torch

    longest = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), longest), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), longest), dtype=torch.long)
    for row, seq in enumerate(prompts):  # left padding: generation continues right after each prompt
        ids[row, longest - len(seq):] = torch.tensor(seq)
        mask[row, longest - len(seq):] = 1
    return ids.to(device), mask.to(device)
