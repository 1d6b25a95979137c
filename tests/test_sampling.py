"""Sampling with the compacting decoder: generate's distribution while the batch is whole and once rows leave
it, and finished rows really leave it."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest
import torch

from agent_align import generation

NEVER = 1000  # an end-of-turn id outside the vocabulary: no row ends early, the batch stays whole


def _model(vocab=40, scale=1.0, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # peaked, context-dependent next-token distributions: mistakes change them visibly
        model.lm_head.weight.mul_(scale)
    return model


def _prompts(n=12, vocab=40, seed=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, vocab, (int(torch.randint(3, 15, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


def _hf(model, tok, prompts, **kw):
    return generation.generate_ids(model, tok, prompts, desc=None, compact=False, **kw)


def _ours(model, tok, prompts, **kw):
    return generation.generate_ids(model, tok, prompts, desc=None, compact=True, **kw)


def test_draw_follows_the_probabilities(monkeypatch):
    """The inverse-CDF draw: frequencies match the row's probabilities (chi-square over 200k draws per row),
    zero-probability tokens (top-p's cut, the edges of the vocabulary) never come up, and u * total rounding up
    to the total still lands on the last token with any probability."""
    from scipy.stats import chisquare

    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(3, 50) * 2, dim=-1)
    probs[:, :3] = 0  # removed by a warper, at the left edge ...
    probs[1, 40:] = 0  # ... and the right one
    probs[2, 10:20] = 0  # ... and in the middle
    probs /= probs.sum(-1, keepdim=True)
    counts = torch.zeros_like(probs)
    for _ in range(100):
        idx = generation.draw(probs.repeat_interleave(2000, dim=0)).view(3, 2000)
        counts += torch.nn.functional.one_hot(idx, 50).sum(1)
    assert counts[probs == 0].sum() == 0
    for c, p in zip(counts, probs):
        keep = p > 0
        assert chisquare(c[keep].numpy(), (p[keep] * c.sum()).numpy()).pvalue > 1e-3
    skewed = torch.softmax(torch.randn(50), dim=-1)
    assert chisquare(counts[0][probs[0] > 0].numpy(), (skewed[probs[0] > 0] / skewed[probs[0] > 0].sum()
                                                        * counts[0].sum()).numpy()).pvalue < 1e-4

    # u = 1 * total (u * total can round up to it): the guard keeps the draw on the last token with probability
    monkeypatch.setattr(torch, "rand", lambda *a, **k: torch.ones(*a, dtype=k.get("dtype")))
    assert generation.draw(probs).tolist() == [49, 39, 49]


@pytest.mark.parametrize("temperature,top_p,n", [(1.0, 1.0, 3), (0.7, 0.9, 2)])
def test_sampling_draws_generates_distribution_while_the_batch_is_whole(temperature, top_p, n):
    """No row ends: whole sequences per prompt against generate's over thousands of samples, with temperature and
    top-p applied as generate applies them (the same test tells a 1.25x temperature apart). Seeded: reproducible."""
    model, prompts = _model(vocab=8, scale=6.0, seed=1), _prompts(2, vocab=8, seed=5)
    tok = SimpleNamespace(pad_token_id=0, eos_token_id=NEVER)
    kw = dict(max_new_tokens=3, batch_size=2, do_sample=True, temperature=temperature, top_p=top_p,
              num_return_sequences=1500 * n)
    ours = _ours(model, tok, prompts, seed=1, **kw)
    assert all(len(seqs) == 1500 * n for seqs in ours)
    assert _ours(model, tok, prompts, seed=1, **kw) == ours and _ours(model, tok, prompts, seed=2, **kw) != ours
    ours, theirs = _sequences(ours, prompts), _sequences(_hf(model, tok, prompts, seed=2, **kw), prompts)
    assert len(ours) > 20
    assert _same_distribution_p(ours, theirs) > 1e-3
    hotter = _sequences(_ours(model, tok, prompts, seed=1, **{**kw, "temperature": 1.25 * temperature}), prompts)
    assert _same_distribution_p(hotter, theirs) < 1e-4


def _forward_batches(model):
    sizes = []
    model.model.register_forward_pre_hook(lambda mod, args, kwargs: sizes.append(kwargs["input_ids"].shape[0]),
                                          with_kwargs=True)
    return sizes


def test_sampled_rows_that_end_leave_the_batch():
    model, prompts = _model(vocab=12, scale=8.0), _prompts(6, vocab=12)
    tok = SimpleNamespace(pad_token_id=0, eos_token_id=3)
    sizes = _forward_batches(model)
    out = _ours(model, tok, prompts, max_new_tokens=16, batch_size=6, do_sample=True, num_return_sequences=4, seed=0)
    assert sizes[0] == 6  # one prefill per prompt; its cache rows are repeated for the 4 samples
    assert max(sizes[1:]) <= 24 and sizes[-1] < 24 and all(a >= b for a, b in zip(sizes[1:], sizes[2:]))  # shrinking
    lengths = [len(s) for seqs in out for s in seqs]
    # every live row is computed once per step it is in the batch: no step is spent on an ended row
    # beyond the 1/8 slack before a drop, so the row-steps are far below generate's 24 rows x longest
    assert sum(sizes[1:]) <= sum(lengths) * 8 / 7 + 24
    assert sum(sizes[1:]) < 24 * (max(lengths) - 1)
    assert all(3 not in s for seqs in out for s in seqs) and len(set(lengths)) > 2


def _sequences(out, prompts):
    return Counter((tuple(p), tuple(s)) for p, seqs in zip(prompts, out) for s in seqs)


def _same_distribution_p(a: Counter, b: Counter) -> float:
    """Chi-square test of homogeneity over whole sequences, rare ones pooled (expected count >= 5 per cell)."""
    from scipy.stats import chi2_contingency

    keys = sorted(set(a) | set(b), key=lambda k: -(a[k] + b[k]))
    common = [k for k in keys if a[k] + b[k] >= 20]
    rest = (sum(a.values()) - sum(a[k] for k in common), sum(b.values()) - sum(b[k] for k in common))
    table = [[a[k] for k in common] + [rest[0]], [b[k] for k in common] + [rest[1]]]
    if rest == (0, 0):
        table = [row[:-1] for row in table]
    return chi2_contingency(table).pvalue


def test_sampling_keeps_generates_distribution_after_rows_leave(monkeypatch):
    """Rows leave the batch as they end: compare whole sequences per prompt over thousands of samples. The same test tells a 1.25x temperature apart,
    and a compaction that keeps the wrong cache rows: it can fail."""
    from transformers import DynamicCache

    model, prompts = _model(vocab=8, scale=15.0, seed=1), _prompts(2, vocab=8, seed=5)
    tok = SimpleNamespace(pad_token_id=0, eos_token_id=2)
    kw = dict(max_new_tokens=4, batch_size=2, do_sample=True, num_return_sequences=2000)
    selects = []
    real = DynamicCache.batch_select_indices
    monkeypatch.setattr(DynamicCache, "batch_select_indices", lambda self, idx: (selects.append(len(idx)), real(self, idx))[1])
    ours = _sequences(_ours(model, tok, prompts, seed=1, **kw), prompts)
    assert selects, "no row left the batch: the test needs rows that end early"
    theirs = _sequences(_hf(model, tok, prompts, seed=2, **kw), prompts)
    assert len(ours) > 20  # enough distinct sequences for the test to mean something
    assert _same_distribution_p(ours, theirs) > 1e-3

    hotter = _sequences(_ours(model, tok, prompts, seed=1, **{**kw, "temperature": 1.25}), prompts)
    assert _same_distribution_p(hotter, theirs) < 1e-4
    monkeypatch.setattr(DynamicCache, "batch_select_indices", lambda self, idx: real(self, idx.flip(0)))
    shuffled = _sequences(_ours(model, tok, prompts, seed=1, **kw), prompts)
    assert _same_distribution_p(shuffled, theirs) < 1e-4
