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


def test_training_steps_resumed_count_from_the_checkpoint_and_show_seconds_per_step(caplog):
    """A resumed run's steps before the checkpoint count towards the total, not the rate; steps slower than a second
    read as s/step; the note (the trainer's latest loss) ends the line."""
    caplog.set_level(logging.INFO, logger="agent_align.progress")
    clock = Clock()
    with Progress(40, "dpo", unit="step", clock=clock, initial=10, bar=False) as bar:
        for i in range(30):
            clock.t += 12.0
            bar.update(1, note=f"loss {0.7 - i / 100:.4g}")
    lines = _lines(caplog)
    assert lines[0] == "dpo: 13/40 steps (32%), 12.0 s/step, ETA 5.4 min, loss 0.68"  # 30 s passed
    assert lines[-1] == "dpo: 40/40 steps in 6.0 min (12.0 s/step)"


def test_step_progress_callback_logs_a_trainers_steps(caplog):
    from types import SimpleNamespace as NS

    from agent_align.train.common import step_progress

    caplog.set_level(logging.INFO, logger="agent_align.progress")
    cb, state = step_progress("sft"), NS(max_steps=6, global_step=2, is_world_process_zero=True)
    cb.on_train_begin(None, state, None)
    for step in range(3, 7):
        state.global_step = step
        cb.on_log(None, state, None, logs={"loss": 1.0 / step})
        cb.on_step_end(None, state, None)
    cb.on_train_end(None, state, None)
    assert cb.bar.done == 6 and cb.note == "loss 0.1667"
    assert _lines(caplog)[-1].startswith("sft: 6/6 steps in ")
    other = step_progress("sft")  # other ranks of a distributed run log nothing
    other.on_train_begin(None, NS(max_steps=6, global_step=0, is_world_process_zero=False), None)
    assert other.bar is None


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
