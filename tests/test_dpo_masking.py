"""DPO on multi-message completions (agent trajectories, step pairs): TRL's DPOTrainer scores only the
assistant turns our masks mark, for the policy and the (precomputed or live) reference; the dpo stage
trains on a trajectory-pairs file; agent_pipeline wires trajectory-level pairs and rejects bad configs."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from agent_align.errors import UserError
from agent_align.stages.context import RunContext
from tests.conftest import MICRO, compose

TOOLS = [{"type": "function", "function": {"name": "get_employee", "description": "Look up an employee.",
                                           "parameters": {"type": "object", "properties": {"name": {"type": "string"}},
                                                          "required": ["name"]}}}]
PROMPT = [{"role": "system", "content": "You are an assistant with tools."},
          {"role": "user", "content": "Which country does Mei Sato work in?"}]


def call(name: str) -> dict:
    return {"role": "assistant", "content": json.dumps({"tool": "get_employee", "parameters": {"name": name}})}


def obs(text: str) -> dict:
    return {"role": "tool", "content": text}


FINAL = {"role": "assistant", "content": '{"tool": "FINAL", "parameters": {"answer": "Japan"}}'}


def make_trainer(tmp_path, tiny, rows, *, loss_type=("sigmoid",), precompute=True, ref=False, shared=False, **extra):
    from trl import DPOConfig

    from agent_align.train.dpo import PretokenizedDPOTrainer, masked_preference_dataset
    from agent_align.train.shared_prompt import with_shared_prompt

    _, model, tok = tiny
    model = copy.deepcopy(model)
    ref_model = None
    if ref:  # a reference that differs from the policy, so rewards are not trivially 0
        ref_model = copy.deepcopy(model)
        with torch.no_grad():
            for p in ref_model.parameters():
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.05)
    args = DPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, max_length=512, beta=0.5,
                     loss_type=list(loss_type), precompute_ref_log_probs=precompute, precompute_ref_batch_size=2,
                     report_to=[], use_cpu=True, save_strategy="no", bf16=False, pad_to_multiple_of=32, **extra)
    ds = masked_preference_dataset(rows, tok, max_length=512, max_prompt_length=400)
    cls = with_shared_prompt(PretokenizedDPOTrainer) if shared else PretokenizedDPOTrainer
    return cls(model, ref_model=ref_model, args=args, train_dataset=ds, processing_class=tok)


def row(chosen, rejected) -> dict:
    return {"prompt": PROMPT, "chosen": chosen, "rejected": rejected, "tools": TOOLS}


def scores(trainer) -> list[tuple[float, ...]]:
    """(logps/chosen, logps/rejected, rewards/chosen, rewards/rejected) of each row, from TRL's own
    ``_compute_loss`` on a one-row batch (precomputed reference log-probs come with the row)."""
    out = []
    for i in range(len(trainer.train_dataset)):
        batch = trainer.data_collator([trainer.train_dataset[i]])
        with torch.no_grad():
            trainer.compute_loss(trainer.model, batch)
        m = trainer._metrics["train" if trainer.model.training else "eval"]
        out.append(tuple(m[k][-1] for k in ("logps/chosen", "logps/rejected", "rewards/chosen", "rewards/rejected")))
    return out


def test_collated_completion_mask_is_exactly_the_assistant_tokens(tmp_path, tiny):
    """Checked against transformers' own assistant mask (the template's {% generation %} blocks)."""
    _, _, tok = tiny
    rows = [row([call("Mei Sato"), obs('{"name": "Mei Sato", "country": "Japan"}'), FINAL],
                [call("Sato"), obs("ERROR not_found: no employee named Sato"), call("Mei"), obs("ERROR not_found")]),
            row([FINAL], [call("Mei Sato"), obs('{"country": "Japan"}')])]
    trainer = make_trainer(tmp_path, tiny, rows)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    assert batch["input_ids"].shape[1] % 32 == 0  # padded like the trainer pads
    sides = [(r, s) for s in ("chosen", "rejected") for r in rows]  # TRL's order: all chosen, then all rejected
    for i, (r, side) in enumerate(sides):
        ref = tok.apply_chat_template(r["prompt"] + r[side], tools=TOOLS, tokenize=True, return_dict=True,
                                      return_assistant_tokens_mask=True)
        n = len(ref["input_ids"])
        assert batch["input_ids"][i, :n].tolist() == ref["input_ids"]
        assert batch["completion_mask"][i, :n].tolist() == ref["assistant_masks"]
        assert not batch["completion_mask"][i, n:].any() and batch["attention_mask"][i].sum() == n
        trained = tok.decode(batch["input_ids"][i][batch["completion_mask"][i].bool()])
        assert "ERROR" not in trained and "country" not in trained and "Which country" not in trained


@pytest.mark.parametrize("precompute", [True, False])
def test_observations_do_not_enter_the_log_probs_but_assistant_turns_do(tmp_path, tiny, precompute):
    """Each side ends on an observation (a truncated episode, a step with its result), so nothing trained
    comes after it: with masking, its text cannot change any score. An observation in the middle would
    still change later turns' scores through the context, as it should."""
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    base = row([call("Mei Sato"), obs('{"name": "Mei Sato", "country": "Japan"}')],
               [call("Sato"), obs("ERROR not_found: no employee named Sato")])
    other_obs = row([call("Mei Sato"), obs("a different, much longer observation " * 4)],
                    [call("Sato"), obs("{}")])
    other_call = row([call("Mei Satou"), base["chosen"][1]], base["rejected"])
    trainer = make_trainer(tmp_path, tiny, [base, other_obs, other_call], loss_type=("sigmoid", "sft"),
                           precompute=precompute, ref=not precompute)
    if precompute:  # the reference TRL cached before training, computed through our collator
        ref_c, ref_r = trainer.train_dataset["ref_chosen_logps"], trainer.train_dataset["ref_rejected_logps"]
        assert ref_c[0] == pytest.approx(ref_c[1], abs=1e-5) and ref_r[0] == pytest.approx(ref_r[1], abs=1e-5)
        assert ref_c[2] != pytest.approx(ref_c[0], abs=1e-3) and ref_r[2] == pytest.approx(ref_r[0], abs=1e-5)
    s_base, s_obs, s_call = scores(trainer)
    assert s_obs == pytest.approx(s_base, abs=1e-5)
    assert s_call[0] != pytest.approx(s_base[0], abs=1e-3) and s_call[1] == pytest.approx(s_base[1], abs=1e-5)
    # the test can fail: TRL's own collator (every completion token) does see the observations
    plain = DataCollatorForPreference(pad_token_id=trainer.data_collator.pad_token_id, max_length=512)
    logps = [trainer.compute_ref_log_probs(trainer.model, plain([trainer.train_dataset[i]]))[0].item() for i in (0, 1)]
    assert logps[0] != pytest.approx(logps[1], abs=1e-3)


def test_a_train_false_turn_is_excluded(tmp_path, tiny):
    off = {**FINAL, "train": False}
    masked = row([call("Mei Sato"), obs('{"country": "Japan"}'), off], [call("Sato"), obs("ERROR not_found")])
    other = row([call("Mei Sato"), obs('{"country": "Japan"}'), {**off, "content": '{"tool": "FINAL", "parameters": '
                                                                              '{"answer": "Peru, not Japan"}}'}],
                masked["rejected"])
    trained = row(masked["chosen"][:2] + [FINAL], masked["rejected"])
    trainer = make_trainer(tmp_path, tiny, [masked, other, trained])
    tok = tiny[2]
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    n_final = len(tok(FINAL["content"] + "<|end|>", add_special_tokens=False)["input_ids"])
    counts = batch["completion_mask"][:3].sum(dim=1).tolist()
    assert counts[0] == counts[1] == counts[2] - n_final
    assert "FINAL" not in tok.decode(batch["input_ids"][0][batch["completion_mask"][0].bool()])
    s_masked, s_other, s_trained = scores(trainer)
    assert s_other[0] == pytest.approx(s_masked[0], abs=1e-5) and s_trained[0] != pytest.approx(s_masked[0], abs=1e-3)


def test_pairs_without_a_trained_token_within_max_length_are_dropped(tiny, caplog):
    from agent_align.train.dpo import masked_preference_dataset

    tok = tiny[2]
    long_obs = [call("Sato"), obs("x " * 400), call("Mei Sato")]  # the only other trained turn comes late
    rows = [row([FINAL], [call("Sato"), obs("ERROR")]), row([FINAL], [{**long_obs[0], "train": False}, *long_obs[1:]])]
    ds = masked_preference_dataset(rows, tok, max_length=300, max_prompt_length=200)
    assert len(ds) == 1 and "1 of 2 preference pairs" in caplog.text
    assert len(masked_preference_dataset(rows, tok, max_length=2000, max_prompt_length=200)) == 2
    with pytest.raises(UserError, match=r"'model.max_length' = 300"):
        masked_preference_dataset(rows[1:], tok, max_length=300, max_prompt_length=200)


def trajectory_pairs_file(path, n_tasks: int = 4):
    """Real trajectory pairs: per task, the expert's episode (a success) and a random agent's (a failure)."""
    from agent_align.agents.policies import GroundTruthExpert, RandomAgent
    from agent_align.agents.runner import Runner
    from agent_align.env.environment import OrgEnv, match_judge
    from agent_align.env.preferences import trajectory_pairs
    from agent_align.jsonl import write_jsonl

    class ExpertOrRandom:
        def act(self, envs):
            return [(GroundTruthExpert() if e.sample_index == 0 else RandomAgent(0)).act([e])[0] for e in envs]

    cfg = compose(["env.n_tasks=20"])
    with OrgEnv(cfg.env) as org:
        tasks = [t for t in org.tasks if t["answerable"]][:n_tasks]
        records = list(Runner(org, ExpertOrRandom(), None, match_judge, cfg.agent).run(
            [(t, k, f"{t['task_id']}-s{k}") for t in tasks for k in (0, 1)]))
    rows = trajectory_pairs(records, mask_suboptimal=True, max_per_task=4)
    write_jsonl(path, rows)
    return rows


@pytest.mark.parametrize("loss", ["dpo", "ipo", "rpo"])
def test_dpo_stage_trains_on_trajectory_pairs(tmp_path, tiny, loss):
    from transformers import AutoModelForCausalLM

    from agent_align.stages import STAGES

    base_path, _, _ = tiny
    pairs = tmp_path / "trajectory_pairs.jsonl"
    rows = trajectory_pairs_file(pairs)
    assert len(rows) >= 2 and any(m["role"] == "tool" for r in rows for m in r["chosen"])
    cfg = compose([f"run_dir={tmp_path}", *MICRO, f"loss={loss}", "dpo.max_steps=2", "hardware.dpo_batch_size=2",
                   "model.max_length=1024", "model.max_prompt_length=512", f"data.train_path={pairs}",
                   "data.negatives_source=synthetic", f"dpo.policy_from={base_path}", "dpo.decision_tokens=0"])
    before = {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(base_path).state_dict().items()}
    result = STAGES.get("dpo")(cfg, RunContext(run_dir=tmp_path))
    after = AutoModelForCausalLM.from_pretrained(str(tmp_path / "checkpoints" / "dpo")).state_dict()
    assert [k for k in before if torch.equal(before[k], after[k])] == []
    history = [json.loads(line) for line in open(tmp_path / "metrics" / "dpo.jsonl")]
    assert sum("rewards/margins" in h for h in history) >= 2 and result["final_reward_margin"] is not None
    from datasets import load_from_disk

    ds = load_from_disk(str(tmp_path / "cache" / "dpo_dataset_r0"))
    assert {"chosen_mask", "rejected_mask"} <= set(ds.column_names) and len(ds) == len(rows)


def test_dpo_stage_rejects_settings_that_cannot_apply_to_agent_pairs(tmp_path, tiny):
    from agent_align.stages import STAGES

    base_path, _, _ = tiny
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps(row([FINAL], [call("Sato"), obs("ERROR")])) + "\n")
    common = [f"run_dir={tmp_path}", *MICRO, f"data.train_path={pairs}", f"dpo.policy_from={base_path}"]
    synthetic = "data.negatives_source=synthetic"
    with pytest.raises(UserError, match=r"'loss.name' = 'stepwise'.*loss=dpo\|ipo\|rpo"):
        STAGES.get("dpo")(compose([*common, "loss=stepwise", synthetic]), RunContext(run_dir=tmp_path))
    with pytest.raises(UserError, match=r"'data.negatives_source' = 'on_policy'.*=synthetic"):
        STAGES.get("dpo")(compose([*common, "data.negatives_source=on_policy"]), RunContext(run_dir=tmp_path))
    with pytest.raises(UserError, match=r"pairs.jsonl:2: mixes message-list and string"):
        with pairs.open("a") as fh:
            fh.write(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b", "schema": {}}) + "\n")
        STAGES.get("dpo")(compose([*common, synthetic]), RunContext(run_dir=tmp_path))


@pytest.mark.parametrize("overrides, match", [
    (["agent.preference_granularity=trajectory"], r"'agent.num_samples' = 1: trajectory pairs need"),
    (["agent.trajectory_pairs=true"], r"'agent.num_samples' = 1"),
    (["agent.mask_suboptimal_traces=true"], r"'agent.mask_suboptimal_traces' = True: .*granularity=trajectory"),
    (["agent.preference_granularity=trajectories"], r"'agent.preference_granularity' = 'trajectories': valid"),
    (["loss=stepwise"], r"'loss.name' = 'stepwise'"),
])
def test_agentic_pipeline_config_errors(overrides, match):
    from agent_align.checks import check_config

    with pytest.raises(UserError, match=match):
        check_config(compose(["+experiment=agentic_sft_dpo", *overrides]))


def test_agentic_pipeline_accepts_the_documented_trajectory_commands():
    from agent_align.checks import check_config

    traj = ["+experiment=agentic_sft_dpo", "agent.preference_granularity=trajectory", "agent.mask_suboptimal_traces=true"]
    check_config(compose([*traj, "agent.num_samples=4", "agent.temperature=0.8"]))
    check_config(compose([*traj, "agent.pair_runs=[runs/x/agentic/expert]"]))  # one sample, paired with the expert


def test_agentic_pipeline_trains_dpo_on_trajectory_pairs(tmp_path, monkeypatch):
    """The orchestration with the trainers and the local model replaced: the sampled run's trajectory
    pairs reach the dpo stage; evaluations stay greedy with one episode per task."""
    from agent_align.agents import BACKENDS
    from agent_align.agents.pipeline import run as pipeline
    from agent_align.jsonl import read_jsonl
    from agent_align.stages import STAGES

    cfg = compose([f"run_dir={tmp_path}", "+experiment=agentic_sft_dpo", "env.n_tasks=24", "agent.limit=8",
                   "agent.preference_granularity=trajectory", "agent.num_samples=2", "agent.temperature=0.8",
                   "agent.mask_suboptimal_traces=true", "dpo.rounds=1", "agent.val_world_seed=null"])
    runs = []

    class Agent:  # sample 0 of a task follows the expert, sample 1 replies garbage: one success, one failure
        def act(self, envs):
            return [e.render(e.expert_call()) if e.sample_index == 0 else "oops" for e in envs]

    def fake_agent(c, ctx):
        runs.append((c.agent.model_path, c.agent.split, c.agent.num_samples, c.agent.temperature, c.agent.expert_mode))
        return Agent()

    seen = {}

    def fake_sft(c, ctx):
        return {"checkpoint": str(ctx.path("checkpoints", "sft"))}

    def fake_dpo(c, ctx):
        seen["rows"] = read_jsonl(c.data.train_path, required=("prompt", "chosen", "rejected", "tools"))
        seen["path"], seen["source"] = c.data.train_path, c.data.negatives_source
        return {"checkpoint": str(ctx.path("checkpoints", "dpo"))}

    real_get = STAGES.get
    monkeypatch.setattr(STAGES, "get", lambda name: {"sft": fake_sft, "dpo": fake_dpo}.get(name) or real_get(name))
    monkeypatch.setitem(BACKENDS._items, "hf", fake_agent)
    summary = pipeline(cfg, RunContext(run_dir=tmp_path))
    sft, dpo = str(tmp_path / "checkpoints" / "sft"), str(tmp_path / "checkpoints" / "dpo")
    assert runs == [(None, "test", 1, 0.0, None), (sft, "test", 1, 0.0, None), (sft, "train", 2, 0.8, None),
                    (dpo, "test", 1, 0.0, None)]  # base model, SFT, sampled rollouts of the SFT policy, DPO
    assert seen["path"].endswith("agentic/sampled/preferences/trajectory_pairs.jsonl") and seen["source"] == "synthetic"
    rows = seen["rows"]
    assert rows and all(r["granularity"] == "trajectory" and r["mask_suboptimal_traces"] for r in rows)
    assert all(r["chosen_sample_id"].endswith("-s0") and r["rejected_sample_id"].endswith("-s1") for r in rows)
    assert summary["preference_granularity"] == "trajectory" and summary["sampled"]["trajectory_pairs"] == len(rows)
    assert "informed" not in summary and summary["sampled"]["n"] == 2 * len({r["task_id"] for r in rows})
