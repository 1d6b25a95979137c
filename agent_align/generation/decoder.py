"""The compacting decoder: rows leave the batch and the KV cache as they end, and waiting prompts take their
places (continuous batching)."""

from __future__ import annotations

from typing import Callable, Sequence


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
        if (len(groups) == 1 and not shared) or not _slotted(cache):
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

    def start(ids, mask, first_row):
        cache = _cache_with_room(model.config, max(budget))
        logits, mask, last = prefill(ids, mask, cache)
        if n > 1:
            cache.batch_repeat_interleave(n)
        return cache, logits, mask, last, list(range(first_row, first_row + ids.shape[0] * n))

    share_prefix = SHARE_PREFIX if share_prefix is None else share_prefix
    shared = _common_prefix([*_rows(ids, mask), *queue]) if share_prefix else []
    if len(shared) < SHARED_PREFIX_MIN or not _slotted(_cache_with_room(model.config, 0)):
        shared = []
    shared_kv = []  # per layer: the prefix's keys and values, [1, kv_heads, prefix, dim]
    if shared:
        prefix_cache = DynamicCache(config=model.config)
        prefix_ids = torch.tensor([shared], device=ids.device)
        model(input_ids=prefix_ids, position_ids=torch.arange(len(shared), device=ids.device)[None], use_cache=True,
              **{cache_key: prefix_cache}, **head)
        shared_kv = [(layer.keys, layer.values) for layer in prefix_cache.layers]
    cache, logits, mask, last, live = start(ids, mask, 0)  # live: batch position -> output row
    next_row = len(live)
    refillable = bool(queue) and _slotted(cache)
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
            fresh = _cache_with_room(model.config, 0)
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


SHARE_PREFIX = True  # hardware.share_prefix; benchmarks/README.md has the measurement
SHARED_PREFIX_MIN = 8  # shorter common prefixes are prefilled with each prompt


def set_share_prefix(enabled: bool) -> None:
    global SHARE_PREFIX
    SHARE_PREFIX = bool(enabled)


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


def _common_prefix(prompts: Sequence[list[int]]) -> list[int]:
    """The tokens every prompt starts with, leaving each at least its last token (whose logits start decoding)."""
    if len(prompts) < 2:
        return []
    first = prompts[0]
    end = min(len(p) for p in prompts) - 1
    for p in prompts[1:]:
        k = 0
        while k < end and p[k] == first[k]:
            k += 1
        end = k
    return list(first[:max(end, 0)])


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
    if first > 0 and _slotted(cache):
        for layer in cache.layers:
            layer.drop_columns(first)
        mask = mask[:, first:]
    return mask


def _slotted(cache) -> bool:
    """Every layer of ``cache`` is a ``SlotLayer`` (no sliding-window layers): refills and column drops work."""
    return all(isinstance(layer, _slot_layer()) for layer in cache.layers)


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

        def _start(self, keys, values, rows: int, width: int) -> bool:
            """On an empty cache: buffers for ``rows`` x ``width`` columns plus the room, the view empty. True if
            it was empty."""
            if not self.is_initialized:
                self.lazy_initialization(keys, values)
            if self.keys.numel():
                return False
            h, d = keys.shape[1], keys.shape[3]
            # zeros, not empty: columns a refill exposes are masked, and 0 * NaN would still be NaN
            self.k_buf = keys.new_zeros(rows, h, width + self.room, d)
            self.v_buf = values.new_zeros(rows, h, width + self.room, d)
            self.lo = self.hi = 0
            return True

        def update(self, key_states, value_states, *args, **kwargs):
            self._start(key_states, value_states, key_states.shape[0], key_states.shape[-2])
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

        def place(self, rows, keys, values, batch: int, width: int) -> None:
            """Prefill in groups: write ``rows``' keys and values (their prompts' last columns) right-aligned into
            an empty cache of ``batch`` rows and ``width`` columns, zeros elsewhere (masked padding)."""
            if self._start(keys, values, batch, width):
                self.hi = width
            self.k_buf[rows, :, width - keys.shape[-2]:width] = keys
            self.v_buf[rows, :, width - values.shape[-2]:width] = values
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
