"""stage=compare over agentic runs (agentic_summary.json): one row per method on the held-out tasks, SFT
once, standard errors from the episode files. The run directories are built by hand with stage=agent's
record fields and written by the project's own writers (write_json, stage=agent's summarize), so every
number below is known exactly; the last test reads what stage=agent_pipeline itself writes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from agent_align.env.environment import REWARDS
from agent_align.errors import UserError
from agent_align.jsonl import write_json
from agent_align.stages import STAGES
from agent_align.stages.agent import summarize
from agent_align.stages.context import RunContext
from tests.conftest import compose, run_cli

BLOCK_KEYS = ("n", "success_rate", "avg_steps", "valid_call_rate", "policy_violations", "by_scenario",
              "by_tool_availability")
UNANSWERABLE = {"t8", "t9"}  # e.g. only_rag tasks: the correct FINAL says the question cannot be answered
S2, F2 = ["correct", "correct_final"], ["correct", "wrong_final"]

# The SFT evaluation of runs a and b: 3/10 successes (1/8 answerable), 21 steps of which 4 invalid,
# steps per episode [2,3,2,2,3,2,2,3,1,1], one policy violation.
SFT_AB = {"t0": S2, "t1": ["invalid_call", "invalid_call", "wrong_final"], "t2": F2,
          "t3": ["invalid_call", "wrong_final"], "t4": ["correct", "tool_error", "wrong_final"],
          "t5": ["policy_violation", "wrong_final"], "t6": ["invalid_call", "wrong_final"],
          "t7": ["correct", "redundant", "wrong_final"], "t8": ["correct_final"], "t9": ["correct_final"]}
# Run a's method on the same 10 tasks: 4/10; per task vs SFT: t1 +1, t2 +1, t9 -1 (paired).
DPO_A = {"t0": S2, "t1": ["correct", "correct", "correct_final"], "t2": S2, "t3": ["invalid_call", "wrong_final"],
         "t4": F2, "t5": F2, "t6": F2, "t7": F2, "t8": ["correct_final"], "t9": F2}
# Run b's method on 8 of the tasks only (unpaired): 4/8, 16 steps of which 4 invalid.
DPO_B = {**{f"t{i}": S2 for i in range(4)}, **{f"t{i}": ["invalid_call", "wrong_final"] for i in range(4, 8)}}
# Run c trained its own SFT: 2/10.
SFT_C = {**{f"t{i}": F2 for i in range(8)}, "t8": ["correct_final"], "t9": ["correct_final"]}


def episode(task_id: str, cats: list[str]) -> dict:
    """A trajectory record with the fields agent_align.agents.runner.Runner.record writes."""
    answerable = task_id not in UNANSWERABLE
    steps = [{"t": i, "actor": "agent", "action": json.dumps({"tool": f"call{i}", "parameters": {"c": c}}),
              "call": None, "category": c, "validator_category": None, "reward": REWARDS[c], "detail": "",
              "observation": "", "progress": c == "correct"} for i, c in enumerate(cats)]
    task = {"task_id": task_id, "question": f"question {task_id}?", "answer": "x", "answerable": answerable,
            "scenario": "rag_before_api", "tool_availability": "both_api_rag" if answerable else "only_rag",
            "tool_usage": None, "split": "test"}
    return {"sample_id": task_id, "truncated": False, "terminated": True, "success": cats[-1] == "correct_final",
            "total_time_steps": len(steps),
            "expert_assistance": {"mode": None, "init_limit": 1, "recent_limit": -1, "random_epsilon": 0.0,
                                  "tracker": [0] * len(steps)},
            "task_id": task_id, "sample_index": 0, "split": "test", "scenario": task["scenario"],
            "tool_availability": task["tool_availability"], "tool_usage": None, "question": task["question"],
            "gold_answer": "x", "answerable": answerable, "final_answer": "x", "truncated_reason": None,
            "subdomain_mode": "slot_filling", "policy_violations": sum(c == "policy_violation" for c in cats),
            "valid_calls": sum(c != "invalid_call" for c in cats), "reward": sum(REWARDS[c] for c in cats),
            "seconds": 0.01, "steps": steps, "messages": [], "tools": [], "alternate_traces": [], "task": task}


def write_eval(run: Path, name: str, spec: dict[str, list[str]], files: bool = True) -> dict:
    """agentic/<name>/ as stage=agent leaves it; returns its agentic_summary.json block."""
    records = [episode(t, cats) for t, cats in spec.items()]
    summary = summarize(records)
    if files:
        for r in records:
            write_json(run / "agentic" / name / "trajectories" / f"{r['sample_id']}.json", r)
        write_json(run / "agentic" / name / "agent_summary.json", summary)
    return {k: summary[k] for k in BLOCK_KEYS}


def brief(block: dict) -> dict:
    return {k: block[k] for k in ("success_rate", "valid_call_rate", "avg_steps", "policy_violations")}


def make_run(root: Path, name: str, sft: dict, dpo: dict, loss: str, granularity: str = "step",
             overrides: tuple[str, ...] = (), dpo_files: bool = True, **extra) -> Path:
    run = root / name
    before, after = write_eval(run, "eval_sft", sft), write_eval(run, "eval_dpo", dpo, files=dpo_files)
    summary = {"before_dpo": before, "after_dpo": after, "preference_granularity": granularity,
               "sft": {"checkpoint": str(run / "checkpoints" / "sft")},
               "dpo": {"checkpoint": str(run / "checkpoints" / "dpo"), "loss": loss, "final_loss": 0.5},
               "timings": {"sft": 10.0, "dpo": 5.0}, "objective": after["success_rate"], **extra}
    write_json(run / "agentic_summary.json", summary)
    (run / ".hydra").mkdir(parents=True, exist_ok=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["+experiment=agentic_sft_dpo", *overrides]))
    return run


@pytest.fixture
def runs(tmp_path) -> dict[str, Path]:
    root = tmp_path / "runs"
    a = make_run(root, "a", SFT_AB, DPO_A, "rpo", overrides=("dpo.lr=5e-6",))
    b = make_run(root, "b", SFT_AB, DPO_B, "dpo", "trajectory",
                 overrides=("loss=dpo", "agent.preference_granularity=trajectory", "dpo.lr=1e-5"))
    c = make_run(root, "c", SFT_C, {}, "stepwise", dpo_files=False)
    write_json(c / "agentic_summary.json", {**json.loads((c / "agentic_summary.json").read_text()), "after_dpo": {
        "n": 10, "success_rate": 0.6, "avg_steps": 2.5, "valid_call_rate": 0.8, "policy_violations": 2}})
    return {"a": a, "b": b, "c": c}


def compare(tmp_path, *overrides: str) -> tuple[dict, list[dict], str]:
    out = tmp_path / "cmp"
    cfg = compose(["stage=compare", f"compare.out={out}", f"run_dir={tmp_path / 'compare_run'}", *overrides])
    res = STAGES.get("compare")(cfg, RunContext(run_dir=tmp_path / "compare_run"))
    rows = list(csv.DictReader((out / "agent_comparison.csv").open(encoding="utf-8")))
    return res, rows, (out / "agent_comparison.md").read_text(encoding="utf-8")


def num(row: dict, key: str) -> float:
    return float(row[key])


def assert_png(path: Path) -> None:
    from PIL import Image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.size[0] >= 600 and im.size[1] >= 400, (path, im.size)


def test_shared_sft_row_once_and_exact_numbers(tmp_path, runs):
    res, rows, md = compare(tmp_path, f"compare.runs=[{runs['a']},{runs['b']}]")
    assert [r["method"] for r in rows] == ["SFT", "step DPO (rpo, dpo.lr=5e-06)", "trajectory DPO (dpo.lr=1e-05)"]
    assert [r["eval"] for r in rows] == ["eval_sft", "eval_dpo", "eval_dpo"] and rows[0]["run"] == "a, b"
    assert [r["kind"] for r in rows] == ["sft", "method", "method"]
    assert res["agent_rows"] == 3 and res["rows"] == 0  # no single-turn run: no comparison.csv rows
    sft, a, b = rows
    assert (int(sft["n"]), num(sft, "success_rate"), num(sft, "success_se")) == (10, 0.3, 0.144914)
    assert (int(sft["answerable_success"]), int(sft["answerable_n"]), num(sft, "answerable_rate")) == (1, 8, 0.125)
    assert num(sft, "answerable_se") == 0.116927
    assert (int(sft["n_steps"]), num(sft, "valid_call_rate"), num(sft, "valid_call_se")) == (21, 0.809524, 0.085689)
    assert (num(sft, "avg_steps"), num(sft, "avg_steps_se"), int(sft["policy_violations"])) == (2.1, 0.233333, 1)
    assert sft["diff_vs_sft"] == "" and sft["source"] == "trajectories"
    # a: same 10 tasks -> paired; SD of [0,1,1,0,0,0,0,0,0,-1] / sqrt(10) (unpaired would be 0.212132)
    assert (num(a, "success_rate"), num(a, "success_se"), num(a, "diff_vs_sft")) == (0.4, 0.154919, 0.1)
    assert (num(a, "diff_se"), a["diff_se_kind"], int(a["n_paired"])) == (0.179505, "paired", 10)
    assert (int(a["answerable_success"]), num(a, "valid_call_rate"), num(a, "valid_call_se")) == (3, 0.95, 0.048734)
    assert (num(a, "avg_steps"), num(a, "avg_steps_se"), int(a["policy_violations"])) == (2.0, 0.149071, 0)
    # b: 8 of the 10 tasks -> unpaired, sqrt(0.3*0.7/10 + 0.5*0.5/8)
    assert (int(b["n"]), num(b, "success_rate"), num(b, "diff_vs_sft"), num(b, "diff_se")) == (8, 0.5, 0.2, 0.228583)
    assert b["diff_se_kind"] == "unpaired" and b["n_paired"] == "" and num(b, "valid_call_rate") == 0.75
    assert "| SFT | 30.0% ± 14.5 | 1/8 (12.5%) | 81.0% ± 8.6 | 2.10 ± 0.23 | 1 | 10 | - |" in md
    assert ("| step DPO (rpo, dpo.lr=5e-06) | 40.0% ± 15.5 | 3/8 (37.5%) | 95.0% ± 4.9 | 2.00 ± 0.15 | 0 | 10 "
            "| +10.0 ± 18.0 (paired, 10 tasks) |") in md
    assert "| trajectory DPO (dpo.lr=1e-05) | 50.0% ± 17.7 | 4/8 (50.0%) | 75.0% ± 10.8 |" in md
    assert "+20.0 ± 22.9 (unpaired) |" in md and "per-task differences" in md and "Not included" not in md
    for png in ("agent_success.png", "agent_steps.png"):
        assert_png(tmp_path / "cmp" / png)
    assert not (tmp_path / "cmp" / "comparison.csv").exists()


def test_different_sft_evaluations_are_labelled_by_run_and_summary_only_falls_back(tmp_path, runs):
    _, rows, md = compare(tmp_path, f"compare.runs=[{runs['a']},{runs['b']},{runs['c']}]")
    assert [r["method"] for r in rows] == ["SFT [a, b]", "SFT [c]", "step DPO (rpo, dpo.lr=5e-06)",
                                           "trajectory DPO (dpo.lr=1e-05)", "stepwise"]
    sft_c, c = rows[1], rows[4]
    assert num(sft_c, "success_rate") == 0.2
    assert [r["vs"] for r in rows[2:]] == ["SFT [a, b]", "SFT [a, b]", "SFT [c]"]
    # c's method has no trajectory files: its numbers come from after_dpo, the difference is unpaired
    assert c["source"] == "summary" and c["eval"] == "after_dpo (summary)" and c["answerable_n"] == ""
    assert (num(c, "success_rate"), num(c, "success_se"), int(c["n_steps"]), num(c, "valid_call_se")) == \
        (0.6, 0.154919, 25, 0.08)
    assert (num(c, "diff_vs_sft"), num(c, "diff_se"), c["diff_se_kind"], c["avg_steps_se"]) == \
        (0.4, 0.2, "unpaired", "")
    assert "| stepwise* | 60.0% ± 15.5 | - | 80.0% ± 8.0 | 2.50 | 2 | 10 | +40.0 ± 20.0 (unpaired) vs SFT [c] |" \
        in md
    assert "from agentic_summary.json (no trajectory files)" in md


def test_rounds_base_model_and_user_labels(tmp_path):
    run = tmp_path / "runs" / "d"
    base = write_eval(run, "eval_base", {f"t{i}": ["invalid_call", "wrong_final"] for i in range(10)})
    r1 = write_eval(run, "eval_dpo", DPO_A)  # stage=agent_pipeline evaluates round 1 in eval_dpo/
    r2 = write_eval(run, "eval_dpo_r2", {**DPO_A, "t3": S2, "t4": S2})
    make_run(tmp_path / "runs", "d", SFT_AB, DPO_A, "rpo", method="rpo", base=base,
             rounds=[{"round": 1, "pairs": 40, **brief(r1)}, {"round": 2, "pairs": 31, **brief(r2)}])
    summary = json.loads((run / "agentic_summary.json").read_text())
    write_json(run / "agentic_summary.json", {**summary, "after_dpo": r2})  # after_dpo is the last round
    _, rows, md = compare(tmp_path, f"compare.runs=[{run}]")
    assert [(r["method"], r["eval"]) for r in rows] == [
        ("base model", "eval_base"), ("SFT", "eval_sft"), ("step DPO (rpo), round 1", "eval_dpo"),
        ("step DPO (rpo), round 2", "eval_dpo_r2")]  # no third row for after_dpo: it is round 2's evaluation
    assert [num(r, "success_rate") for r in rows] == [0.0, 0.3, 0.4, 0.6]
    assert [r["diff_se_kind"] for r in rows] == ["", "", "paired", "paired"] and num(rows[3], "diff_vs_sft") == 0.3
    assert "| base model | 0.0% ± 0.0 | 0/8 (0.0%) | 50.0% ± 11.2 | 2.00 ± 0.00 | 0 | 10 | - |" in md
    _, rows, _ = compare(tmp_path, f"compare.runs=[{run}]", "compare.labels=[RPO x2]")
    assert [r["method"] for r in rows] == ["base model", "SFT", "RPO x2, round 1", "RPO x2, round 2"]
    with pytest.raises(UserError, match="compare.labels.*one label per run"):
        compare(tmp_path, f"compare.runs=[{run}]", "compare.labels=[x,y]")


def test_round_kept_on_another_world_is_marked_and_after_dpo_adds_no_row(tmp_path):
    run = tmp_path / "runs" / "v"
    r1 = write_eval(run, "eval_dpo", DPO_A)
    r2 = write_eval(run, "eval_dpo_r2", {**DPO_A, "t3": S2, "t4": S2})
    make_run(tmp_path / "runs", "v", SFT_AB, DPO_A, "rpo", method="rpo",
             rounds=[{"round": 1, "pairs": 40, **brief(r1)}, {"round": 2, "pairs": 31, **brief(r2)}])
    s = json.loads((run / "agentic_summary.json").read_text())
    for kept, marked in (("round 1", "step DPO (rpo), round 1, kept"), ("round 2", "step DPO (rpo), round 2, kept"),
                         ("sft", None)):
        after = r1 if kept == "round 1" else r2 if kept == "round 2" else s["before_dpo"]
        write_json(run / "agentic_summary.json", {**s, "after_dpo": after, "selection": {"kept": kept}})
        _, rows, _ = compare(tmp_path, f"compare.runs=[{run}]")
        labels = [r["method"] for r in rows]
        assert len(rows) == 3 and labels[0] == "SFT" and [r["eval"] for r in rows[1:]] == ["eval_dpo", "eval_dpo_r2"]
        assert [x for x in labels if x.endswith(", kept")] == ([marked] if marked else [])


def test_single_round_is_one_row_and_skipped_dpo_is_named(tmp_path):
    run = make_run(tmp_path / "runs", "e", SFT_AB, DPO_A, "rpo", method="rpo")
    s = json.loads((run / "agentic_summary.json").read_text())
    write_json(run / "agentic_summary.json", {**s, "rounds": [{"round": 1, "pairs": 40, **brief(s["after_dpo"])}]})
    _, rows, _ = compare(tmp_path, f"compare.runs=[{run}]")
    assert [r["method"] for r in rows] == ["SFT", "step DPO (rpo)"] and rows[1]["eval"] == "eval_dpo"
    write_json(run / "agentic_summary.json", {**s, "rounds": [], "dpo": {"skipped": "no step pairs"}})
    _, rows, _ = compare(tmp_path, f"compare.runs=[{run}]")
    assert [r["method"] for r in rows] == ["SFT", "step DPO (rpo, DPO skipped)"]


def test_mixed_inputs_get_one_table_each(tmp_path, runs):
    from tests.test_compare import summary as single_turn_summary

    single = tmp_path / "runs" / "single"
    single.mkdir(parents=True)
    (single / "summary.json").write_text(json.dumps(single_turn_summary(0.6, 2.0)))
    empty = tmp_path / "runs" / "empty"
    empty.mkdir()
    res, rows, md = compare(tmp_path, f"compare.runs=[{runs['a']},{single},{empty}]")
    assert [r["method"] for r in rows] == ["SFT", "step DPO (rpo)"]  # only one agentic run: no override differs
    single_rows = list(csv.DictReader((tmp_path / "cmp" / "comparison.csv").open()))
    assert [r["run"] for r in single_rows] == ["single"] and float(single_rows[0]["aligned_sspr"]) == 0.6
    single_md = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "- empty (" in single_md and "- a (" not in single_md  # the agentic run is not "not included" there
    assert "- empty (" in md and "no summary.json or agentic_summary.json" in md
    assert res["skipped"] == ["empty"] and res["rows"] == 1 and res["agent_rows"] == 2
    for png in ("sspr.png", "failures.png", "agent_success.png", "agent_steps.png"):
        assert_png(tmp_path / "cmp" / png)


def test_cli_end_to_end_and_bad_dir_is_one_error_line(tmp_path, runs):
    out = tmp_path / "cli"
    res = run_cli(["stage=compare", f"compare.runs=[{runs['a']},{runs['b']}]", f"compare.out={out}",
                   f"run_dir={tmp_path / 'cli_run'}"], timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = list(csv.DictReader((out / "agent_comparison.csv").open()))
    assert [(r["method"], r["success_rate"], r["diff_se"]) for r in rows] == [
        ("SFT", "0.3", ""), ("step DPO (rpo, dpo.lr=5e-06)", "0.4", "0.179505"),
        ("trajectory DPO (dpo.lr=1e-05)", "0.5", "0.228583")]
    assert_png(out / "agent_success.png")
    bad = tmp_path / "runs" / "bad"
    bad.mkdir()
    (bad / "agentic_summary.json").write_text("{not json")
    res = run_cli(["stage=compare", f"compare.runs=[{bad}]", f"run_dir={tmp_path / 'cli_run'}"], timeout=300)
    assert res.returncode == 2
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "no run has a usable summary.json or agentic_summary.json" in last
    assert "agentic_summary.json is not valid JSON" in last


def test_malformed_trajectory_is_a_user_error(tmp_path, runs):
    (runs["a"] / "agentic" / "eval_dpo" / "trajectories" / "t0.json").write_text("{")
    with pytest.raises(UserError, match=r"eval_dpo/trajectories/t0.json.*malformed trajectory"):
        compare(tmp_path, f"compare.runs=[{runs['a']}]")


def test_reads_what_agent_pipeline_writes(tmp_path, monkeypatch):
    """The real stage=agent_pipeline (trainers and local model replaced: the DPO policy follows the expert,
    the others fail after their first step) writes the run; compare's numbers are the summary's."""
    from agent_align.agents import BACKENDS
    from agent_align.agents.pipeline import run as pipeline

    run = tmp_path / "pipe"
    dpo_ckpt = str(run / "checkpoints" / "dpo")

    def fake_agent(c, ctx):
        good = c.agent.model_path == dpo_ckpt

        class Agent:
            def act(self, envs):
                return [e.render(e.expert_call()) if (good or not e.steps) else "oops" for e in envs]

        return Agent()

    def fake_stage(kind):
        return lambda c, ctx: {"checkpoint": str(ctx.path("checkpoints", kind)), "loss": c.loss.name}

    real_get = STAGES.get
    monkeypatch.setattr(STAGES, "get", lambda n: {"sft": fake_stage("sft"), "dpo": fake_stage("dpo")}.get(n)
                        or real_get(n))
    monkeypatch.setitem(BACKENDS._items, "hf", fake_agent)
    summary = pipeline(compose([f"run_dir={run}", "+experiment=agentic_sft_dpo", "env.n_tasks=24", "agent.limit=8"]),
                       RunContext(run_dir=run))
    monkeypatch.undo()
    _, rows, _ = compare(tmp_path, f"compare.runs=[{run}]")
    blocks = ([summary["base"]] if "base" in summary else []) + [summary["before_dpo"], summary["after_dpo"]]
    # the experiment keeps the policy that does best on another world's tasks: round 1 here, marked kept
    assert summary["selection"]["kept"] == "round 1"
    assert [r["method"] for r in rows][-2:] == ["SFT", "step DPO (rpo), kept"] and len(rows) == len(blocks)
    assert all(r["source"] == "trajectories" for r in rows)
    for row, block in zip(rows, blocks):
        assert int(row["n"]) == block["n"] == 6
        for key in ("success_rate", "valid_call_rate", "avg_steps"):
            assert num(row, key) == pytest.approx(block[key], abs=1e-6), key
        assert int(row["policy_violations"]) == block["policy_violations"]
    assert num(rows[-1], "success_rate") == 1.0 and rows[-1]["diff_se_kind"] == "paired"
