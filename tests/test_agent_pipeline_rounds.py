"""stage=agent_pipeline beyond one DPO round: dpo.rounds (rollouts of the latest policy, new pairs, DPO
from it, an evaluation after each round), NAT (data.negatives=nat: a tagged SFT instead of DPO, evaluated
with the positive tag) and the base model's evaluation. Trainers and the local model are replaced, so
these check the wiring: which checkpoint each run uses, which file each trainer reads, what is reported."""

from __future__ import annotations

import json

import pytest

from agent_align.jsonl import read_jsonl
from tests.conftest import compose


class FakeLoop:
    """The hf agent and the sft/dpo stages replaced. The agent follows the expert on step 0 and then
    replies ``wrong`` (garbage by default), except for the policies in ``good``, which follow the expert
    throughout."""

    def __init__(self, monkeypatch, good=(), wrong="oops"):
        from agent_align.agents import BACKENDS
        from agent_align.stages import STAGES

        self.runs, self.sft, self.dpo, self.good, self.prompts, self.wrong = [], [], [], set(good), {}, wrong
        self.worlds = []
        real_get = STAGES.get
        monkeypatch.setattr(STAGES, "get", lambda n: {"sft": self.fake_sft, "dpo": self.fake_dpo}.get(n) or real_get(n))
        monkeypatch.setitem(BACKENDS._items, "hf", self.fake_agent)

    def fake_agent(self, c, ctx):
        from agent_align.agents.llm import LLMAgent

        path = c.agent.model_path
        self.runs.append((path, c.agent.split, c.agent.expert_mode, c.agent.prompt_tag))
        self.worlds.append(c.env.world_seed)
        loop = self

        class Backend:
            def complete(self, chats):
                loop.prompts.setdefault(path, []).extend(ch["messages"][1]["content"] for ch in chats)
                return [None] * len(chats)

        class Agent(LLMAgent):  # the real prompt building (tag included), a scripted reply
            def act(self, envs):
                self.backend.complete([self.chat(e) for e in envs])
                return [e.render(e.expert_call()) if (not e.steps or path in loop.good) else loop.wrong for e in envs]

        return Agent(Backend(), c.agent.prompt_tag, c.nat.placement)

    def fake_sft(self, c, ctx):
        self.sft.append((c.data.train_path, read_jsonl(c.data.train_path, required=("messages", "tools"))))
        return {"checkpoint": str(ctx.path("checkpoints", "sft"))}

    def fake_dpo(self, c, ctx):
        self.dpo.append((c.data.train_path, c.dpo.policy_from, c.dpo.rounds))
        return {"checkpoint": str(ctx.path("checkpoints", "dpo"))}


def pipeline(tmp_path, *overrides):
    from agent_align.agents.pipeline import run
    from agent_align.checks import check_config
    from agent_align.stages.context import RunContext

    cfg = compose([f"run_dir={tmp_path}", "+experiment=agentic_sft_dpo", "env.n_tasks=24", "agent.limit=6",
                   *overrides])
    check_config(cfg)
    return run(cfg, RunContext(run_dir=tmp_path))


def test_rounds_chain_policies_and_report_success_after_each(tmp_path, monkeypatch):
    sft, r1 = str(tmp_path / "checkpoints" / "sft"), str(tmp_path / "checkpoints" / "dpo")
    r2 = str(tmp_path / "agentic" / "round2" / "checkpoints" / "dpo")
    fake = FakeLoop(monkeypatch, good={r2})
    summary = pipeline(tmp_path, "dpo.rounds=2", "evaluate.base=false", "agent.val_world_seed=null")  # the last round
    assert fake.runs == [(sft, "test", None, None), (sft, "train", "informed", None), (r1, "test", None, None),
                         (r1, "train", "informed", None), (r2, "test", None, None)]
    assert fake.dpo == [(str(tmp_path / "agentic" / "informed" / "preferences" / "step_pairs.jsonl"), sft, 1),
                        (str(tmp_path / "agentic" / "informed_r2" / "preferences" / "step_pairs.jsonl"), r1, 1)]
    rounds = summary["rounds"]
    assert [r["round"] for r in rounds] == [1, 2] and all(r["pairs"] > 0 for r in rounds)
    assert rounds[1]["success_rate"] > rounds[0]["success_rate"]  # only round 2's policy follows the expert
    assert summary["after_dpo"]["success_rate"] == rounds[1]["success_rate"] == 1.0
    assert (tmp_path / "agentic" / "eval_dpo_r2" / "agent_summary.json").exists() and "base" not in summary
    assert set(summary["timings"]) >= {"informed", "dpo", "after", "informed_r2", "dpo_r2", "after_r2"}


@pytest.mark.parametrize("good,kept", [("r2", "round 2"), ("", "sft")])  # "": all fail alike, the tie keeps SFT
def test_val_world_picks_the_policy_kept_and_after_dpo_is_its_test_evaluation(tmp_path, monkeypatch, good, kept):
    """agent.val_world_seed: SFT and every round also run on another world's test tasks; the best there is kept
    (ties keep the earlier), and after_dpo is that policy's evaluation on the real test tasks."""
    ckpt = {"sft": str(tmp_path / "checkpoints" / "sft"), "r1": str(tmp_path / "checkpoints" / "dpo"),
            "r2": str(tmp_path / "agentic" / "round2" / "checkpoints" / "dpo")}
    fake = FakeLoop(monkeypatch, good={ckpt[good]} if good else set())
    summary = pipeline(tmp_path, "dpo.rounds=2", "evaluate.base=false", "env.world_seed=3", "agent.val_world_seed=5")
    val_runs = [r for r, w in zip(fake.runs, fake.worlds) if w == 5]
    assert val_runs == [(ckpt[p], "test", None, None) for p in ("sft", "r1", "r2")]  # after SFT and each round
    assert [r for r, w in zip(fake.runs, fake.worlds) if w == 3] == [
        (ckpt["sft"], "test", None, None), (ckpt["sft"], "train", "informed", None), (ckpt["r1"], "test", None, None),
        (ckpt["r1"], "train", "informed", None), (ckpt["r2"], "test", None, None)]  # the loop itself unchanged
    sel = summary["selection"]
    assert sel["kept"] == kept and sel["val_world_seed"] == 5 and sel["val_n"] == 6
    assert list(sel["val_success_rate"]) == ["sft", "round 1", "round 2"]
    assert (sel["val_success_rate"]["round 2"] > sel["val_success_rate"]["sft"]) == (kept == "round 2")
    assert sel["checkpoint"] == ckpt["sft" if kept == "sft" else "r2"]
    test_eval = summary["before_dpo"] if kept == "sft" else summary["rounds"][1]
    assert summary["after_dpo"]["success_rate"] == test_eval["success_rate"] == summary["objective"]
    assert [r["val_success_rate"] for r in summary["rounds"]] == [sel["val_success_rate"]["round 1"],
                                                                 sel["val_success_rate"]["round 2"]]
    val = json.loads((tmp_path / "agentic" / "val_dpo_r2" / "agent_summary.json").read_text())
    assert val["n"] == 6 and set(summary["timings"]) >= {"val_sft", "val", "val_r2"}


def test_val_world_must_differ_from_the_test_world_and_needs_generated_tasks(tmp_path):
    from agent_align.checks import check_config
    from agent_align.errors import UserError

    with pytest.raises(UserError, match=r"'agent.val_world_seed' = 0: that is env.world_seed"):
        check_config(compose([f"run_dir={tmp_path}", "+experiment=agentic_sft_dpo", "agent.val_world_seed=0"]))
    with pytest.raises(UserError, match=r"'agent.val_world_seed' = 1: env.tasks_path=t.jsonl"):
        check_config(compose([f"run_dir={tmp_path}", "+experiment=agentic_sft_dpo", "agent.val_world_seed=1",
                              "env.tasks_path=t.jsonl"]))


def test_nat_trains_tagged_rows_from_the_base_and_evaluates_with_the_positive_tag(tmp_path, monkeypatch):
    nat_ckpt = str(tmp_path / "agentic" / "nat" / "checkpoints" / "sft")
    fake = FakeLoop(monkeypatch)
    summary = pipeline(tmp_path, "data.negatives=nat", "dpo.rounds=1", "agent.mirror_pairs=false", "evaluate.base=false")
    assert not fake.dpo and len(fake.sft) == 2
    nat_path, rows = fake.sft[1]
    assert nat_path == str(tmp_path / "agentic" / "nat" / "data" / "nat_sft.jsonl")
    pos = [r for r in rows if r["nat_tag"] == "positive"]
    neg = [r for r in rows if r["nat_tag"] == "negative"]
    assert len(pos) == len(fake.sft[0][1]) and neg
    first_user = lambda r: next(m["content"] for m in r["messages"] if m["role"] == "user")  # noqa: E731
    assert all(first_user(r).startswith("[Correct] ") for r in pos)
    assert all(first_user(r).startswith("[Incorrect] ") for r in neg)
    for r in neg:  # only the policy's mistake (the last turn) is trained; earlier turns are context
        trained = [m.get("train") for m in r["messages"] if m["role"] == "assistant"]
        assert trained[-1] is True and not any(trained[:-1]) and r["messages"][-1]["content"] == "oops"
    assert fake.runs[-1] == (nat_ckpt, "test", None, "[Correct]")
    assert all(p.startswith("[Correct] ") for p in fake.prompts[nat_ckpt])
    assert not any(p.startswith("[") for p in fake.prompts[str(tmp_path / "checkpoints" / "sft")])
    assert summary["method"] == "nat" and summary["rounds"][0]["round"] == 1


def test_mirror_pairs_in_the_pipeline_come_from_the_expert_run(tmp_path, monkeypatch):
    """The informed run's successes alone would rarely hold the state a mirror needs; agent_pipeline gives
    it the expert run's episodes, so each premature FINAL gets its mirror from the expert's success."""
    premature = '{"tool": "FINAL", "parameters": {"answer": "42"}}'
    fake = FakeLoop(monkeypatch, wrong=premature)
    pipeline(tmp_path, "agent.mirror_pairs=true", "evaluate.base=false")
    rows = read_jsonl(tmp_path / "agentic" / "informed" / "preferences" / "step_pairs.jsonl")
    experts = {p.stem for p in (tmp_path / "agentic" / "expert" / "trajectories").glob("*.json")}
    mirrors = [r for r in rows if r["taken_by"] == "mirror"]
    assert mirrors and all(m["sample_id"] in experts for m in mirrors) and fake.dpo
    assert all(json.loads(m["chosen"][0]["content"])["tool"] == "FINAL" != json.loads(m["rejected"][0]["content"])["tool"]
               for m in mirrors)

def test_base_model_is_evaluated_first_when_evaluate_base(tmp_path, monkeypatch):
    fake = FakeLoop(monkeypatch)
    summary = pipeline(tmp_path)
    assert fake.runs[0] == (None, "test", None, None)
    assert summary["base"]["n"] == 6 and (tmp_path / "agentic" / "eval_base" / "agent_summary.json").exists()
    assert json.loads((tmp_path / "agentic_summary.json").read_text())["base"] == summary["base"]


@pytest.mark.parametrize("placement,expect", [("prefix", "[OK] What"), ("suffix", "? [OK]")])
def test_prompt_tag_is_put_on_the_task_message(placement, expect):
    from agent_align.agents.llm import LLMAgent

    class Env:
        sample_index = 0

        def chat(self):
            return {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "What?"}], "tools": []}

    chat = LLMAgent(None, "[OK]", placement).chat(Env())
    assert expect in chat["messages"][1]["content"] and chat["messages"][0]["content"] == "s"
    assert LLMAgent(None).chat(Env())["messages"][1]["content"] == "What?"


def test_nat_with_dpo_rounds_fails_at_start_naming_the_key(tmp_path):
    from tests.conftest import run_cli

    out = run_cli([f"run_dir={tmp_path}", "+experiment=agentic_sft_dpo", "data.negatives=nat", "dpo.rounds=2"])
    assert out.returncode == 2 and out.stderr.strip().splitlines()[-1].startswith("error: config key 'dpo.rounds' = 2")
    assert not (tmp_path / "agentic").exists()


def test_final_anchors_balance_premature_finals_with_the_correct_final_of_a_success(tmp_path):
    """Each step pair whose rejected turn is a premature FINAL gets an anchor from a success of the same
    task: at the state of its correct FINAL, that FINAL over repeating its last successful call."""
    from agent_align.__main__ import run

    summary = run(compose([f"run_dir={tmp_path}", "stage=agent", "agent.backend=random", "agent.expert_mode=informed",
                           "agent.save_alternate_trace=true", "agent.final_anchors=true", "agent.split=train",
                           "agent.limit=40", "agent.expert_assist_init_limit=1", "agent.expert_assist_recent_limit=-1",
                           "agent.num_samples=2", "env.horizon=6"]))
    rows = read_jsonl(tmp_path / "preferences" / "step_pairs.jsonl")
    anchors = [r for r in rows if r["taken_by"] == "anchor"]
    premature = [r for r in rows if r["taken_by"] != "anchor" and r["rejected_category"] == "wrong_final"
                 and r["chosen_category"] != "correct_final"]
    episodes = [json.loads(p.read_text()) for p in (tmp_path / "trajectories").glob("*.json")]
    won = {e["task_id"] for e in episodes if e["success"] and any(s["category"] == "correct" for s in e["steps"])}
    assert premature and anchors and summary["final_anchors"] == len(anchors)
    for i, r in enumerate(rows):  # interleaved: an anchor follows the premature FINAL it balances
        if r["taken_by"] == "anchor":
            assert rows[i - 1] in premature and rows[i - 1]["task_id"] == r["task_id"]
    assert len(anchors) == sum(r["task_id"] in won for r in premature)
    for a in anchors:
        final, repeat = json.loads(a["chosen"][0]["content"]), json.loads(a["rejected"][0]["content"])
        task = next(e["task"] for e in episodes if e["task_id"] == a["task_id"])
        assert final["tool"] == "FINAL" and final["parameters"]["answer"] == task["answer"]
        episode = next(e for e in episodes if e["sample_id"] == a["sample_id"])
        good = [s["action"] for s in episode["steps"] if s["category"] == "correct"]
        assert a["prompt"][-1]["role"] == "tool" and a["rejected"][0]["content"] == good[-1]
        assert repeat["tool"] != "FINAL" and a["schema"] is not None
    off = run(compose([f"run_dir={tmp_path / 'off'}", "stage=agent", "agent.backend=random", "agent.expert_mode=informed",
                       "agent.save_alternate_trace=true", "agent.split=train", "agent.limit=40",
                       "agent.expert_assist_init_limit=1", "agent.expert_assist_recent_limit=-1", "agent.num_samples=2",
                       "env.horizon=6"]))
    assert off["final_anchors"] == 0 and off["step_pairs"] == len(rows) - len(anchors)



def test_mirror_pairs_follow_each_tool_pair_with_the_reverse_preference_where_the_other_tool_was_right(tmp_path):
    """A pair "A, not B" at step k is followed by "B, not A" from a success (here mostly the expert's run,
    given as agent.pair_runs) of another task whose step k was a right B call: chosen = that call, rejected =
    the episode's own A call, or the pair's FINAL when A was FINAL. Without such a task: the same task, at
    a step where B was right, rejected = repeating an earlier call."""
    from agent_align.__main__ import run
    from agent_align.env.preferences import _answer, _tool

    common = ["stage=agent", "agent.split=train", "agent.limit=60", "env.horizon=6"]
    run(compose([f"run_dir={tmp_path / 'expert'}", *common, "agent.expert_mode=ground_truth"]))
    experts = {e["sample_id"]: e for e in map(lambda p: json.loads(p.read_text()),
                                                (tmp_path / "expert" / "trajectories").glob("*.json"))}
    summary = run(compose([f"run_dir={tmp_path / 'informed'}", *common, "agent.backend=random",
                           "agent.expert_mode=informed", "agent.save_alternate_trace=true", "agent.mirror_pairs=true",
                           f"agent.pair_runs=[{tmp_path / 'expert'}]", "agent.expert_assist_init_limit=1",
                           "agent.expert_assist_recent_limit=-1", "agent.num_samples=2"]))
    rows = read_jsonl(tmp_path / "informed" / "preferences" / "step_pairs.jsonl")
    mirrors = [r for r in rows if r["taken_by"] == "mirror"]
    assert mirrors and summary["mirror_pairs"] == len(mirrors) and summary["final_anchors"] == 0
    tool = lambda side: _tool(side[0]["content"], "json")  # noqa: E731
    kinds = set()
    for i, m in enumerate(rows):
        if m["taken_by"] != "mirror":
            continue
        pair = rows[i - 1]
        a, b = tool(pair["chosen"]), tool(pair["rejected"])
        assert pair["taken_by"] != "mirror" and a != b and tool(m["chosen"]) == b and tool(m["rejected"]) != b
        if m["sample_id"] in experts:  # the state and the chosen turn are the successful episode's own
            e = experts[m["sample_id"]]
            assert [x["content"] for x in e["messages"][:len(m["prompt"])]] == [x["content"] for x in m["prompt"]]
            assert e["messages"][len(m["prompt"])]["content"] == m["chosen"][0]["content"] and m["tools"] == e["tools"]
            calls = [x["content"] for x in e["messages"] if x["role"] == "assistant"]
        if m["task_id"] != pair["task_id"]:  # another task, the same step
            assert m["step"] == pair["step"]
            if a == "FINAL":
                kinds.add("final_rejected")
                assert m["rejected"] == pair["chosen"] and m["rejected_category"] == "wrong_final"
                if m["sample_id"] in experts:
                    task = experts[m["sample_id"]]["task"]
                    assert task["answerable"] and task["answer"] != _answer(pair["chosen"][0]["content"], "json")
            else:
                kinds.add(m["rejected_category"])
                assert tool(m["rejected"]) == a and m["rejected_category"] in ("redundant", "premature")
                if m["sample_id"] in experts:
                    assert m["rejected"][0]["content"] in calls and m["rejected"][0]["content"] != m["chosen"][0]["content"]
        else:
            kinds.add("same_task")
            earlier = [x["content"] for x in m["prompt"] if x["role"] == "assistant"]
            assert m["rejected"][0]["content"] in earlier and m["rejected_category"] == "redundant"
            assert tool(m["rejected"]) == a or a not in map(lambda c: _tool(c, "json"), earlier)
    assert {"final_rejected", "premature", "same_task"} <= kinds and any(m["sample_id"] in experts for m in mirrors)


def test_mirror_pairs_with_final_anchors_fails_at_start_naming_the_key(tmp_path):
    from tests.conftest import run_cli

    out = run_cli([f"run_dir={tmp_path}", "+experiment=agentic_sft_dpo", "agent.mirror_pairs=true",
                   "agent.final_anchors=true"])
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("error: config key 'agent.final_anchors' = True")
    assert not (tmp_path / "agentic").exists()

def test_pair_files_are_shuffled_with_anchors_kept_after_their_pair():
    from agent_align.env.preferences import shuffled

    rows = []
    for i in range(40):
        rows.append({"id": i, "taken_by": "agent"})
        if i % 3 == 0:
            rows.append({"id": f"{i}a", "taken_by": "anchor"})
    out = shuffled(rows, 0)
    assert sorted(map(str, (r["id"] for r in out))) == sorted(map(str, (r["id"] for r in rows)))
    assert [r["id"] for r in out] != [r["id"] for r in rows] and out == shuffled(rows, 0) != shuffled(rows, 1)
    for i, r in enumerate(out):
        if r["taken_by"] == "anchor":
            assert f"{out[i - 1]['id']}a" == r["id"]


def test_step_anchors_follow_pairs_with_a_right_turn_as_both_sides(tmp_path):
    """agent.step_anchors=R: after each pair and its mirror, R anchors on average, each a right turn (good category,
    progress) of a successful episode at its own state, as chosen and rejected alike; spread over the tasks in a
    seeded order; kept after their pair by the shuffle; counted in the summary."""
    from agent_align.__main__ import run
    from agent_align.env.environment import GOOD

    common = ["stage=agent", "agent.split=train", "agent.limit=60", "env.horizon=6"]
    run(compose([f"run_dir={tmp_path / 'expert'}", *common, "agent.expert_mode=ground_truth"]))
    experts = {e["sample_id"]: e for e in map(lambda p: json.loads(p.read_text()),
                                                (tmp_path / "expert" / "trajectories").glob("*.json"))}
    informed = [*common, "agent.backend=random", "agent.expert_mode=informed", "agent.save_alternate_trace=true",
                "agent.mirror_pairs=true", f"agent.pair_runs=[{tmp_path / 'expert'}]", "agent.expert_assist_init_limit=1",
                "agent.expert_assist_recent_limit=-1", "agent.num_samples=2"]
    summary = run(compose([f"run_dir={tmp_path / 'a'}", *informed, "agent.step_anchors=1.5"]))
    rows = read_jsonl(tmp_path / "a" / "preferences" / "step_pairs.jsonl")
    anchors = [r for r in rows if r["taken_by"] == "step_anchor"]
    pairs = [r for r in rows if r["taken_by"] not in ("step_anchor", "mirror", "anchor")]
    assert summary["step_anchors"] == len(anchors) and abs(len(anchors) - 1.5 * len(pairs)) <= 1
    assert len({a["task_id"] for a in anchors}) >= 10  # spread over the train tasks, not the pairs' own
    for i, r in enumerate(rows):
        if r["taken_by"] == "mirror":
            assert rows[i - 1]["taken_by"] not in ("step_anchor", "mirror")  # a mirror stays right after its pair
        if r["taken_by"] != "step_anchor":
            continue
        assert r["chosen"] == r["rejected"] and len(r["chosen"]) == 1 and r["chosen_category"] in GOOD
        assert rows[i - 1]["taken_by"] != "mirror" or rows[i - 2]["taken_by"] not in ("step_anchor", "mirror")
        if r["sample_id"] in experts:  # the state and the turn are the episode's own
            e = experts[r["sample_id"]]
            assert [x["content"] for x in e["messages"][:len(r["prompt"])]] == [x["content"] for x in r["prompt"]]
            assert e["messages"][len(r["prompt"])]["content"] == r["chosen"][0]["content"] and e["success"]
    assert any(a["sample_id"] in experts for a in anchors)
    plain = run(compose([f"run_dir={tmp_path / 'b'}", *informed]))
    assert plain["step_anchors"] == 0 and plain["step_pairs"] == len(rows) - len(anchors)


@pytest.mark.parametrize("overrides,match", [
    (["agent.step_anchors=-1"], "'agent.step_anchors' = -1"),
    (["agent.step_anchors=1", "loss=dpo"], "loss=dpo has none"),
])
def test_step_anchor_config_errors(overrides, match):
    from agent_align.env.config import check_agent_config
    from agent_align.errors import UserError

    with pytest.raises(UserError, match=match):
        check_agent_config(compose(["+experiment=agentic_sft_dpo", *overrides]))
