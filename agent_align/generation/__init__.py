"""Batched generation with KV cache and left padding: one call advances many prompts.

    outputs = generate(model, tokenizer, [{"messages": [...], "tools": [...]}, ...], max_new_tokens=96)

Prompts are sorted by length so each batch pads little. ``decode_compacting`` (greedy or sampled) ends a
row at end of turn or, with ``stop_at_call``, once its text holds a complete call (``agent_align.call_end``),
and puts the next waiting prompt in its place (continuous batching); once none wait, ended rows leave the
batch and the KV cache. ``generate_stream`` takes new prompts while it decodes: a multi-turn agent's next turn
joins the batch as soon as its last answer ends.

Modules: ``batched`` (``generate``, ``generate_ids``, ``generate_stream``: the entry points), ``decoder``
(``decode_compacting``, ``decode_stream``), ``kv_cache`` (the decoder's slotted cache), ``sampling`` (``sampler``,
``draw``).
"""

from agent_align.generation.batched import (
    call_budgets,
    call_stop,
    encode_prompts,
    generate,
    generate_by_budget,
    generate_ids,
    generate_stream,
    inference_copy,
    plain_decoding,
    prompt_text,
    set_compact_decoding,
    streams,
)
from agent_align.generation.decoder import decode_compacting, set_resume_turns, set_share_prefix
from agent_align.generation.sampling import draw, sampler

__all__ = ["call_budgets", "call_stop", "decode_compacting", "draw", "encode_prompts", "generate",
           "generate_by_budget", "generate_ids", "generate_stream", "inference_copy", "plain_decoding", "prompt_text",
           "sampler", "set_compact_decoding", "set_resume_turns", "set_share_prefix", "streams"]
