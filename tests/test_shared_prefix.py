"""The compacting decoder runs the prefix every prompt shares once: each prompt still decodes as it would alone,
samples are the ones the unshared prefill draws with the same seed, and the shared tokens are not prefilled again."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from agent_align import generation
from agent_align.generation import decoder
from tests.test_refill import _decode_batches, _eos_that_ends_rows_early
from tests.test_sampling import _model, _prompts

PREFIX = [5, 17, 3, 29, 11, 8, 23, 2, 31, 14]


def _shared_prompts(n=16, seed=7):
    return [PREFIX + p for p in _prompts(n, vocab=40, seed=seed)]


def _prefilled_tokens(shapes) -> int:
    return sum(rows * width for rows, width in shapes if width > 1)


@pytest.mark.parametrize("batch_size,prefill_tokens,n", [(16, 2048, 1), (5, 2048, 1), (5, 40, 1), (6, 40, 3)])
def test_shared_prefix_decodes_as_the_unshared_prefill(monkeypatch, batch_size, prefill_tokens, n):
    model = _model(vocab=40)
    prompts = _shared_prompts()
    tok = SimpleNamespace(pad_token_id=0, eos_token_id=_eos_that_ends_rows_early(model, prompts))
    monkeypatch.setattr(decoder, "PREFILL_TOKENS", prefill_tokens)
    kw = dict(max_new_tokens=24, batch_size=batch_size, desc=None, compact=True)
    if n > 1:
        kw.update(do_sample=True, num_return_sequences=n, seed=3)
    monkeypatch.setattr(decoder, "SHARE_PREFIX", False)
    shapes = _decode_batches(model)
    unshared = generation.generate_ids(model, tok, prompts, **kw)
    unshared_tokens = _prefilled_tokens(shapes)
    shapes.clear()
    monkeypatch.setattr(decoder, "SHARE_PREFIX", True)
    shared = generation.generate_ids(model, tok, prompts, **kw)
    assert shapes[0] == (1, len(PREFIX)), "the prefix is not run once on its own"
    # the shared tokens are prefilled once in all, not once a prompt (groups pad a little differently either way)
    assert _prefilled_tokens(shapes) < unshared_tokens - len(prompts) * len(PREFIX) // 2
    assert shared == unshared
    lengths = {len(s) for seqs in shared for s in seqs}
    assert len(lengths) > 2, "rows did not end at different steps"
    if n == 1:  # greedy: each row as generate decodes its prompt alone
        for p, seqs in zip(prompts, shared):
            assert seqs == generation.generate_ids(model, tok, [p], max_new_tokens=24, desc=None, compact=False)[0]


def test_no_sharing_below_the_minimum_or_for_one_prompt(monkeypatch):
    model = _model(vocab=40)
    tok = SimpleNamespace(pad_token_id=0, eos_token_id=1000)
    shapes = _decode_batches(model)
    short = [PREFIX[:decoder.SHARED_PREFIX_MIN - 1] + p for p in _prompts(6, vocab=40, seed=2)]
    generation.generate_ids(model, tok, short, max_new_tokens=4, desc=None, compact=True)
    assert shapes[0][0] == len(short), "a prefix below SHARED_PREFIX_MIN was run on its own"
    shapes.clear()
    generation.generate_ids(model, tok, _shared_prompts(1), max_new_tokens=4, desc=None, compact=True)
    assert shapes[0] == (1, len(_shared_prompts(1)[0]))


def test_common_prefix_leaves_every_prompt_a_token():
    assert decoder._common_prefix([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 3, 4, 9]]) == [1, 2, 3]
    assert decoder._common_prefix([[1, 2, 3], [1, 2, 3, 4]]) == [1, 2]  # the shorter prompt keeps its last token
    assert decoder._common_prefix([[1, 2], [2, 2]]) == []
    assert decoder._common_prefix([[1, 2, 3]]) == []
    assert decoder._common_prefix([]) == []


@pytest.mark.parametrize("share,resume", [(True, True), (False, True), (True, False)])
def test_prompts_sent_while_decoding_decode_as_they_would_alone(monkeypatch, share, resume):
    """``generate_stream``: each ended answer is sent back a follow-up prompt (its prompt, its answer and a new
    token, as an agent's next turn), some without the prefix the first batch shares; each follow-up joins the
    running batch, reusing the keys and values its row left (``resume``) unless it dropped the prefix, and every
    answer is the one its prompt decodes alone."""
    model = _model(vocab=40)
    with torch.no_grad():  # sharp attention: a token's position (its rotation) changes what it attends to
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(8)
            layer.self_attn.k_proj.weight.mul_(8)
    first = _shared_prompts(8)
    tok = SimpleNamespace(pad_token_id=0, eos_token_id=_eos_that_ends_rows_early(model, first))
    monkeypatch.setattr(decoder, "SHARE_PREFIX", share)
    monkeypatch.setattr(decoder, "RESUME", resume)
    monkeypatch.setattr(decoder, "RESUME_MIN", 4)
    shapes = _decode_batches(model)
    stream = generation.generate_stream(model, tok, list(enumerate(first)), max_new_tokens=24, batch_size=4)
    prompts, answers, sent = dict(enumerate(first)), {}, None
    while True:
        try:
            key, ids = stream.send(sent)
        except StopIteration:
            break
        answers[key] = ids
        sent = []
        if key < 24:  # follow-ups: every third one drops the shared prefix
            nxt = key + 8
            prompts[nxt] = (prompts[key] + ids + [7])[len(PREFIX) if nxt % 3 == 0 else 0:]
            sent = [(nxt, prompts[nxt])]
    assert sorted(answers) == list(range(32))
    assert max(rows for rows, _ in shapes) <= 4 and sum(1 for _, width in shapes if width > 1) > 8  # refills
    prefilled = sum(rows * width for rows, width in shapes if width > 1)
    follow_ups = sum(len(p) for key, p in prompts.items() if key >= 8 and key % 3)
    if resume:  # only what a follow-up adds to its row's tokens (and the whole of those that dropped the prefix)
        assert prefilled < sum(len(p) for key, p in prompts.items() if key < 8 or key % 3 == 0) + follow_ups // 4
    else:
        assert prefilled > follow_ups
    for key, p in prompts.items():
        alone = generation.generate_ids(model, tok, [p], max_new_tokens=24, desc=None, compact=False)
        assert answers[key] == alone[0][0]
