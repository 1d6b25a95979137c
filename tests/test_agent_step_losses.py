"""loss=stepwise and loss=step_dpo on the agentic environment's trajectory pairs: per-turn scores from the
environment on the pair rows, zero gradient on a correct rejected turn and on observations, Step-DPO cuts
at the first wrong turn with the policy's own turn as chosen, the dpo stage end to end, and the
combinations that still fail at start (docs/step_level.md, "On agent trajectories")."""

from __future__ import annotations

import copy
import json
from collections import Counter

import pytest
import torch

from agent_align.errors import UserError
from agent_align.stages.context import RunContext
from tests.conftest import MICRO, compose, run_cli

# One letter per turn of a sample: E = the ground-truth expert's action, X = an invalid reply; the last
# letter repeats to the horizon. Per task: a clean success, a failure after one good turn, a failure from
# the start, and a success after a wrong first turn.
SCRIPTS = {0: "E", 1: "EX", 2: "X", 3: "XE"}
HORIZON = 5  # XE on a task of 3 calls + FINAL takes 5 turns


class Scripted:
    def act(self, envs):
        out = []
        for e in envs:
            script = SCRIPTS[e.sample_index]
            out.append(e.render(e.expert_call()) if script[min(len(e.steps), len(script) - 1)] == "E" else "oops")
        return out


@pytest.fixture(scope="module")
def records():
    """Episodes of the scripts above on two answerable tasks of >= 3 steps (every turn the agent's own)."""
    from agent_align.agents.runner import Runner
    from agent_align.env.environment import OrgEnv, match_judge

    cfg = compose(["env.n_tasks=20", f"env.horizon={HORIZON}"])
    with OrgEnv(cfg.env) as org:
        tasks = [t for t in org.tasks if t["answerable"] and len(t["trajectory"]) >= 3][:2]
        recs = list(Runner(org, Scripted(), None, match_judge, cfg.agent).run(
            [(t, k, f"{t['task_id']}-s{k}") for t in tasks for k in SCRIPTS]))
    assert [r["success"] for r in recs if r["sample_id"].endswith(("-s0", "-s3"))] == [True] * 4
    assert not any(r["success"] for r in recs if r["sample_id"].endswith(("-s1", "-s2")))
    return recs


def expected_scores(sample_id: str, n_turns: int) -> list[float]:
    script = SCRIPTS[int(sample_id.rsplit("-s", 1)[1])]
    return [1.0 if script[min(t, len(script) - 1)] == "E" else 0.0 for t in range(n_turns)]


def by_ids(rows, chosen: str, rejected: str) -> dict:
    [r] = [r for r in rows if r["chosen_sample_id"].endswith(chosen) and r["rejected_sample_id"].endswith(rejected)
           and r["task_id"] == rows[0]["task_id"]]
    return r


# -- the pair rows --------------------------------------------------------------------------------------
def test_pair_scores_are_the_environment_categories(records):
    from agent_align.env.environment import GOOD
    from agent_align.env.preferences import trajectory_pairs

    rows = trajectory_pairs(records, mask_suboptimal=True, max_per_task=8)
    recs = {r["sample_id"]: r for r in records}
    assert len(rows) == 2 * 2 * 2  # per task: 2 successes x 2 failures
    for row in rows:
        for side in ("chosen", "rejected"):
            rec = recs[row[f"{side}_sample_id"]]
            turns = [m for m in row[side] if m["role"] == "assistant"]
            scores = row[f"{side}_scores"]
            assert len(scores) == len(turns) == len(rec["steps"])
            assert scores == [float(s["category"] in GOOD and s["progress"]) for s in rec["steps"]]
            assert scores == expected_scores(rec["sample_id"], len(turns))  # E turns good, X turns wrong
            # mask_suboptimal_traces: the train marks are the scores (chosen) and their complement (rejected)
            assert [m["train"] for m in turns] == [bool(s) if side == "chosen" else not s for s in scores]


def test_on_policy_turn_comes_from_a_success_in_the_same_state(records):
    from agent_align.env.preferences import trajectory_pairs

    rows = trajectory_pairs(records, mask_suboptimal=True, max_per_task=8)
    recs = {r["sample_id"]: r for r in records}
    row = by_ids(rows, "-s3", "-s1")  # chosen XE..., rejected EX...: wrong at turn 1, after the expert's turn 0
    [turn] = row["continuations"]
    clean = recs[row["chosen_sample_id"].replace("-s3", "-s0")]  # s3 starts elsewhere; s0 shares the state
    assert turn["step_index"] == 1 and turn["source"] == "on_policy" and turn["sample_id"] == clean["sample_id"]
    assert turn["text"] == [{"role": "assistant", "content": clean["messages"][4]["content"]}]
    # episodes of other runs (agent.pair_runs) pair, but never supply the on-policy turn
    failures = [r for r in records if not r["success"]]
    others = [r for r in records if r["success"]]
    assert not any("continuations" in r for r in trajectory_pairs(failures, True, 8, others=others))
    # nor does a turn the expert took (an expert-assisted run): s0's turns become the expert's
    assisted = [dict(r, steps=[dict(st, actor="expert") for st in r["steps"]]) if r["sample_id"].endswith("-s0")
                else r for r in records]
    assert not any("continuations" in r for r in trajectory_pairs(assisted, True, 8))


# -- step_dpo pairs -------------------------------------------------------------------------------------
def test_step_dpo_cuts_at_the_first_wrong_turn_with_the_correct_prefix(records):
    from agent_align.env.preferences import trajectory_pairs
    from agent_align.steps.pairs import build_step_dpo_pairs

    rows = trajectory_pairs(records, mask_suboptimal=True, max_per_task=8)
    stats = Counter()
    pairs = build_step_dpo_pairs(copy.deepcopy(rows), None, stats=stats)
    # per task, two failures: the four (success, failure) rows cut the same two ways
    assert stats == Counter(pairs=4, chosen_on_policy=4, skipped_duplicate=4)
    for p in pairs:
        src = next(r for r in rows if r["rejected_sample_id"] == p["rejected_sample_id"])
        k = 1 if p["rejected_sample_id"].endswith("-s1") else 0
        assert p["step_index"] == k and p["prompt"] == src["prompt"] and p["chosen_source"] == "on_policy"
        assert p["assistant_prefix"] == src["rejected"][:2 * k]  # earlier turns with their observations
        assert p["rejected"] == [src["rejected"][2 * k]] and p["rejected"][0]["content"] == "oops"
        assert p["chosen"] == src["continuations"][0]["text"] and p["chosen"][0]["content"] != "oops"


def test_step_dpo_falls_back_to_the_chosen_trajectory_only_in_the_same_state(records):
    """Without an on-policy turn: the success's turn when its history up to the cut is the failure's."""
    from agent_align.env.preferences import trajectory_pairs
    from agent_align.steps.pairs import build_step_dpo_pairs

    failures = [r for r in records if not r["success"]]
    others = [r for r in records if r["success"]]
    rows = trajectory_pairs(failures, mask_suboptimal=True, max_per_task=8, others=others)
    stats = Counter()
    pairs = build_step_dpo_pairs(rows, None, stats=stats)
    # per task: s0 vs s1 and s0 vs s2 share the state (source success); s3 vs s1 reached turn 1 another way;
    # s3 vs s2: s3's own turn 0 is wrong
    assert stats == Counter(pairs=4, chosen_success=4, skipped_other_state=2, skipped_no_correct_step=2)
    assert {p["chosen_sample_id"][-3:] for p in pairs} == {"-s0"}
    for p in pairs:
        src = next(r for r in rows if r["chosen_sample_id"] == p["chosen_sample_id"]
                   and r["rejected_sample_id"] == p["rejected_sample_id"])
        assert p["chosen"] == [src["chosen"][2 * p["step_index"]]]
    # the same turn index and correct turns, but another observation before the cut: another state
    moved = copy.deepcopy(by_ids(rows, "-s0", "-s1"))
    moved["chosen"][1]["content"] += " (another result)"
    stats = Counter()
    assert build_step_dpo_pairs([moved], None, stats=stats) == [] and stats == Counter(skipped_other_state=1)


def test_step_dpo_example_puts_the_prefix_and_observations_in_the_prompt(records, tiny):
    from agent_align.env.preferences import trajectory_pairs
    from agent_align.steps.pairs import build_step_dpo_pairs, step_dpo_example
    from agent_align.train.encode import Encoder, chat_of

    tok = tiny[2]
    rows = trajectory_pairs(records, mask_suboptimal=True, max_per_task=8)
    [pair] = [p for p in build_step_dpo_pairs(rows, None) if p["step_index"] == 1][:1]
    ex = step_dpo_example(Encoder(tok, 2048, 2048), chat_of(pair, ""), pair)
    prompt = tok.decode(ex["prompt_ids"])
    observation = pair["assistant_prefix"][1]["content"]
    assert pair["assistant_prefix"][1]["role"] == "tool" and observation[:40] in prompt
    assert pair["assistant_prefix"][0]["content"] in prompt
    assert tok.decode(ex["rejected_ids"]).startswith("oops")
    chosen = tok.decode(ex["chosen_ids"])
    assert chosen.startswith(pair["chosen"][0]["content"]) and observation[:40] not in chosen


# -- stepwise weights and gradients ----------------------------------------------------------------------
def stepwise_trainer(tmp_path, tiny, rows):
    from trl import DPOConfig

    from agent_align.steps.trainer import StepwiseDPOTrainer, prepare_stepwise_dataset

    _, model, tok = tiny
    model = copy.deepcopy(model)
    ref = copy.deepcopy(model)
    with torch.no_grad():  # a reference that differs from the policy, so the loss is not at its flat point
        for p in ref.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.05)
    args = DPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=1, max_length=2048, beta=0.5,
                     precompute_ref_log_probs=False, report_to=[], use_cpu=True, save_strategy="no", bf16=False,
                     disable_dropout=True)
    ds = prepare_stepwise_dataset(rows, tok, system="", fmt="trajectory", max_length=2048, max_prompt_length=2048)
    return StepwiseDPOTrainer(model, ref_model=ref, args=args, train_dataset=ds, processing_class=tok)


def test_stepwise_weights_are_the_masked_path_tokens_times_the_scores(records, tiny):
    """With mask_suboptimal_traces the weighted tokens are exactly the tokens the dpo|ipo|rpo path trains
    (same ids, same positions): a turn's content and end of turn, never an observation or a header."""
    from agent_align.env.masking import preference_example
    from agent_align.env.preferences import trajectory_pairs
    from agent_align.steps.stepwise_data import prepare_stepwise_dataset

    tok = tiny[2]
    rows = trajectory_pairs(records, mask_suboptimal=True, max_per_task=8)[:4]
    ds = prepare_stepwise_dataset(rows, tok, system="", fmt="trajectory", max_length=4096, max_prompt_length=4096)
    for row, ex in zip(rows, ds):
        masked = preference_example(row, tok)
        for side in ("chosen", "rejected"):
            ids = ex["prompt_ids"] + ex[f"{side}_ids"]
            assert ids == masked["prompt_ids"] + masked[f"{side}_ids"]
            weights = [0.0] * len(ex["prompt_ids"]) + ex[f"{side}_token_weights"]
            mask = [0] * len(masked["prompt_ids"]) + masked[f"{side}_mask"]
            assert [int(w > 0) for w in weights] == mask and set(weights) <= {0.0, 1.0}
    # an explicit "train": false wins over a score: the turn gets weight 0
    row = copy.deepcopy(rows[0])
    for m in row["chosen"]:
        m["train"] = m["role"] == "assistant" and m is not row["chosen"][0]
    [ex] = prepare_stepwise_dataset([row], tok, system="", fmt="trajectory", max_length=4096, max_prompt_length=4096)
    first = tok(row["chosen"][0]["content"], add_special_tokens=False)["input_ids"]
    assert row["chosen_scores"][0] == 1.0 and ex["chosen_token_weights"][: len(first)] == [0.0] * len(first)
    assert sum(ex["chosen_token_weights"]) > 0


def test_stepwise_gives_zero_gradient_to_a_correct_rejected_turn_and_to_observations(tmp_path, records, tiny):
    from agent_align.env.preferences import trajectory_pairs

    rows = trajectory_pairs(records, mask_suboptimal=False, max_per_task=8)  # train marks all true: scores alone
    row = by_ids(rows, "-s0", "-s1")
    assert row["rejected_scores"][:2] == [1.0, 0.0]
    trainer = stepwise_trainer(tmp_path, tiny, [row])
    tok = tiny[2]
    captured = {}

    def hook(module, inputs, output):
        output.log_probs.retain_grad()
        captured["lp"] = output.log_probs
    handle = trainer.model.register_forward_hook(hook)
    batch = trainer.data_collator([trainer.train_dataset[0]])
    trainer.compute_loss(trainer.model, batch).backward()
    handle.remove()
    grad = captured["lp"].grad  # (2, L-1): row 0 chosen, row 1 rejected; position t scores token t+1
    ex = trainer.train_dataset[0]
    n_prompt = len(ex["prompt_ids"])
    for i, side in enumerate(("chosen", "rejected")):
        ids, w = ex[f"{side}_ids"], ex[f"{side}_token_weights"]
        pos = {x: [n_prompt - 1 + j for j, v in enumerate(w) if v == x] for x in (0.0, 1.0)}
        assert pos[0.0] and pos[1.0]
        assert torch.all(grad[i, pos[0.0]] == 0) and torch.all(grad[i, pos[1.0]] != 0)
        zero_text = tok.decode([ids[j - n_prompt + 1] for j in pos[0.0]])
        for m in row[side]:
            if m["role"] == "tool":  # every observation sits in the zero-gradient tokens
                assert m["content"][:30] in zero_text
    span = range(n_prompt - 1, n_prompt - 1 + len(ex["rejected_ids"]))
    zero = tok.decode([ex["rejected_ids"][j - n_prompt + 1] for j in span if grad[1, j] == 0])
    moved = tok.decode([ex["rejected_ids"][j - n_prompt + 1] for j in span if grad[1, j] != 0])
    assert zero.startswith(row["rejected"][0]["content"])  # the rejected side's correct first turn: no gradient
    assert row["rejected"][0]["content"] not in moved and moved.startswith("oops")


# -- the dpo stage ---------------------------------------------------------------------------------------
def pairs_file(tmp_path, records):
    from agent_align.env.preferences import trajectory_pairs
    from agent_align.jsonl import write_jsonl

    path = tmp_path / "trajectory_pairs.jsonl"
    write_jsonl(path, trajectory_pairs(records, mask_suboptimal=True, max_per_task=8))
    return path


@pytest.mark.parametrize("loss", ["stepwise", "step_dpo"])
def test_dpo_stage_trains_step_losses_on_trajectory_pairs(tmp_path, records, tiny, loss):
    from transformers import AutoModelForCausalLM

    from agent_align.jsonl import read_jsonl
    from agent_align.stages import STAGES

    base_path = tiny[0]
    path = pairs_file(tmp_path, records)
    cfg = compose([f"run_dir={tmp_path}", *MICRO, f"loss={loss}", "dpo.max_steps=2", "hardware.dpo_batch_size=2",
                   "model.max_length=1024", "model.max_prompt_length=768", f"data.train_path={path}",
                   "data.negatives_source=synthetic", f"dpo.policy_from={base_path}"])
    before = {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(base_path).state_dict().items()}
    result = STAGES.get("dpo")(cfg, RunContext(run_dir=tmp_path))
    after = AutoModelForCausalLM.from_pretrained(str(tmp_path / "checkpoints" / "dpo")).state_dict()
    assert [k for k in before if torch.equal(before[k], after[k])] == []
    assert result["loss"] == loss and result["final_reward_margin"] is not None
    trained = read_jsonl(tmp_path / "data" / "dpo_pairs_r0.jsonl")
    if loss == "step_dpo":
        assert result["rounds"][0]["step_dpo"] == {"chosen_on_policy": 4, "pairs": 4, "skipped_duplicate": 4}
        assert {p["chosen_source"] for p in trained} == {"on_policy"} and all(len(p["chosen"]) == 1 for p in trained)
    else:
        assert "step_dpo" not in result["rounds"][0] and len(trained) == 8
        from datasets import load_from_disk

        ds = load_from_disk(str(tmp_path / "cache" / "dpo_dataset_r0"))
        assert {"chosen_token_weights", "rejected_token_weights"} <= set(ds.column_names)


def test_step_losses_on_one_turn_pairs_or_without_scores_fail_at_start(tmp_path, records, tiny):
    from agent_align.stages import STAGES

    base_path = tiny[0]
    common = [f"run_dir={tmp_path}", *MICRO, "data.negatives_source=synthetic", f"dpo.policy_from={base_path}"]
    steps = tmp_path / "step_pairs.jsonl"  # informed step pairs: one turn per side
    rows = [json.loads(line) for line in pairs_file(tmp_path, records).read_text().splitlines()]
    steps.write_text("".join(json.dumps({**r, "chosen": r["chosen"][:1], "rejected": r["rejected"][:1]}) + "\n"
                             for r in rows))
    for loss in ("stepwise", "step_dpo"):
        with pytest.raises(UserError, match=rf"'loss.name' = '{loss}': every pair in .*step_pairs.jsonl has one "
                                            r"assistant turn per side.*loss=dpo\|ipo\|rpo"):
            STAGES.get("dpo")(compose([*common, f"loss={loss}", f"data.train_path={steps}"]),
                              RunContext(run_dir=tmp_path))
    unscored = tmp_path / "unscored.jsonl"
    unscored.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "rejected_scores"}) + "\n"
                                for r in rows))
    with pytest.raises(UserError, match=r"unscored.jsonl:1: an agent pair without chosen_scores/rejected_scores"):
        STAGES.get("dpo")(compose([*common, "loss=stepwise", f"data.train_path={unscored}"]),
                          RunContext(run_dir=tmp_path))
    with pytest.raises(UserError, match=r"'steps.step_dpo_chosen' = 'rest'"):
        STAGES.get("dpo")(compose([*common, "loss=step_dpo", "steps.step_dpo_chosen=rest",
                                   f"data.train_path={tmp_path / 'trajectory_pairs.jsonl'}"]),
                          RunContext(run_dir=tmp_path))
    # from the command line: one line, exit code 2
    proc = run_cli([f"run_dir={tmp_path / 'cli'}", "stage=dpo", "loss=stepwise", f"data.train_path={steps}",
                    "data.negatives_source=synthetic", f"dpo.policy_from={base_path}"])
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "error: config key 'loss.name' = 'stepwise'" in proc.stderr and "Traceback" not in proc.stderr


# -- agent_pipeline's config check -----------------------------------------------------------------------
TRAJ = ["+experiment=agentic_sft_dpo", "agent.preference_granularity=trajectory", "agent.num_samples=4",
        "agent.temperature=0.8", "dpo.decision_tokens=0"]  # the experiment's decision mask is for the masked losses


@pytest.mark.parametrize("loss", ["stepwise", "step_dpo"])
def test_agentic_pipeline_takes_step_losses_on_trajectory_pairs_only(loss):
    from agent_align.checks import check_config

    check_config(compose([*TRAJ, f"loss={loss}"]))
    check_config(compose([*TRAJ, f"loss={loss}", "agent.mask_suboptimal_traces=true"]))
    with pytest.raises(UserError, match=rf"'loss.name' = '{loss}': informed step pairs have one turn per side.*"
                                        r"agent.preference_granularity=trajectory"):
        check_config(compose(["+experiment=agentic_sft_dpo", f"loss={loss}"]))
    with pytest.raises(UserError, match=rf"'dpo.decision_tokens' = 1: loss={loss} weighs whole turns"):
        check_config(compose([*TRAJ, f"loss={loss}", "dpo.decision_tokens=1"]))  # at start, not after SFT
    check_config(compose(["+experiment=agentic_sft_dpo", "dpo.decision_tokens=1"]))
    if loss == "step_dpo":
        with pytest.raises(UserError, match=r"'steps.step_dpo_chosen' = 'rest': on agent trajectories"):
            check_config(compose([*TRAJ, "loss=step_dpo", "steps.step_dpo_chosen=rest"]))
