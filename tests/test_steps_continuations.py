"""Step-DPO's on-policy chosen steps: continuations sampled after the correct prefix of a rejected
answer (one batched generate call), scored in context, attached when correct, and used by the
Step-DPO pairs that stage=dpo loss=step_dpo builds; stage=sample counts where chosen steps came from."""

from __future__ import annotations

import json
from collections import Counter
from types import SimpleNamespace

import pytest
import torch

from agent_align.jsonl import read_jsonl, write_jsonl
from agent_align.stages.context import RunContext
from tests.conftest import compose

CALC = {"type": "function", "function": {"name": "calculator", "description": "math", "parameters": {
    "type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}}}
THOUGHT = "Thought: use calculator.\n"


def action(expr: str | None) -> str:
    params = {} if expr is None else {"parameters": {"expression": expr}}
    return "Action:\n```json\n" + json.dumps({"tool": "calculator", **params}) + "\n```"


def calc_row(rid: str, prompt: str, expr: str, answer: str) -> dict:
    """A react row whose rejected answer has a right thought and an action missing its parameters."""
    return {"id": rid, "prompt": prompt, "tools": [CALC], "answer": answer, "chosen": THOUGHT + action(expr),
            "rejected": THOUGHT + action(None), "chosen_source": "gold"}


def verifier():
    from agent_align.steps.scorers import VerifierScorer

    return VerifierScorer(SimpleNamespace(unverifiable_score=1.0))


def teach_continuation(model, tok, enc, cfg, row: dict, text: str, steps: int = 300) -> float:
    """Fit the model to continue ``row``'s prompt + THOUGHT with ``text`` (then end of turn)."""
    from agent_align.train.encode import chat_of, system_prompt

    p = enc.prompt_ids(chat_of(row, system_prompt(cfg))) + tok(THOUGHT, add_special_tokens=False)["input_ids"]
    t = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids, labels = torch.tensor([p + t]), torch.tensor([[-100] * len(p) + t])
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.01:
            break
    return loss.item()


def test_continuation_must_open_a_new_step_at_the_cut():
    from agent_align.steps.continuations import continuation_start
    from agent_align.steps.pairs import first_wrong_cut

    row = {"rejected": THOUGHT + action(None), "rejected_scores": [1.0, 0.0]}
    cut = first_wrong_cut(row, 0.5, "auto", "json")
    assert (cut.k, cut.prefix, cut.fmt, cut.n_steps) == (1, THOUGHT, "react", 2) and cut.step == action(None)
    n = len(THOUGHT)
    assert continuation_start(THOUGHT + action("2+3"), cut) == n
    assert continuation_start(THOUGHT + "\n" + action("2+3"), cut) == n + 1  # leading blank line joins the prefix
    assert continuation_start(THOUGHT + "and more words\n" + action("2+3"), cut) is None  # runs on in the thought
    assert continuation_start(THOUGHT, cut) is None  # nothing generated
    assert first_wrong_cut({**row, "rejected_scores": [1.0, 1.0]}, 0.5) is None


def test_on_policy_continuations_become_the_chosen_step(monkeypatch, tmp_path):
    import agent_align.generation
    from agent_align.stages.dpo import build_pairs, to_dataset
    from agent_align.steps.continuations import sample_continuations
    from agent_align.steps.pairs import build_step_dpo_pairs
    from agent_align.steps.scoring import score_rows
    from agent_align.train.encode import Encoder
    from tests.test_steps_trainer import tiny_lm

    cfg = compose([f"run_dir={tmp_path}", "data.format=react", "sample.max_new_tokens=80", "sample.temperature=1.0",
                   "hardware.eval_batch_size=8", "hardware.precision=fp32"])
    model, tok = tiny_lm()
    enc = Encoder(tok, 512, 400)
    add = calc_row("add", "add 2 and 3", "2+3", "5")
    mul = calc_row("mul", "multiply 4 by 5", "4*5", "20")
    # The policy learnt a correct call that is not the gold one ("3+2": verified by recomputing it), so
    # an on-policy chosen step is told apart from the gold step; for "mul" the same call is wrong (5 != 20).
    assert teach_continuation(model, tok, enc, cfg, add, action("3+2")) < 0.05
    rows = score_rows([add, mul], verifier(), "auto", default="react")
    assert [r["rejected_scores"] for r in rows] == [[1.0, 0.0], [1.0, 0.0]]

    calls = []
    real = agent_align.generation.generate_ids

    def spy(model_, tok_, prompt_ids, **kw):
        calls.append((list(prompt_ids), kw["num_return_sequences"]))
        return real(model_, tok_, prompt_ids, **kw)
    monkeypatch.setattr(agent_align.generation, "generate_ids", spy)
    stats = sample_continuations(cfg, model, tok, enc, rows, verifier(), 3, seed=0, desc=None)

    assert len(calls) == 1 and calls[0][1] == 3  # one batched call for every cut, N sequences each
    prompts = [tok.decode(ids) for ids in calls[0][0]]
    assert all(p.endswith("<|assistant|>" + THOUGHT) for p in prompts)  # generation starts after the correct prefix
    assert "add 2 and 3" in prompts[0] and "multiply 4 by 5" in prompts[1]
    assert stats["cuts"] == 2 and stats["sampled"] == 6 and stats["rows_with_continuation"] == 1
    [cont] = add["continuations"][:1]
    assert cont["text"].startswith(action("3+2")) and cont["scores"] == [1.0] and cont["step_index"] == 1
    assert stats["correct"] == len(add["continuations"]) and "continuations" not in mul

    counts = Counter()
    on_policy, fallback = build_step_dpo_pairs(rows, verifier(), fmt="auto", default="react", stats=counts)
    assert on_policy["assistant_prefix"] == THOUGHT and on_policy["rejected"] == action(None)
    assert on_policy["chosen"] == cont["text"] and '"3+2"' in on_policy["chosen"]  # the model's step, not gold's
    assert on_policy["chosen_source"] == "continuation" and on_policy["chosen_ends_answer"]
    assert fallback["chosen"] == action("4*5") and fallback["chosen_source"] == "gold"  # none correct: gold step
    assert counts == {"pairs": 2, "chosen_continuation": 1, "chosen_gold": 1}

    # stage=dpo loss=step_dpo data.negatives_source=synthetic on the written file trains on the same pairs
    path = tmp_path / "sampled_pairs.jsonl"
    write_jsonl(path, rows)
    dpo_cfg = compose([f"run_dir={tmp_path}", "data.format=react", "loss=step_dpo", "data.negatives_source=synthetic",
                       f"data.train_path={path}"])
    pairs, _ = build_pairs(dpo_cfg, RunContext(tmp_path), None, tok, enc, read_jsonl(path), 0)
    assert [p["chosen"] for p in pairs] == [on_policy["chosen"], fallback["chosen"]]
    ds = to_dataset(dpo_cfg, RunContext(tmp_path), enc, pairs, 0)
    assert tok.decode(ds[0]["prompt_ids"]).endswith(THOUGHT) and '"3+2"' in tok.decode(ds[0]["chosen_ids"])


def test_sample_stage_counts_where_step_dpo_chosen_steps_come_from(tmp_path):
    """The whole stage on a random checkpoint: every cut gets N samples, none of which is right, so
    every Step-DPO pair falls back to the gold step, and sample.json says so."""
    from agent_align.stages.generate import run as generate
    from agent_align.stages.sample import run as sample
    from tests.test_steps_trainer import tiny_lm

    common = [f"run_dir={tmp_path}", "data.format=react", "data.n_train=40", "data.n_eval=6",
              "hardware.eval_batch_size=8", "hardware.precision=fp32"]
    generate(compose(common), RunContext(tmp_path))
    model, tok = tiny_lm()
    model.save_pretrained(tmp_path / "ckpt")
    tok.save_pretrained(tmp_path / "ckpt")
    cfg = compose(common + [f"sample.model_path={tmp_path / 'ckpt'}", "sample.n_prompts=4", "sample.k=2",
                            "sample.max_new_tokens=6", "sample.step_dpo_continuations=2"])
    out = sample(cfg, RunContext(tmp_path))["step_dpo"]
    pairs = read_jsonl(tmp_path / "sampled_pairs.jsonl")
    assert out == json.loads((tmp_path / "sample.json").read_text())["step_dpo"]
    assert out["cuts"] == len(pairs) > 0 and out["sampled"] == 2 * out["cuts"] and out["continuations_per_cut"] == 2
    assert out["correct"] == out["chosen_on_policy"] == 0 and not any(p.get("continuations") for p in pairs)
    assert out["chosen_gold"] + out["chosen_best_sample"] + out["skipped_no_correct_step"] == out["cuts"]
    assert out["chosen_gold"] == out["step_pairs"] > 0


def test_on_policy_step_dpo_samples_continuations_for_the_policys_own_pairs(monkeypatch, tmp_path):
    """stage=dpo loss=step_dpo with on-policy negatives: the sampled pairs are scored, the policy's own
    continuations are drawn after each correct prefix, and the Step-DPO pairs are built from them."""
    import agent_align.steps.continuations as cont
    import agent_align.train.on_policy as op
    from agent_align.stages.dpo import build_pairs

    cfg = compose([f"run_dir={tmp_path}", "data.format=react", "loss=step_dpo", "data.negatives_source=on_policy",
                   "sample.step_dpo_continuations=3"])
    rows = [calc_row("add", "add 2 and 3", "2+3", "5")]
    monkeypatch.setattr(op, "sample_negatives", lambda cfg_, m, t, e, rows_, r: ([dict(x) for x in rows_], {"n": 1}))
    seen = {}

    def fake_continuations(cfg_, model, tok, enc, pairs, scorer, n, seed):
        seen.update(n=n, scores=[p.get("rejected_scores") for p in pairs])
        pairs[0]["continuations"] = [{"text": action("3+2"), "scores": [1.0], "step_index": 1}]
        return {"cuts": 1}
    monkeypatch.setattr(cont, "sample_continuations", fake_continuations)
    pairs, stats = build_pairs(cfg, RunContext(tmp_path), None, None, None, rows, 0)
    assert seen == {"n": 3, "scores": [[1.0, 0.0]]}  # scored before sampling, N from the config
    assert stats["step_dpo_continuations"] == {"cuts": 1}
    assert pairs[0]["chosen"] == action("3+2") and pairs[0]["assistant_prefix"] == THOUGHT


def test_dpo_dataset_cache_is_reused_only_for_the_same_pairs(tmp_path):
    from agent_align.stages.dpo import to_dataset
    from agent_align.train.encode import Encoder
    from tests.test_steps_trainer import tiny_lm

    cfg = compose([f"run_dir={tmp_path}", "data.format=react"])
    _, tok = tiny_lm()
    enc = Encoder(tok, 512, 400)
    ctx = RunContext(tmp_path)
    a, b = calc_row("add", "add 2 and 3", "2+3", "5"), calc_row("mul", "multiply 4 by 5", "4*5", "20")
    first = to_dataset(cfg, ctx, enc, [a], 0)
    again = to_dataset(cfg, ctx, enc, [a], 0)
    assert again["chosen_ids"] == first["chosen_ids"] and len(again) == 1
    changed = to_dataset(cfg, ctx, enc, [a, b], 0)  # a resumed run whose pairs differ must not read the old cache
    assert len(changed) == 2 and "multiply 4 by 5" in tok.decode(changed[1]["prompt_ids"])
    # under torchrun the other ranks only load what rank 0 wrote (two ranks replacing one directory at
    # once crashed a DDP run): nothing is tokenised or saved again, and no temp directory is left
    mtime = (ctx.path("cache", "dpo_dataset_r0") / "pairs.sha256").stat().st_mtime_ns
    other = to_dataset(cfg, ctx, enc, [], 0, write=False)
    assert other["prompt_ids"] == changed["prompt_ids"]
    assert (ctx.path("cache", "dpo_dataset_r0") / "pairs.sha256").stat().st_mtime_ns == mtime
    assert [p.name for p in ctx.path("cache").iterdir()] == ["dpo_dataset_r0"]


@pytest.mark.parametrize("max_pairs, on_policy, expected", [(8, 10, (4, 4)), (0, 10, (10, 10)), (8, 3, (3, 3))])
def test_mixed_negatives_split_the_pair_cap_between_the_sources(monkeypatch, tmp_path, max_pairs, on_policy, expected):
    """``data.negatives_source=mixed``: as many synthetic pairs as on-policy ones, within ``dpo.max_pairs`` (the cap
    used to cut the list after the on-policy pairs, so a run with more on-policy pairs than the cap trained on no
    synthetic pair at all)."""
    import agent_align.train.on_policy as op
    from agent_align.stages.dpo import build_pairs

    cfg = compose([f"run_dir={tmp_path}", "data.negatives_source=mixed", f"dpo.max_pairs={max_pairs}"])
    rows = [calc_row("add", f"add {i} and 3", f"{i}+3", str(i + 3)) for i in range(20)]
    monkeypatch.setattr(op, "sample_negatives", lambda cfg_, m, t, e, rows_, r: (
        [dict(x, source="on_policy") for x in rows_[:on_policy]], {}))
    pairs, stats = build_pairs(cfg, RunContext(tmp_path), None, None, None, rows, 0)
    sources = Counter(p["source"] for p in pairs)
    assert (sources["on_policy"], sources["synthetic"]) == expected and stats["pairs_total"] == sum(expected)
