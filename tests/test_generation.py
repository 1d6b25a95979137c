"""Batched greedy decoding that drops finished rows gives exactly what transformers' generate gives."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest
import torch

from agent_align import generation
from agent_align.generation import batched


def _model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0)
    return LlamaForCausalLM(cfg).eval()


def _prompts(n=12):
    g = torch.Generator().manual_seed(3)
    return [torch.randint(1, 40, (int(torch.randint(3, 15, (1,), generator=g)),), generator=g).tolist() for _ in range(n)]


@pytest.mark.parametrize("batch_size", [12, 5])
def test_compacting_decoder_matches_generate_and_drops_finished_rows(monkeypatch, batch_size):
    from transformers import DynamicCache

    model, prompts = _model(), _prompts()
    probe = generation.generate_ids(model, SimpleNamespace(pad_token_id=0, eos_token_id=39), prompts,
                                    max_new_tokens=24, desc=None, compact=False)
    # the token greedy decoding emits most often becomes the end of turn, so rows end at different steps
    eos = Counter(t for seqs in probe for t in seqs[0][:12]).most_common(1)[0][0]
    tok = SimpleNamespace(pad_token_id=0, eos_token_id=eos)
    selects = []
    real = DynamicCache.batch_select_indices
    monkeypatch.setattr(DynamicCache, "batch_select_indices", lambda self, idx: (selects.append(len(idx)), real(self, idx))[1])
    ours = generation.generate_ids(model, tok, prompts, max_new_tokens=24, batch_size=batch_size, desc=None, compact=True)
    assert selects, "no row was dropped: the test needs rows that end early"
    theirs = generation.generate_ids(model, tok, prompts, max_new_tokens=24, batch_size=batch_size, desc=None,
                                     compact=False)
    assert ours == theirs
    lengths = {len(s[0]) for s in ours}
    assert len(lengths) > 1 and max(lengths) <= 24 and all(eos not in s[0] for s in ours)


def test_compacting_is_skipped_when_the_generation_config_processes_logits():
    model = _model()
    assert generation.plain_decoding(model)
    model.generation_config.repetition_penalty = 1.3
    assert not generation.plain_decoding(model)
    calls = []
    orig = batched.decode_compacting
    try:
        batched.decode_compacting = lambda *a, **k: calls.append(1) or orig(*a, **k)
        generation.generate_ids(model, SimpleNamespace(pad_token_id=0, eos_token_id=39), _prompts(3), max_new_tokens=4,
                                desc=None)
    finally:
        batched.decode_compacting = orig
    assert not calls  # transformers' generate applies the penalty instead
