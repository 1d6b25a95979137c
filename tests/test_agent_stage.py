"""stage=agent end to end: trajectory files with seed 003's metadata, summary, preference files, resume."""

from __future__ import annotations

import json

from agent_align.__main__ import run
from tests.conftest import compose

METADATA = {"sample_id", "truncated", "terminated", "success", "total_time_steps", "expert_assistance"}
SUMMARY = {"n", "success_rate", "avg_steps", "valid_call_rate", "policy_violations", "by_scenario",
           "by_tool_availability"}


def stage(tmp_path, *overrides):
    return run(compose([f"run_dir={tmp_path}", "stage=agent", *overrides]))


def test_expert_run_writes_trajectories_summary_and_sft_rows(tmp_path):
    summary = stage(tmp_path, "agent=expert", "agent.split=test")
    files = sorted((tmp_path / "trajectories").glob("*.json"))
    assert len(files) == summary["n"] == 50 and summary["success_rate"] == 1.0
    rec = json.loads(files[0].read_text())
    assert METADATA <= set(rec) and rec["sample_id"] == files[0].stem
    assert set(rec["expert_assistance"]) == {"mode", "init_limit", "recent_limit", "random_epsilon", "tracker"}
    assert rec["expert_assistance"]["mode"] == "ground_truth" and rec["total_time_steps"] == len(rec["steps"])
    assert all({"category", "reward", "actor", "observation"} <= set(s) for s in rec["steps"])
    on_disk = json.loads((tmp_path / "agent_summary.json").read_text())
    assert SUMMARY <= set(on_disk) and on_disk["valid_call_rate"] == 1.0 and on_disk["policy_violations"] == 0
    assert set(on_disk["by_scenario"]) == {"rag_before_api", "api_before_rag"}
    assert set(on_disk["by_tool_availability"]) <= {"both_api_rag", "only_rag", "only_api", "neither_api_rag"}
    assert on_disk["expert_step_fraction"] == 1.0 and on_disk["episodes_per_s"] > 0
    sft = [json.loads(line) for line in (tmp_path / "sft" / "trajectories.jsonl").read_text().splitlines()]
    assert len(sft) == 50 and all(set(r) >= {"messages", "tools"} for r in sft)
    assert all(m["train"] for r in sft for m in r["messages"] if m["role"] == "assistant")


def test_resume_from_a_run_runs_only_missing_episodes(tmp_path):
    first = tmp_path / "first"
    stage(first, "agent=expert", "agent.split=test", "agent.limit=10")
    for p in sorted((first / "trajectories").glob("*.json"))[:3]:
        p.unlink()  # as if the run had been interrupted
    second = tmp_path / "second"
    summary = stage(second, "agent=expert", "agent.split=test", "agent.limit=10", f"agent.resume_from={first}")
    assert summary["episodes_run"] == 3 and summary["n"] == 10
    assert len(list((second / "trajectories").glob("*.json"))) == 10
    again = stage(second, "agent=expert", "agent.split=test", "agent.limit=10")  # resume=auto: nothing left to do
    assert again["episodes_run"] == 0 and again["n"] == 10 and again["success_rate"] == 1.0


def test_informed_random_agent_writes_both_preference_files(tmp_path):
    summary = stage(tmp_path, "agent.backend=random", "agent.expert_mode=informed", "agent.save_alternate_trace=true",
                    "agent.trajectory_pairs=true", "agent.mask_suboptimal_traces=true", "agent.num_samples=2",
                    "agent.split=train", "agent.limit=12", "agent.expert_assist_init_limit=1",
                    "agent.expert_assist_recent_limit=-2", "env.horizon=5")
    assert summary["n"] == 24 and 0 < summary["expert_step_fraction"] < 1
    names = {p.stem for p in (tmp_path / "trajectories").glob("*.json")}
    assert len(names) == 24 and all(n.endswith(("-s0", "-s1")) for n in names)
    steps = [json.loads(x) for x in (tmp_path / "preferences" / "step_pairs.jsonl").read_text().splitlines()]
    assert len(steps) == summary["step_pairs"] > 0
    assert all({"prompt", "chosen", "rejected", "tools"} <= set(r) and r["granularity"] == "step" for r in steps)
    traj = [json.loads(x) for x in (tmp_path / "preferences" / "trajectory_pairs.jsonl").read_text().splitlines()]
    assert len(traj) == summary["trajectory_pairs"] > 0  # two random samples of a task: one won, one lost
    for r in traj:
        assert r["chosen_sample_id"].rsplit("-s", 1)[0] == r["rejected_sample_id"].rsplit("-s", 1)[0] == r["task_id"]
        assert r["mask_suboptimal_traces"] and any(m.get("train") for m in r["rejected"] if m["role"] == "assistant")


def test_experiment_composes_and_pipeline_wires_the_stages(tmp_path, monkeypatch):
    """The orchestration with the trainers and the local model replaced: which files and checkpoints each
    stage gets. (The real run is measured in docs/agent_env.md; it takes minutes.)"""
    from agent_align.agents import BACKENDS
    from agent_align.agents.pipeline import run as pipeline
    from agent_align.checks import check_config
    from agent_align.jsonl import read_jsonl
    from agent_align.stages import STAGES
    from agent_align.stages.context import RunContext

    # one round: the wiring of each stage (rounds: tests/test_agent_pipeline_rounds.py)
    cfg = compose([f"run_dir={tmp_path}", "+experiment=agentic_sft_dpo", "env.n_tasks=24", "agent.limit=8", "dpo.rounds=1"])
    check_config(cfg)
    assert cfg.stage == "agent_pipeline" and cfg.agent.backend == "hf" and cfg.model.max_length == 768
    seen = {}

    class Agent:  # right on the first step of each episode, then an invalid reply
        def act(self, envs):
            seen.setdefault("models", set()).add(cfg_holder["path"])
            return [env.render(env.expert_call()) if not env.steps else "oops" for env in envs]

    cfg_holder = {}

    def fake_agent(c, ctx):
        cfg_holder["path"] = c.agent.model_path
        return Agent()

    def fake_sft(c, ctx):
        seen["sft_rows"] = read_jsonl(c.data.train_path, required=("messages", "tools"))  # agent.sft_rows=trajectories
        return {"checkpoint": str(ctx.path("checkpoints", "sft"))}

    def fake_dpo(c, ctx):
        seen["dpo_rows"] = read_jsonl(c.data.train_path, required=("prompt", "chosen", "rejected", "schema"))
        seen["dpo_from"] = c.dpo.policy_from
        return {"checkpoint": str(ctx.path("checkpoints", "dpo"))}

    real_get = STAGES.get
    monkeypatch.setattr(STAGES, "get", lambda name: {"sft": fake_sft, "dpo": fake_dpo}.get(name) or real_get(name))
    monkeypatch.setitem(BACKENDS._items, "hf", fake_agent)
    summary = pipeline(cfg, RunContext(run_dir=tmp_path))
    assert seen["sft_rows"] and all(r["messages"][-1]["role"] == "assistant" for r in seen["sft_rows"])
    assert seen["dpo_rows"] and seen["dpo_from"] == str(tmp_path / "checkpoints" / "sft")
    assert seen["models"] == {None, str(tmp_path / "checkpoints" / "sft"), str(tmp_path / "checkpoints" / "dpo")}
    assert set(summary) >= {"base", "before_dpo", "after_dpo", "informed", "timings", "rounds"}
    assert summary["informed"]["step_pairs"] == len(seen["dpo_rows"]) and summary["before_dpo"]["n"] == 6
    assert json.loads((tmp_path / "agentic_summary.json").read_text())["after_dpo"] == summary["after_dpo"]
