"""stage=analyze: failure table per category and tool, agent step categories, plots, targeted
negatives, and the generator over-sampling them through data.targeted_negatives."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from agent_align.errors import UserError
from agent_align.jsonl import write_jsonl
from agent_align.stages.context import RunContext
from agent_align.steps import analysis

VERDICTS = ([{"id": f"e{i}", "passed": False, "category": "type_mismatch", "tool": "create_task"} for i in range(5)]
            + [{"id": f"f{i}", "passed": False, "category": "json_error", "tool": "get_weather"} for i in range(3)]
            + [{"id": "g", "passed": False, "category": "other_schema_error", "tool": "send_email"}]
            + [{"id": f"p{i}", "passed": True, "category": None, "tool": "get_weather"} for i in range(11)])


def test_failure_table_counts_categories_tools_and_rates():
    t = analysis.failure_table(analysis.join_tools(VERDICTS, None))
    assert (t["n"], t["failed"]) == (20, 9)
    assert t["by_category"]["type_mismatch"] == 5 and t["by_category"]["json_error"] == 3
    assert list(t["by_tool"])[0] == "create_task" and t["by_tool"]["get_weather"]["fail_rate"] == pytest.approx(3 / 14)
    assert t["cells"][0] == {"tool": "create_task", "category": "type_mismatch", "count": 5}


def test_tools_are_joined_from_eval_rows_when_verdicts_lack_them():
    v = [{"id": "a", "passed": False, "category": "wrong_tool"}]
    joined = analysis.join_tools(v, [{"id": "a", "tool": "book_hotel", "split": "unseen"}])
    assert joined[0]["tool"] == "book_hotel" and joined[0]["split"] == "unseen"


def test_targeted_negatives_take_the_most_frequent_producible_modes():
    t = analysis.failure_table(analysis.join_tools(VERDICTS, None))
    tn = analysis.targeted_negatives(t, top_k=2, boost=4.0)
    assert tn["negative_types"] == {"type_mismatch": 4.0, "json_error": 4.0, "unstructured": 4.0}
    assert tn["tools"] == {"create_task": 4.0, "get_weather": 4.0}  # other_schema_error has no generator
    unseen = [{**v, "split": "unseen"} if v["tool"] == "create_task" else v for v in VERDICTS]
    t2 = analysis.failure_table(analysis.join_tools(unseen, None))
    assert "create_task" not in analysis.targeted_negatives(t2, top_k=2, boost=4.0)["tools"]  # held out: never trained


def test_agent_step_categories_are_counted_per_category_and_tool():
    trajs = [{"steps": [{"category": "correct", "call": {"tool": "get_weather"}},
                        {"category": "invalid_call", "validator_category": "type_mismatch",
                         "call": {"tool": "create_task"}}, {"category": "correct_final"}]}]
    s = analysis.step_categories(trajs)
    assert s["by_category"] == {"correct": 1, "invalid_call/type_mismatch": 1, "correct_final": 1}
    assert {"tool": "create_task", "category": "invalid_call/type_mismatch", "count": 1} in s["by_tool"]


def test_stage_writes_table_plots_and_a_targeted_file_the_generator_uses(tmp_path, cfg_factory):
    from agent_align.data.generator import Generator
    from agent_align.stages.analyze import run

    write_jsonl(tmp_path / "verdicts_aligned.jsonl", VERDICTS)
    (tmp_path / "traj").mkdir()
    (tmp_path / "traj" / "s1.json").write_text(json.dumps({"steps": [{"category": "redundant"}]}))
    cfg = cfg_factory("analyze.top_k=1", f"analyze.trajectories={tmp_path / 'traj'}")
    out = run(cfg, RunContext(tmp_path))
    for f in ("failure_modes.md", "failure_modes.json", "failures_by_category.png", "failures_by_tool.png",
              "targeted_negatives.json", "step_categories.png"):
        assert (tmp_path / "analysis" / f).stat().st_size > 0, f
    assert "| type_mismatch | 5 |" in (tmp_path / "analysis" / "failure_modes.md").read_text()
    assert out["step_categories"]["by_category"] == {"redundant": 1}
    base = Generator(cfg_factory().data, 0)
    targeted = Generator(cfg_factory(f"data.targeted_negatives={out['targeted_negatives_path']}").data, 0)
    n = 300
    b = Counter(r["negative_type"] for r in base.rows("train", n))
    t_rows = list(targeted.rows("train", n))
    t = Counter(r["negative_type"] for r in t_rows)
    assert t["type_mismatch"] > 2 * b["type_mismatch"]
    assert sum(r["tool"] == "create_task" for r in t_rows) > 2 * sum(r["tool"] == "create_task" for r in base.rows("train", n))
    assert list(base.rows("eval", 20)) == list(targeted.rows("eval", 20))  # eval data is never targeted


def test_missing_verdicts_and_bad_targeted_files_fail_with_the_fix(tmp_path, cfg_factory):
    from agent_align.stages.analyze import run
    from agent_align.steps.targeted import load_targeted

    with pytest.raises(UserError, match="no verdicts.*analyze.verdicts=FILE"):
        run(cfg_factory(), RunContext(tmp_path))
    bad = tmp_path / "t.json"
    bad.write_text(json.dumps({"negative_types": {"typo_mismatch": 2}}))
    with pytest.raises(UserError, match="unknown negative types.*valid:"):
        load_targeted(str(bad))
    with pytest.raises(UserError, match="file not found.*data.targeted_negatives"):
        load_targeted(str(tmp_path / "nope.json"))
