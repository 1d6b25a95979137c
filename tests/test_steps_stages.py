"""The step-level stages on real files: score_steps (rewarded.jsonl), sample (K samples, best/worst
pairs) and reward_eval (reward_eval.json + plot) on a tiny local checkpoint."""

from __future__ import annotations

import json

import pytest

from agent_align.jsonl import read_jsonl
from agent_align.stages.context import RunContext
from tests.conftest import compose


@pytest.fixture
def run_dir(tmp_path):
    """A run directory with generated react data (40 train prompts, 6 eval)."""
    from agent_align.stages.generate import run as generate

    cfg = compose([f"run_dir={tmp_path}", "data.format=react", "data.n_train=40", "data.n_eval=6",
                   "data.parallel_fraction=0"])  # the step verifier scores one call per answer
    generate(cfg, RunContext(tmp_path))
    return tmp_path


@pytest.fixture
def checkpoint(tmp_path):
    from tests.test_steps_trainer import tiny_lm

    model, tok = tiny_lm()
    path = tmp_path / "tiny_ckpt"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_score_steps_writes_rewarded_rows(run_dir):
    from agent_align.stages.score_steps import run

    cfg = compose([f"run_dir={run_dir}", "data.format=react", "stage=score_steps"])
    out = run(cfg, RunContext(run_dir))
    rows = read_jsonl(run_dir / "rewarded.jsonl")
    assert len(rows) == out["n"] == 40
    assert all(r["chosen_scores"] == [1.0, 1.0] and len(r["chosen_steps"]) == 2 for r in rows)
    assert all(0.0 in r["rejected_scores"] and len(r["rejected_scores"]) == len(r["rejected_steps"]) for r in rows)
    assert out["rejected_with_correct_steps"] > 0.5  # a right thought before a wrong action, mostly
    assert json.loads((run_dir / "score_steps.json").read_text())["chosen_mean_score"] == 1.0


def test_sample_and_reward_eval_on_a_tiny_checkpoint(run_dir, checkpoint):
    from agent_align.stages.reward_eval import run as reward_eval
    from agent_align.stages.sample import run as sample

    common = [f"run_dir={run_dir}", "data.format=react", "hardware.eval_batch_size=8", "hardware.precision=fp32"]
    cfg = compose(common + [f"sample.model_path={checkpoint}", "sample.n_prompts=4", "sample.k=3",
                            "sample.max_new_tokens=6"])
    out = sample(cfg, RunContext(run_dir))
    samples = read_jsonl(run_dir / "samples.jsonl")
    assert out["samples"] == 12 and len(samples) == 4 and all(len(s["samples"]) == 3 for s in samples)
    pairs = read_jsonl(run_dir / "sampled_pairs.jsonl")  # a random model is never right: gold chosen
    assert pairs and all(p["chosen_source"] == "gold" and p["rejected_scores"] for p in pairs)
    assert len(read_jsonl(run_dir / "nat_samples.jsonl")) == 12
    cfg = compose(common + [f"reward_eval.base_model={checkpoint}", f"reward_eval.tuned_model={checkpoint}",
                            "reward_eval.limit=4", "reward_eval.max_new_tokens=6"])
    reward_eval(cfg, RunContext(run_dir))
    got = json.loads((run_dir / "reward_eval.json").read_text())
    assert list(got) == ["base_avg_score", "tuned_avg_score", "improvement", "num_examples"]
    assert got["num_examples"] == 4 and got["improvement"] == 0.0  # same model, greedy: same answers
    assert (run_dir / "reward_eval.png").stat().st_size > 0
