"""The decoder's KV cache: full-attention layers whose keys and values live in a buffer with room for new tokens,
that take refilled rows into ended rows' slots and drop leading columns no running row attends to."""

from __future__ import annotations


def trim(cache, mask, ended):
    """Drop the cache's leading columns that no running row attends to (a view: nothing is copied), so attention
    spans the live rows' tokens, not every column since the first batch began."""
    alive = [k for k, e in enumerate(ended) if not e]
    if not alive:
        return mask
    first = int(mask[alive].any(0).to(mask.dtype).argmax())
    if first > 0 and slotted(cache):
        for layer in cache.layers:
            layer.drop_columns(first)
        mask = mask[:, first:]
    return mask


def slotted(cache) -> bool:
    """Every layer of ``cache`` is a ``SlotLayer`` (no sliding-window layers): refills and column drops work."""
    return all(isinstance(layer, slot_layer()) for layer in cache.layers)


def cache_with_room(config, room: int):
    """A ``DynamicCache`` whose full-attention layers (``_SlotLayer``) write new tokens into room left after the
    prompt, and take in refilled rows.

    ``DynamicLayer.update`` concatenates, copying the whole cache every step: measured on SmolLM2-135M (bf16,
    96 rows, 250 cached tokens) that was a third of a decoding step (0.36 -> 0.25 CPU-s with the room).
    Attention reads a view of the filled part; dropping and repeating rows act on the whole buffer.
    """
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache(config=config)
    cache.layers = [slot_layer()(room) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


_SLOT_LAYER = None


def slot_layer():
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
