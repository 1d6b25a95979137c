"""Decoding steps without a padding mask pack grouped-query heads (generation/attention.py) and compute what
transformers' sdpa function computes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from agent_align import generation
from agent_align.generation import attention


def _gqa_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0)
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("q_len,masked", [(1, False), (1, True), (5, False), (5, True)])
def test_packed_sdpa_equals_transformers_sdpa(q_len, masked):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    module = SimpleNamespace(num_key_value_groups=3, is_causal=True, training=False)
    g = torch.Generator().manual_seed(q_len)
    q = torch.randn(4, 6, q_len, 8, generator=g)
    k, v = torch.randn(4, 2, 11, 8, generator=g), torch.randn(4, 2, 11, 8, generator=g)
    mask = None
    if masked:
        mask = torch.ones(4, 1, q_len, 11, dtype=torch.bool)
        mask[:2, :, :, :3] = False  # two left-padded rows
    ours, _ = attention.sdpa_packed(module, q, k, v, mask, scaling=0.3)
    theirs, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=0.3)
    assert ours.shape == theirs.shape == (4, q_len, 6, 8)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_unpadded_decoding_uses_packed_heads_and_matches_generate(monkeypatch):
    model = _gqa_model()
    prompts = [[5, 9, 13, 2, 7, 30], [1, 44, 3, 3, 8, 21], [17, 6, 6, 40, 2, 9]]  # one length: no padding mask
    tok = SimpleNamespace(pad_token_id=0, eos_token_id=47)
    packed = []
    real = attention.sdpa_packed

    def spy(module, query, key, value, attention_mask, **kw):
        packed.append(query.shape[2] == 1 and attention_mask is None)
        return real(module, query, key, value, attention_mask, **kw)
    monkeypatch.setattr(attention, "sdpa_packed", spy)
    monkeypatch.setattr(attention, "_REGISTERED", False)  # register the spy
    try:
        ours = generation.generate_ids(model, tok, prompts, max_new_tokens=10, desc=None, compact=True)
    finally:
        monkeypatch.undo()
        attention._REGISTERED = False
    assert any(packed), "no unmasked single-token step reached the packed path"
    assert model.config._attn_implementation == "sdpa"  # restored after decoding
    with torch.inference_mode():
        theirs = model.generate(input_ids=torch.tensor(prompts), attention_mask=torch.ones(3, 6, dtype=torch.long),
                                max_new_tokens=10, do_sample=False, pad_token_id=0, eos_token_id=47)
    assert [s[0] for s in ours] == [row[6:] for row in theirs.tolist()]


def test_other_attention_implementations_are_left_alone():
    model = _gqa_model()
    model.set_attn_implementation("eager")
    with attention.packed_decoding(model):
        assert model.config._attn_implementation == "eager"
    assert model.config._attn_implementation == "eager"
