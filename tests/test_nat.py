"""NAT: tagging at training time (positive and negative) and the positive tag at inference."""

from __future__ import annotations

import pytest

from agent_align.steps.nat import nat_inference_prompt, nat_sft_rows
from tests.conftest import compose


def rows():
    return [{"id": "train-000000-0", "prompt": "Add 2 and 3.", "chosen": "CALL_OK", "rejected": "CALL_BAD_A",
             "tools": [{"name": "calculator"}]},
            {"id": "train-000000-1", "prompt": "Add 2 and 3.", "chosen": "CALL_OK", "rejected": "CALL_BAD_B",
             "tools": [{"name": "calculator"}]}]


def test_training_rows_carry_positive_and_negative_tags(tmp_path):
    cfg = compose([f"run_dir={tmp_path}", "data.negatives=nat"])
    out = nat_sft_rows(rows(), cfg)
    assert [(r["nat_tag"], r["prompt"], r["completion"]) for r in out] == [
        ("positive", "[Correct] Add 2 and 3.", "CALL_OK"),  # one positive per request
        ("negative", "[Incorrect] Add 2 and 3.", "CALL_BAD_A"),
        ("negative", "[Incorrect] Add 2 and 3.", "CALL_BAD_B")]
    assert all(r["tools"] == [{"name": "calculator"}] for r in out)


def test_tag_wording_and_placement_are_configurable_and_inference_uses_the_positive_tag(tmp_path):
    cfg = compose([f"run_dir={tmp_path}", "nat.positive_tag='<good>'", "nat.negative_tag='<bad>'", "nat.placement=suffix"])
    out = nat_sft_rows(rows()[:1], cfg)
    assert [r["prompt"] for r in out] == ["Add 2 and 3. <good>", "Add 2 and 3. <bad>"]
    assert nat_inference_prompt("Add 2 and 3.", cfg.nat) == "Add 2 and 3. <good>"
    msgs = [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}]
    assert nat_inference_prompt(msgs, cfg.nat)[1]["content"] == "hi <good>" and msgs[1]["content"] == "hi"


def test_failed_samples_and_trajectories_are_tagged_by_success(tmp_path):
    cfg = compose([f"run_dir={tmp_path}"])
    sampled = [{"id": "s1", "prompt": "q", "completion": "good", "success": True},
               {"id": "s2", "prompt": "q", "completion": "bad", "success": False}]
    assert [(r["nat_tag"], r["prompt"]) for r in nat_sft_rows(sampled, cfg)] == [
        ("positive", "[Correct] q"), ("negative", "[Incorrect] q")]
    traj = [{"id": "t", "messages": [{"role": "user", "content": "go"}, {"role": "assistant", "content": "x"}],
             "tools": [], "success": False}]
    [t] = nat_sft_rows(traj, cfg)
    assert t["prompt"] == [{"role": "user", "content": "[Incorrect] go"}] and t["nat_tag"] == "negative"
    assert t["completion"] == [{"role": "assistant", "content": "x"}]


def test_negative_ratio_subsamples_deterministically_and_equal_tags_are_refused(tmp_path):
    many = [{"id": f"r{i}", "prompt": f"q{i}", "chosen": "ok", "rejected": "bad"} for i in range(400)]
    cfg = compose([f"run_dir={tmp_path}", "nat.negatives_per_positive=0.25"])
    negs = [r for r in nat_sft_rows(many, cfg) if r["nat_tag"] == "negative"]
    assert 60 < len(negs) < 140 and negs == [r for r in nat_sft_rows(many, cfg) if r["nat_tag"] == "negative"]
    from agent_align.checks import check_config
    from agent_align.errors import UserError

    with pytest.raises(UserError, match="nat.negative_tag"):
        check_config(compose([f"run_dir={tmp_path}", "nat.negative_tag='[Correct]'"]))
