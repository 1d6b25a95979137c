"""Agents in the environment: expert modes, branching points and preference files, stage=agent with resume."""

from __future__ import annotations

import json

import pytest

from agent_align.agents.policies import GroundTruthExpert, RandomAgent
from agent_align.agents.runner import Runner
from agent_align.env.environment import OrgEnv, match_judge
from agent_align.env.preferences import step_pairs, trajectory_pairs
from agent_align.errors import UserError
from tests.conftest import CONF, compose

BAD = "I would like to call a tool."


class Scripted:
    """A stand-in agent: ``fn(env) -> reply``; records how many episodes each act() call advanced."""

    def __init__(self, fn):
        self.fn, self.batches = fn, []

    def act(self, envs):
        self.batches.append(len(envs))
        return [self.fn(env) for env in envs]


def rollout(overrides, agent, n=6, expert=None):
    cfg = compose(["agent.split=test", *overrides])
    with OrgEnv(cfg.env) as org:
        tasks = [t for t in org.tasks if t["split"] == "test" and t["answerable"]][:n]
        runner = Runner(org, agent, expert or GroundTruthExpert(), match_judge, cfg.agent)
        return list(runner.run([(t, 0, t["task_id"]) for t in tasks]))


def test_no_expert_agent_acts_alone():
    agent = Scripted(lambda env: BAD)
    recs = rollout([], agent)
    assert all(r["expert_assistance"]["tracker"] == [0] * 6 and r["truncated"] and not r["success"] for r in recs)
    assert agent.batches == [6] * 6  # one act() per step advances all six episodes
    assert recs[0]["expert_assistance"]["mode"] is None and recs[0]["truncated_reason"] == "horizon"


def test_ground_truth_mode_never_asks_the_agent():
    def boom(env):
        raise AssertionError("agent asked in ground_truth mode")
    recs = rollout(["agent.expert_mode=ground_truth"], Scripted(boom))
    assert all(r["success"] and set(r["expert_assistance"]["tracker"]) == {1} for r in recs)


def test_random_mode_follows_epsilon():
    assert all(set(r["expert_assistance"]["tracker"]) == {0} for r in
               rollout(["agent.expert_mode=random", "agent.expert_assist_random_epsilon=0"], Scripted(lambda e: BAD)))
    assert all(r["success"] and set(r["expert_assistance"]["tracker"]) == {1} for r in
               rollout(["agent.expert_mode=random", "agent.expert_assist_random_epsilon=1"], Scripted(lambda e: BAD)))
    half = ["agent.expert_mode=random", "agent.expert_assist_random_epsilon=0.5"]
    a = [r["expert_assistance"]["tracker"] for r in rollout(half, Scripted(lambda e: BAD), n=20)]
    b = [r["expert_assistance"]["tracker"] for r in rollout(half, Scripted(lambda e: BAD), n=20)]
    flat = [x for t in a for x in t]
    assert a == b and 0.25 < sum(flat) / len(flat) < 0.75  # seeded per episode: reproducible
    assert rollout(half, Scripted(lambda e: BAD), n=1)[0]["expert_assistance"]["random_epsilon"] == 0.5


def test_informed_mode_steps_in_after_init_limit_when_recent_steps_failed():
    informed = ["agent.expert_mode=informed", "agent.expert_assist_init_limit=2", "agent.expert_assist_recent_limit=-2",
                "env.horizon=6"]
    recs = rollout(informed, Scripted(lambda env: BAD))
    for r in recs:
        # after each expert step the window holds a success, so the agent gets two more tries
        assert r["expert_assistance"]["tracker"] == [0, 0, 1, 0, 0, 1][:r["total_time_steps"]]
        assert r["expert_assistance"] | {"tracker": None} == {"mode": "informed", "init_limit": 2, "recent_limit": -2,
                                                              "random_epsilon": 0.5, "tracker": None}
    good = rollout(informed, Scripted(lambda env: env.render(env.expert_call())))
    assert all(r["success"] and set(r["expert_assistance"]["tracker"]) == {0} for r in good)
    one = rollout(["agent.expert_mode=informed", "agent.expert_assist_init_limit=0",
                   "agent.expert_assist_recent_limit=-1"], Scripted(lambda env: BAD))
    assert all(r["expert_assistance"]["tracker"][:2] == [0, 1] for r in one)


def test_branching_points_become_step_pairs():
    overrides = ["agent.expert_mode=informed", "agent.expert_assist_init_limit=1", "agent.expert_assist_recent_limit=-1",
                 "agent.save_alternate_trace=true"]
    # the agent gets the first step right, then keeps sending an invalid reply
    agent = Scripted(lambda env: env.render(env.expert_call()) if not env.steps else BAD)
    recs = rollout(overrides, agent, n=4)
    rows = step_pairs(recs)
    assert rows and all(len(r["alternate_traces"]) >= 1 for r in recs)
    for row in rows:
        rec = next(r for r in recs if r["sample_id"] == row["sample_id"])
        assert row["prompt"] == rec["messages"][:len(row["prompt"])] and row["prompt"][-1]["role"] == "tool"
        assert row["rejected"] == [{"role": "assistant", "content": BAD}] and row["rejected_category"] == "invalid_call"
        assert row["chosen"][0]["content"] == json.dumps(json.loads(row["chosen"][0]["content"]))
        assert row["chosen_category"] in ("correct", "correct_final") and row["tools"] == rec["tools"]
    taken = {row["taken_by"] for row in rows}
    assert taken == {"agent", "expert"}  # the agent's own failing step, and the expert's take-over
    assert all(alt["t"] > 0 for r in recs for alt in r["alternate_traces"])  # step 0 matched the expert: no pair


def test_trajectory_pairs_and_masking_of_suboptimal_steps():
    wins = rollout(["agent.expert_mode=informed", "agent.expert_assist_init_limit=0", "env.horizon=8",
                    "agent.expert_assist_recent_limit=-1"], Scripted(lambda env: BAD), n=3)
    losses = rollout([], Scripted(lambda env: BAD), n=3)
    for r in losses:
        r["sample_id"] += "-b"
    assert all(r["success"] for r in wins) and not any(r["success"] for r in losses)
    rows = trajectory_pairs(wins + losses, mask_suboptimal=False, max_per_task=4)
    assert len(rows) == 3 and all(r["prompt"] == r["prompt"][:2] and len(r["prompt"]) == 2 for r in rows)
    assert all(m.get("train", True) for r in rows for m in r["chosen"] + r["rejected"] if m["role"] == "assistant")
    masked = trajectory_pairs(wins + losses, mask_suboptimal=True, max_per_task=4)
    for row in masked:
        flags = [m["train"] for m in row["chosen"] if m["role"] == "assistant"]
        assert flags[0] is False and all(flags[1::2])  # the agent's invalid replies are context, not targets
        assert all(m["train"] for m in row["rejected"] if m["role"] == "assistant")
        assert {m["role"] for m in row["chosen"]} == {"assistant", "tool"}
    assert trajectory_pairs(wins, mask_suboptimal=False, max_per_task=4) == []


def test_random_agent_is_a_weak_but_valid_baseline():
    recs = rollout(["env.horizon=4"], RandomAgent(0), n=12)
    cats = {s["category"] for r in recs for s in r["steps"]}
    assert "invalid_call" in cats and cats & {"correct", "tool_error", "wrong_final", "redundant"}
    assert sum(r["success"] for r in recs) < len(recs)


@pytest.mark.parametrize("override,key", [
    ("agent.expert_assist_recent_limit=2", "agent.expert_assist_recent_limit"),
    ("agent.backend=gpt", "agent.backend"),
    ("agent.expert_mode=sometimes", "agent.expert_mode"),
    ("env.subdomain_mode=graphql", "env.subdomain_mode"),
    ("+env.availability_mix.all_tools=1", "env.availability_mix"),
    ("agent.save_alternate_trace=true", "agent.save_alternate_trace"),
])
def test_config_errors_name_the_key(override, key):
    from agent_align.checks import check_config

    with pytest.raises(UserError, match=f"'{key}'"):
        check_config(compose([override]))


def test_seed_spelling_of_null_expert_mode_is_accepted():
    from agent_align.checks import check_config

    check_config(compose(["agent.expert_mode=None"]))


@pytest.mark.parametrize("group,option", [("agent", p.stem) for p in sorted((CONF / "agent").glob("*.yaml"))] +
                         [("env", p.stem) for p in sorted((CONF / "env").glob("*.yaml"))])
def test_every_env_and_agent_option_composes_and_passes_the_checks(group, option):
    from agent_align.checks import check_config

    overrides = [f"{group}={option}"] + (["env.retrieval_url=http://127.0.0.1:9"] if option == "remote" else [])
    cfg = compose(overrides)
    check_config(cfg)
    assert cfg[group].name == option
