"""Progress lines in the log at a bounded rate, and the generation call sites that report through them."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import torch

from agent_align.progress import Progress


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "agent_align.progress"]


def test_progress_logs_every_tenth_or_thirty_seconds_never_faster_than_five(caplog):
    caplog.set_level(logging.INFO, logger="agent_align.progress")
    clock = Clock()
    with Progress(1000, "on-policy samples", unit="sample", clock=clock) as bar:
        for _ in range(1000):  # 1 sample per 0.1 s: a tenth of the total every 10 s
            clock.t += 0.1
            bar.update(1)
    lines = _lines(caplog)
    assert len(lines) == 10  # 9 at 10%, 20%, ... 90%, and the closing line
    assert lines[0] == "on-policy samples: 100/1000 samples (10%), 10.00 samples/s, ETA 90 s"
    assert lines[-1] == "on-policy samples: 1000/1000 samples in 1.7 min (10.00 samples/s)"

    caplog.clear()
    clock = Clock()
    with Progress(1000, "eval", unit="prompt", clock=clock) as bar:
        for _ in range(100):  # slow: 1 prompt per 2 s, so 30 s pass long before a tenth is done
            clock.t += 2.0
            bar.update(1)
    lines = _lines(caplog)
    assert len(lines) == 200 // 30 + 1 and "15/1000 prompts (2%)" in lines[0] and "ETA 32.8 min" in lines[0]

    caplog.clear()
    clock = Clock()
    with Progress(1000, "fast", clock=clock) as bar:
        for _ in range(1000):  # fast: tenths every 0.2 s, at most one line per 5 s
            clock.t += 0.002
            bar.update(1)
    assert len(_lines(caplog)) == 1


def test_progress_without_a_description_stays_silent(caplog):
    caplog.set_level(logging.INFO, logger="agent_align.progress")
    with Progress(3, None) as bar:
        bar.update(3)
    assert _lines(caplog) == []


def test_generation_reports_progress_in_the_log(caplog):
    from transformers import LlamaConfig, LlamaForCausalLM

    from agent_align import generation

    caplog.set_level(logging.INFO, logger="agent_align.progress")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, pad_token_id=0)).eval()
    tok = SimpleNamespace(pad_token_id=0, eos_token_id=39)
    generation.generate_ids(model, tok, [[1, 2, 3]] * 5, max_new_tokens=3, batch_size=2, do_sample=True,
                            num_return_sequences=2, desc="on-policy samples (round 0)", seed=0)
    assert len(_lines(caplog)) == 1 and _lines(caplog)[0].startswith("on-policy samples (round 0): 10/10 samples in ")


def test_stages_pass_the_call_stop_from_the_config():
    from agent_align.generation import call_stop
    from tests.conftest import compose

    assert call_stop(compose([])) == compose([]).data.format
    assert call_stop(compose(["data.format=react"])) == "react"
    assert call_stop(compose(["evaluate.stop_at_call_end=false"])) is None
