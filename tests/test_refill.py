"""Continuous batching in the compacting decoder: rows that end are refilled with waiting prompts, each refilled
row decodes as it would alone, and sampling keeps generate's distribution."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest
import torch

from agent_align import generation
from agent_align.generation import decoder, kv_cache
from tests.test_sampling import (
    NEVER,
    _model,
    _prompts,
    _same_distribution_p,
    _sequences,
)


def _decode_batches(model):
    """(rows, new tokens) of every forward: prefills have more than one token, decoding steps one."""
    shapes = []
    model.model.register_forward_pre_hook(lambda mod, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)),
                                          with_kwargs=True)
    return shapes


def _eos_that_ends_rows_early(model, prompts):
    probe = generation.generate_ids(model, SimpleNamespace(pad_token_id=0, eos_token_id=1000), prompts,
                                    max_new_tokens=24, desc=None, compact=False)
    return Counter(t for seqs in probe for t in seqs[0][:12]).most_common(1)[0][0]


@pytest.mark.parametrize("batch_size", [3, 5])
def test_refilled_rows_decode_greedily_as_they_would_alone(batch_size):
    model = _model(vocab=40)
    prompts = _prompts(16, vocab=40, seed=7)
    tok = SimpleNamespace(pad_token_id=0, eos_token_id=_eos_that_ends_rows_early(model, prompts))
    shapes = _decode_batches(model)
    ours = generation.generate_ids(model, tok, prompts, max_new_tokens=24, batch_size=batch_size, desc=None,
                                   compact=True)
    refills = [s for s in shapes[1:] if s[1] > 1]
    assert refills and any(r[0] < batch_size for r in refills), "no prompt was admitted into a running batch"
    for p, seqs in zip(prompts, ours):
        alone = generation.generate_ids(model, tok, [p], max_new_tokens=24, desc=None, compact=False)
        assert seqs == alone[0]
    lengths = {len(s[0]) for s in ours}
    assert len(lengths) > 2 and max(lengths) <= 24


@pytest.mark.parametrize("batch_size,n", [(16, 1), (5, 1), (6, 3)])
def test_prefill_in_length_groups_skips_padding_and_decodes_as_one_forward(monkeypatch, batch_size, n):
    """``PREFILL_TOKENS`` small: the batch and every refill are prefilled in groups of similar length, each cut to
    its own longest prompt; greedy rows still equal each prompt decoded alone, and samples equal the one-forward
    prefill's with the same seed (same draws on the same logits up to float rounding)."""
    model = _model(vocab=40)
    prompts = _prompts(16, vocab=40, seed=7)
    tok = SimpleNamespace(pad_token_id=0, eos_token_id=_eos_that_ends_rows_early(model, prompts))
    kw = dict(max_new_tokens=24, batch_size=batch_size, desc=None, compact=True)
    if n > 1:
        kw.update(do_sample=True, num_return_sequences=n, seed=3)
    whole = generation.generate_ids(model, tok, prompts, **kw)
    monkeypatch.setattr(decoder, "PREFILL_TOKENS", 24)
    shapes = _decode_batches(model)
    grouped = generation.generate_ids(model, tok, prompts, **kw)
    prefills = [s for s in shapes if s[1] > 1]
    longest = max(map(len, prompts))
    assert len(prefills) > -(-len(prompts) // batch_size), "no batch was prefilled in groups"
    assert all(rows * width <= max(24, width) for rows, width in prefills)
    assert sum(rows * width for rows, width in prefills) < len(prompts) * longest  # padding columns not computed
    assert grouped == whole
    if n == 1:
        for p, seqs in zip(prompts, grouped):
            assert seqs == generation.generate_ids(model, tok, [p], max_new_tokens=24, desc=None, compact=False)[0]


def test_length_groups():
    assert decoder._chunks([], 10) == []
    # 3 x 4 = 12 tokens fit; 4 x 5 and then 3 x 9 do not
    assert decoder._chunks([3, 3, 4, 5, 5, 9], 12) == [(0, 3), (3, 5), (5, 6)]
    assert decoder._chunks([2, 2, 2], 100) == [(0, 3)]


def test_the_batch_stays_full_while_prompts_wait():
    model, prompts = _model(vocab=12, scale=8.0), _prompts(40, vocab=12)
    tok = SimpleNamespace(pad_token_id=0, eos_token_id=3)
    shapes = _decode_batches(model)
    kw = dict(max_new_tokens=16, batch_size=4, do_sample=True, num_return_sequences=3, seed=0, desc=None, compact=True)
    out = generation.generate_ids(model, tok, prompts, **kw)
    steps = [b for b, t in shapes if t == 1]
    prefills = [b for b, t in shapes if t > 1]
    assert prefills[0] == 4 and len(prefills) > 40 // 4  # prompts were admitted in more, smaller groups than batches
    lengths = [len(s) for seqs in out for s in seqs]
    # while prompts wait, a step runs the 12 slots (ended ones wait at most for an eighth to be free, or for
    # a whole prompt's 3 rows); the batch only shrinks at the end
    full = [i for i, b in enumerate(steps) if b == 12]
    assert len(full) > 0.8 * len(steps) and steps[:full[-1]] == [12] * full[-1]
    assert sum(steps) < 1.25 * sum(lengths) + 12 * 16  # row-steps ~ tokens decoded, not batches x longest
    batchwise = sum(max(len(s) for p in range(i, min(i + 4, 40)) for s in out[p]) * 3 * len(out[i:i + 4])
                    for i in range(0, 40, 4))
    assert sum(steps) < 0.8 * batchwise
    assert generation.generate_ids(model, tok, prompts, **kw) == out  # seeded: reproducible
    assert generation.generate_ids(model, tok, prompts, **{**kw, "seed": 1}) != out


def test_sampling_with_refills_keeps_generates_distribution(monkeypatch):
    """Many copies of two prompts, 4 samples each, rows ending at different steps: waiting prompts keep being
    admitted into ended rows' slots. Whole sequences per prompt against generate's over thousands of samples;
    the same test tells apart refilled rows whose prompt's keys and values were not written."""
    model, (p, q) = _model(vocab=8, scale=15.0, seed=1), _prompts(2, vocab=8, seed=5)
    prompts = [p, q] * 300
    tok = SimpleNamespace(pad_token_id=0, eos_token_id=2)
    kw = dict(max_new_tokens=4, batch_size=40, do_sample=True, num_return_sequences=4, desc=None)
    layer = kv_cache.slot_layer()
    admitted = []
    real = layer.admit
    monkeypatch.setattr(layer, "admit", lambda self, slots, k, v: (admitted.append(len(slots)), real(self, slots, k, v))[1])
    ours = _sequences(generation.generate_ids(model, tok, prompts, compact=True, seed=1, **kw), prompts)
    assert sum(admitted) > 2 * len(prompts), "too few rows were refilled: the test needs rows that end early"
    theirs = _sequences(generation.generate_ids(model, tok, prompts, compact=False, seed=2, **kw), prompts)
    assert len(ours) > 20
    assert _same_distribution_p(ours, theirs) > 1e-3

    monkeypatch.setattr(layer, "admit", lambda self, slots, k, v: real(self, slots, k * 0, v * 0))
    crossed = _sequences(generation.generate_ids(model, tok, prompts, compact=True, seed=1, **kw), prompts)
    assert _same_distribution_p(crossed, theirs) < 1e-4


def test_a_longer_waiting_prompt_widens_the_cache(monkeypatch):
    """Prompts run shortest first, so a refill is often longer than the running cache's span: it grows on the
    left (here into a new buffer, there being no room), and every row decodes as it would alone."""
    model = _model(vocab=40)
    prompts = [[5, 6], [7, 8, 9], list(range(1, 31)), list(range(2, 32))]
    stop_after = {0: 2, 2: 3}  # output row -> its last token: rows 0 and 2 end early, the others run to 24
    made = Counter()

    def ends_after(row, tok):
        made[row] += 1
        return made[row] == stop_after.get(row)

    layer = kv_cache.slot_layer()
    moves = []
    real = layer._move
    monkeypatch.setattr(layer, "_move", lambda self, left, size: (moves.append(left), real(self, left, size))[1])
    ids, mask = decoder._left_pad(prompts[:2], 0, "cpu")
    with torch.inference_mode():
        out = generation.decode_compacting(model, ids, mask, 24, NEVER, ends_after=ends_after, waiting=prompts[2:])
    assert any(left > 0 for left in moves), "the cache never grew on the left"
    tok = SimpleNamespace(pad_token_id=0, eos_token_id=NEVER)
    assert [len(s) for s in out] == [2, 24, 3, 24]
    for p, s in zip(prompts, out):
        alone = generation.generate_ids(model, tok, [p], max_new_tokens=24, desc=None, compact=False)[0][0]
        assert s == alone[:len(s)]
