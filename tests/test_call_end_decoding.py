"""The decoder ends (and drops) rows where the call-end machines say: on a scripted model whose rows emit fixed
token streams, compacting decoding and `generate` stop the same rows, and fail-fast ends prose and no-call rows on
their first token. The machines themselves: tests/test_call_end.py."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import torch

from agent_align import generation
from agent_align.call_end import call_end
from agent_align.validation.validator import validate_output
from tests.test_call_end import SINGLE, cut

# The decoder, on a scripted model: each row emits a fixed token stream; the row's id travels in its KV
# cache, so a wrong row kept after compaction shows up as the wrong text.
CHARS = '{}[]":, \n`abcdefghijklmnopqrstuvwxyz0123456789\\'
EOS = len(CHARS)


class Scripted(torch.nn.Module):
    def __init__(self, scripts: list[str]):
        from transformers import LlamaConfig

        super().__init__()
        self.config = LlamaConfig(vocab_size=EOS + 1, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                                  num_key_value_heads=1)
        self.scripts = [[CHARS.index(c) for c in s] + [EOS] for s in scripts]
        self.batches = []

    def forward(self, input_ids, attention_mask, position_ids, past_key_values, use_cache=True, logits_to_keep=1):
        b, t = input_ids.shape
        self.batches.append(b)
        if past_key_values.get_seq_length() == 0:  # prefill: row r's cache holds r
            kv = torch.arange(b, dtype=torch.float32)[:, None, None, None].expand(b, 1, t, 1)
        else:
            kv = torch.zeros(b, 1, t, 1)
        keys, _ = past_key_values.update(kv.clone(), kv.clone(), 0)
        rows, done = keys[:, 0, 0, 0].long().tolist(), keys.shape[2] - self.prompt_len
        logits = torch.full((b, 1, EOS + 1), -1e9)
        for k, r in enumerate(rows):
            script = self.scripts[r]
            logits[k, 0, script[min(done, len(script) - 1)]] = 0.0
        return SimpleNamespace(logits=logits)


def test_decoder_ends_rows_at_the_complete_call_and_drops_them():
    answers = ['{"tool": "f", "parameters": {"s": "}"}}', '{"tool": "f", "parameters": {"s": "a"}} and then more words',
               '{"a": "\\"}"} xx yy zz', 'prose first {"a": 1} and more', '[{"a": 1}, {"b": 2}]\n\nthis is the end',
               '```json\n{"a": 1}\n```\nthat is all of it']
    scripts = answers * 3
    tok = SimpleNamespace(pad_token_id=EOS, eos_token_id=EOS,
                          decode=lambda ids, skip_special_tokens=True: "".join(CHARS[i] for i in ids if i != EOS))
    prompts = [[1, 2, 3]] * len(scripts)
    runs = {}
    for stop in (None, "json"):
        model = Scripted(scripts)
        model.prompt_len = 3
        out = generation.decode_compacting(model, torch.tensor(prompts), torch.ones(len(prompts), 3, dtype=torch.long),
                                           64, EOS, ends_after=(lambda row, t, m=[call_end("json") for _ in scripts]:
                                                                m[row].feed(CHARS[t])) if stop else None)
        runs[stop] = ([tok.decode(s) for s in out], model.batches)
    (full, full_batches), (stopped, batches) = runs[None], runs["json"]
    assert full == scripts  # the scripted rows came back whole, each with its own text
    expected = [cut("json", list(s)) or s for s in scripts]
    assert stopped == expected
    assert sum(a != b for a, b in zip(stopped, full)) == 12  # four of the six answers stop early
    # the stopped rows left the batch: the last step ran for the longest stopped row, and fewer row-steps ran
    assert len(batches) == max(map(len, stopped)) and sum(batches) < 0.8 * sum(full_batches)
    for s, f in zip(stopped, full):
        assert validate_output(s, SINGLE, "json") == validate_output(f, SINGLE, "json")


def test_compacting_and_generate_stop_the_same_rows():
    """``hardware.compact_decoding=false`` (transformers' generate) stops rows by the same rule, as a
    stopping criterion: greedy outputs are equal either way, and are prefixes of the uncut outputs."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2, pad_token_id=0)).eval()
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1, 39, (int(torch.randint(2, 9, (1,), generator=g)),), generator=g).tolist() for _ in range(40)]
    tok = SimpleNamespace(pad_token_id=0, eos_token_id=39)
    kw = dict(max_new_tokens=16, batch_size=16, desc=None)
    free = generation.generate_ids(model, tok, prompts, compact=True, **kw)
    # the token greedy decoding emits most often reads as "}", every other one as "a": after a "{" prefix,
    # a row's call closes at its first "}" and the row stops on the token after it
    close = Counter(t for seqs in free for t in seqs[0]).most_common(1)[0][0]
    tok.decode = lambda ids, skip_special_tokens=True: "".join("}" if i == close else "a" for i in ids)
    kw.update(stop_at_call="json", text_before=["{"] * len(prompts))
    ours = generation.generate_ids(model, tok, prompts, compact=True, **kw)
    theirs = generation.generate_ids(model, tok, prompts, compact=False, **kw)
    assert ours == theirs
    for (a,), (b,) in zip(ours, free):
        k = b.index(close) + 2 if close in b[:-1] else len(b)
        assert a == b[:k]
    assert sum(len(a[0]) < len(b[0]) for a, b in zip(ours, free)) >= 10


def _decoded_with_and_without_fail_fast(chars: str, fail_fast: str):
    """(tokenizer, free rows, rows with ``fail_fast``) of a random 40-token model whose token i decodes to
    ``chars[i % len(chars)]``; the fail-fast rows are checked equal between ours and ``generate``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2, pad_token_id=0)).eval()
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(1, 39, (int(torch.randint(2, 9, (1,), generator=g)),), generator=g).tolist() for _ in range(40)]
    tok = SimpleNamespace(pad_token_id=0, eos_token_id=39,
                          decode=lambda ids, skip_special_tokens=True: "".join(chars[i % len(chars)] for i in ids))
    kw = dict(max_new_tokens=12, batch_size=16, desc=None)
    free = generation.generate_ids(model, tok, prompts, compact=True, **kw)
    kw.update(stop_at_call="json", fail_fast=fail_fast)
    ours = generation.generate_ids(model, tok, prompts, compact=True, **kw)
    assert generation.generate_ids(model, tok, prompts, compact=False, **kw) == ours
    return tok, free, ours


def test_fail_fast_ends_prose_rows_on_their_first_token():
    """stage=evaluate's strict SSPR: a row whose first token starts prose ends on it, with ours and with
    generate alike, and every row's verdict is the verdict of its uncut text."""
    tok, free, ours = _decoded_with_and_without_fail_fast('{}"a :,\n', "json")
    first_prose = [tok.decode(b[0]).lstrip()[:1] not in "{[\"-0123456789tfnNI`" for b in free]
    assert sum(first_prose) >= 10
    for (a,), (b,), prose in zip(ours, free, first_prose):
        if prose:
            assert a == b[:len(a)] and tok.decode(a).strip() == tok.decode(b).lstrip()[:1]
        assert validate_output(tok.decode(a), SINGLE, "json") == validate_output(tok.decode(b), SINGLE, "json")


def test_bfcl_fail_fast_ends_rows_that_can_decode_to_no_call():
    """stage=evaluate data=bfcl: with ours and with generate alike, a row that can no longer decode to a call ends
    early, keeps a prefix of its free text, and decodes to the same calls (none) as that text."""
    from agent_align.bfcl.parse import parse_calls

    tok, free, ours = _decoded_with_and_without_fail_fast('{}"a (,\n.=1', "bfcl")
    shorter = 0
    for (a,), (b,) in zip(ours, free):
        assert a == b[:len(a)] and parse_calls(tok.decode(a))[0] == parse_calls(tok.decode(b))[0]
        shorter += len(a) < len(b)
    assert shorter >= 10
