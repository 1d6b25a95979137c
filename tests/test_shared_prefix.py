"""The compacting decoder runs the prefix every prompt shares once: each prompt still decodes as it would alone,
samples are the ones the unshared prefill draws with the same seed, and the shared tokens are not prefilled again."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

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
