"""Tiny-model training: every stage and loss trains a few steps (parameters change, metrics are
logged), checkpoints load with plain transformers, the pipeline writes its report, and a killed
run resumes to the same result."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from agent_align.stages.context import RunContext
from agent_align.validation.categories import CATEGORIES
from tests.conftest import MICRO, REPO, SHARED, compose, run_cli, tiny_first

pytestmark = pytest.mark.slow


def _ctx(tmp_path):
    return RunContext(run_dir=tmp_path)


def _params(path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    from agent_align.models import resolve_model_path
    from agent_align.stages import STAGES

    run_dir = tmp_path_factory.mktemp("sft")
    cfg = compose([f"run_dir={run_dir}", *MICRO, "sft.max_steps=4"])
    ctx = RunContext(run_dir=run_dir)
    STAGES.get("generate")(cfg, ctx)
    base = _params(resolve_model_path(cfg))
    result = STAGES.get("sft")(cfg, ctx)
    return cfg, run_dir, base, result


def test_sft_changes_parameters_and_logs_loss(sft_run):
    cfg, run_dir, base, result = sft_run
    after = _params(run_dir / "checkpoints" / "sft")  # loads with plain AutoModelForCausalLM
    changed = [k for k in base if not torch.equal(base[k], after[k])]
    assert len(changed) == len(base), set(base) - set(changed)
    history = [json.loads(line) for line in open(run_dir / "metrics" / "sft.jsonl")]
    assert sum("loss" in h for h in history) >= 4 and result["steps"] == 4


@pytest.mark.parametrize("loss", ["dpo", "ipo", "rpo"])
def test_dpo_losses_train_from_the_sft_checkpoint(sft_run, tmp_path, loss):
    from agent_align.stages import STAGES

    _, sft_dir, _, _ = sft_run
    cfg = compose([f"run_dir={tmp_path}", *MICRO, f"loss={loss}", "dpo.max_steps=3",
                   f"data.train_path={sft_dir}/data/train.jsonl", f"dpo.policy_from={sft_dir}/checkpoints/sft",
                   "data.negatives_source=mixed"])
    before = _params(sft_dir / "checkpoints" / "sft")
    result = STAGES.get("dpo")(cfg, _ctx(tmp_path))
    after = _params(tmp_path / "checkpoints" / "dpo")
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) == len(before)
    history = [json.loads(line) for line in open(tmp_path / "metrics" / "dpo.jsonl")]
    assert sum("rewards/margins" in h for h in history) >= 3 and result["final_loss"] is not None
    pairs = [json.loads(line) for line in open(tmp_path / "data" / "dpo_pairs_r0.jsonl")]
    assert {p["source"] for p in pairs} <= {"on_policy", "synthetic"} and "synthetic" in {p["source"] for p in pairs}


def test_on_policy_pairs_are_the_policys_own_failures(sft_run, tmp_path):
    from agent_align.models import load_model_and_tokenizer
    from agent_align.train.encode import Encoder
    from agent_align.train.on_policy import sample_negatives
    from agent_align.validation import validate_output

    cfg, sft_dir, _, _ = sft_run
    model, tok = load_model_and_tokenizer(cfg, str(sft_dir / "checkpoints" / "sft"))
    rows = [json.loads(line) for line in open(sft_dir / "data" / "train.jsonl")]
    pairs, stats = sample_negatives(cfg, model, tok, Encoder(tok, 256, 200), rows, 0)
    assert stats["samples"] == cfg.dpo.sample_prompts * cfg.dpo.samples_per_prompt
    for p in pairs:
        v = validate_output(p["rejected"], p["schema"], "json")
        assert not v.passed and v.category == p["negative_type"] and p["source"] == "on_policy"


def test_pipeline_writes_summary_report_plots_and_wandb_run(tmp_path):
    bfcl = [f"data.bfcl_dir={SHARED / 'bfcl'}", "evaluate.bfcl_limit=2"]
    res = run_cli([f"run_dir={tmp_path}", *MICRO, *bfcl, "sft.max_steps=3", "dpo.max_steps=2",
                   "data.negatives_source=mixed", "logger=wandb"], env={"WANDB_MODE": "offline", "WANDB_API_KEY": ""})
    assert res.returncode == 0, res.stderr[-3000:]
    runs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0  # one offline W&B run holding the whole pipeline
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert list(summary["models"]) == ["base", "baseline", "aligned"]  # the base model zero-shot, then trained
    assert list(summary["bfcl"]) == ["base", "baseline", "aligned"]
    for label, b in summary["bfcl"].items():  # BFCL's first 2 questions of each default category
        assert set(b["categories"]) == {"simple_python", "multiple", "parallel", "parallel_multiple"}
        assert b["overall"]["n"] == 8 and 0.0 <= b["overall"]["ast_accuracy"] <= 1.0
    assert summary["model_source"]["path"]  # a built model: where it lives (GGUF models: package, sha256)
    for label in ("base", "baseline", "aligned"):
        m = summary["models"][label]
        assert {"n", "passed", "sspr", "failures", "by_split"} <= set(m)
        assert set(m["by_split"]) == {"seen", "unseen", "parallel"}  # parallel: round(0.125 * n_eval) prompts
        assert m["n"] == 18 and m["by_split"]["parallel"]["n"] == 2 and len(m["failures"]) == len(CATEGORIES)
    assert {"generate", "evaluate_base", "bfcl_base", "sft", "evaluate_baseline", "bfcl_baseline", "dpo",
            "evaluate_aligned", "bfcl_aligned"} <= set(summary["timings"])
    assert all(v > 0 for v in summary["peak_memory_mb"].values())
    report = (tmp_path / "report.md").read_text()
    assert "Strict Schema Pass Rate" in report and "Failure breakdown" in report and "## BFCL" in report
    for png in ("sspr_by_split.png", "failures.png", "training_curves.png", "bfcl.png"):
        assert (tmp_path / "plots" / png).stat().st_size > 1000
    # a re-run finds every stage finished and redoes nothing
    again = run_cli([f"run_dir={tmp_path}", *MICRO, *bfcl, "sft.max_steps=3", "dpo.max_steps=2",
                     "data.negatives_source=mixed", "logger=wandb"], env={"WANDB_MODE": "offline", "WANDB_API_KEY": ""})
    assert again.returncode == 0 and "already finished" in again.stderr + again.stdout


def test_killed_sft_resumes_to_the_same_weights(tmp_path):
    # fp32: bf16 matmuls on AMX are not bitwise reproducible across runs, and the test is about resuming
    args = [*MICRO, "stage=sft", "sft.max_steps=12", "sft.save_steps=3", "data.n_train=200", "hardware.precision=fp32"]
    gen = run_cli(["stage=generate", f"run_dir={tmp_path / 'a'}", *MICRO, "data.n_train=200"])
    assert gen.returncode == 0, gen.stderr[-2000:]
    run_cli(["stage=generate", f"run_dir={tmp_path / 'b'}", *MICRO, "data.n_train=200"])
    straight = run_cli([f"run_dir={tmp_path / 'a'}", *args])
    assert straight.returncode == 0, straight.stderr[-2000:]
    # kill the second run once it has saved its first checkpoint
    cmd = [sys.executable, "-m", "agent_align", *tiny_first([f"run_dir={tmp_path / 'b'}", *args])]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    trainer_dir = tmp_path / "b" / "checkpoints" / "sft-trainer"
    deadline = time.time() + 300
    while time.time() < deadline and not list(trainer_dir.glob("checkpoint-*/trainer_state.json")):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "b" / "checkpoints" / "sft").exists()  # killed before the final save
    resumed = run_cli([f"run_dir={tmp_path / 'b'}", *args])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout + resumed.stderr
    a, b = _params(tmp_path / "a" / "checkpoints" / "sft"), _params(tmp_path / "b" / "checkpoints" / "sft")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_sft_on_trajectories_masks_observations_and_history(sft_run):
    """Conversational rows: tool observations are never trained on; mask_history keeps only the last turn."""
    from agent_align.models import load_model_and_tokenizer
    from agent_align.stages.sft import sft_examples
    from agent_align.train.encode import Encoder

    cfg, run_dir, _, _ = sft_run
    _, tok = load_model_and_tokenizer(cfg, str(run_dir / "checkpoints" / "sft"))
    row = {"messages": [{"role": "system", "content": "Answer with tools."},
                        {"role": "user", "content": "Who leads Sales?"},
                        {"role": "assistant", "content": '{"tool": "search_users", "parameters": {"location": "Oslo", "limit": 1}}'},
                        {"role": "tool", "content": "OBSERVATION Dana Okafor leads Sales"},
                        {"role": "assistant", "content": '{"tool": "FINAL", "parameters": {"answer": "Dana Okafor"}}'}],
           "tools": None}
    enc = Encoder(tok, 256, 200)
    full = sft_examples(compose([*MICRO]), [row], enc)[0]
    last = sft_examples(compose([*MICRO, "sft.mask_history=true"]), [row], enc)[0]
    trained = lambda ex: tok.decode([t for t, lab in zip(ex["input_ids"], ex["labels"]) if lab != -100])
    assert "OBSERVATION" not in trained(full) and "Dana Okafor leads" not in trained(full)
    assert "search_users" in trained(full) and "FINAL" in trained(full)
    assert "search_users" not in trained(last) and "FINAL" in trained(last)
