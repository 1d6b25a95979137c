"""sdpa for decoding steps without a mask: grouped-query heads packed, as transformers does with a mask.

For a single query token, transformers' sdpa function folds the query heads that share a key/value head into a
3-row query (``pack_gqa``) when there is a padding mask, but passes ``enable_gqa=True`` when there is none (no
left padding in the batch: one prompt's samples, prompts of one length, rows left after compaction). On CPU that
kernel is ~4x slower for the same work: measured on a 2-core AMD EPYC (AVX512-bf16) for 48 rows x 9 query / 3
key-value heads x 400 cached tokens x 64 dims in bf16, 12.9 ms a layer against 3.0 ms packed (the masked packed
call also takes 3.0 ms). A SmolLM2-135M decoding step of 48 unpadded rows spent 70% of its time there
(benchmarks/README.md). ``sdpa_packed`` packs in that case too and hands everything else to transformers'
function unchanged: it computes the same thing with the same kernel family (tests/test_decode_attention.py).
"""

from __future__ import annotations

import contextlib
import logging

log = logging.getLogger(__name__)

NAME = "agent_align_sdpa"


def sdpa_packed(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                is_causal: bool | None = None, **kwargs):
    """transformers' attention-function signature: ``query`` [rows, heads, q_len, dim], ``key``/``value``
    [rows, kv_heads, keys, dim]; returns ([rows, q_len, heads, dim], None)."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
    rows, heads, q_len, dim = query.shape
    plain = all(kwargs.get(k) is None for k in ("softcap", "position_bias")) and not kwargs.get("output_attentions")
    if q_len == 1 and groups > 1 and attention_mask is None and not dropout and plain and query.device.type == "cpu":
        out = torch.nn.functional.scaled_dot_product_attention(
            query.reshape(rows, heads // groups, groups, dim), key, value, scale=scaling)
        return out.reshape(rows, heads, 1, dim).transpose(1, 2).contiguous(), None
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  is_causal=is_causal, **kwargs)


_REGISTERED = False


def _register() -> None:
    global _REGISTERED
    if not _REGISTERED:
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

        AttentionInterface.register(NAME, sdpa_packed)
        ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)  # the masks sdpa gets
        _REGISTERED = True


@contextlib.contextmanager
def packed_decoding(model):
    """While decoding: ``model``'s sdpa attention as ``sdpa_packed``, restored after. Models on another
    attention implementation (eager, flash) are left alone."""
    config = getattr(model, "config", None)
    switch = getattr(config, "_attn_implementation", None) == "sdpa" and hasattr(model, "set_attn_implementation")
    if switch:
        _register()
        try:
            model.set_attn_implementation(NAME)
        except (ValueError, NotImplementedError, AttributeError) as err:  # a model class that refuses custom functions
            log.debug("decoding with sdpa as it is: %s", err)
            switch = False
    try:
        yield model
    finally:
        if switch:
            model.set_attn_implementation("sdpa")
