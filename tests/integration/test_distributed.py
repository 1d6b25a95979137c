"""Two CPU processes under torchrun: DDP and DeepSpeed ZeRO-2 over gloo, tiny model, 3 steps per stage.

    python -m pytest -m integration tests/integration/test_distributed.py     # ~2-3 min on 2 cores

Both ranks took part when: each rank logged the end of the stage, the trainer checkpoint has one RNG
state per rank (and, under ZeRO-2, one optimizer partition per rank), and one optimizer step covered
2 x micro-batch examples. The saved models then load with plain transformers.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SIZE = ["data.n_train=64", "data.n_eval=8"]
MICRO = 4  # hardware=cpu_ddp/cpu_zero2 per-process batch (sft and dpo)
# torchrun is launched directly (not through run_cli), so the tiny model is chosen here
TINY = ["model=tiny", "evaluate.bfcl=false", "sft.lr=2e-3", "dpo.lr=5e-5", "model.hidden_size=64", "model.num_layers=2", "model.intermediate_size=128", "model.num_heads=2",
        "model.vocab_size=512", "model.tokenizer_corpus_rows=300", "model.copy_warmup_steps=0", "sft.max_steps=3", "dpo.max_steps=3",
        "sft.logging_steps=1", "dpo.logging_steps=1", "evaluate.max_new_tokens=32"]
# DDP runs the whole pipeline in one launch (SFT, both evaluations, DPO, summary.json). ZeRO-2 runs SFT
# and DPO as separate launches: in one process the DPO trainer reuses the model object the SFT
# DeepSpeed engine hooked, and ZeRO-2's gradient hooks then fail (reported to the pipeline's owner).
COMMANDS = {"cpu_ddp": [["stage=pipeline"]], "cpu_zero2": [["stage=pipeline"]]}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> list[str]:
    """64 training prompts made once; the pipeline generates its own (same size) into its run dir."""
    d = tmp_path_factory.mktemp("data")
    res = run_cli(["stage=generate", f"run_dir={d}", f"hydra.run.dir={d}", *SIZE])
    assert res.returncode == 0, res.stderr[-2000:]
    return [f"data.train_path={d / 'data' / 'train.jsonl'}", f"data.eval_path={d / 'data' / 'eval.jsonl'}"]


def torchrun(args: list[str], run_dir: Path) -> subprocess.CompletedProcess:
    # hydra.run.dir: the default (runs/<experiment>/<all overrides>) exceeds the 255-byte file name limit here
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--tee", "3", "-m", "agent_align",
           *args, f"run_dir={run_dir}", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)


def failure_report(out: str, per_rank: int = 2500) -> str:
    """The end of each rank's own output (``--tee`` prefixes its lines with ``[defaultN]:``): the rank
    that crashed first is rarely the one whose traceback ends the combined log."""
    parts = []
    for rank in (0, 1):
        lines = "\n".join(ln for ln in out.splitlines() if ln.startswith(f"[default{rank}]:"))
        parts.append(f"--- rank {rank} ---\n{lines[-per_rank:]}")
    return "\n".join([*parts, "--- torchrun ---", out[-1500:]])


def metrics(run_dir: Path, stage: str) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics" / f"{stage}.jsonl").read_text().splitlines() if line]


def check_both_ranks_trained(run_dir: Path, stage: str, trainer_dir: str, n_examples: int, zero: bool) -> None:
    ckpt = run_dir / "checkpoints" / trainer_dir / "checkpoint-3"
    assert sorted(p.name for p in ckpt.glob("rng_state_*.pth")) == ["rng_state_0.pth", "rng_state_1.pth"], ckpt
    if zero:
        # one optimizer-state partition per rank ("bf16_" prefix when training in bf16)
        parts = sorted(p.name.split("zero_pp_rank_")[1][0] for p in (ckpt / "global_step3").glob("*zero_pp_rank_*optim_states.pt"))
        assert parts == ["0", "1"], list((ckpt / "global_step3").iterdir())
    first = next(r for r in metrics(run_dir, stage) if r.get("step") == 1 and "loss" in r)
    # one optimizer step consumed 2 x MICRO examples: the data was split over two ranks
    assert first["epoch"] == pytest.approx(1 / math.ceil(n_examples / (2 * MICRO))), (stage, n_examples, first)


@pytest.mark.parametrize("hardware", sorted(COMMANDS))
def test_sft_and_dpo_on_two_cpu_processes(hardware, data, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir = tmp_path / hardware
    for stage_args in COMMANDS[hardware]:
        inputs = SIZE if stage_args == ["stage=pipeline"] else data  # the pipeline writes data.train_path
        res = torchrun([*stage_args, f"hardware={hardware}", *inputs, *TINY], run_dir)
        out = res.stdout + res.stderr
        assert res.returncode == 0, failure_report(out)
        stage = stage_args[0].split("=")[1]
        for rank in (0, 1):
            assert any(ln.startswith(f"[default{rank}]:") and f"stage {stage} done" in ln for ln in out.splitlines()), \
                f"rank {rank} did not finish stage {stage}"
    sft = json.loads((run_dir / "stages" / "sft.json").read_text())
    dpo = json.loads((run_dir / "stages" / "dpo.json").read_text())
    zero = hardware == "cpu_zero2"
    check_both_ranks_trained(run_dir, "sft", "sft-trainer", sft["examples"], zero)
    check_both_ranks_trained(run_dir, "dpo", "dpo-trainer-r0", dpo["rounds"][0]["pairs_total"], zero)
    assert dpo["final_reward_margin"] is not None
    if "stage=pipeline" in COMMANDS[hardware][0]:
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["models"]["aligned"]["n"] == 9 and set(summary["timings"]) >= {"sft", "dpo"}  # 8 eval requests + 1 parallel

    base = AutoModelForCausalLM.from_pretrained(run_dir / "checkpoints" / "sft")
    aligned = AutoModelForCausalLM.from_pretrained(run_dir / "checkpoints" / "dpo")
    tok = AutoTokenizer.from_pretrained(run_dir / "checkpoints" / "dpo")
    with torch.no_grad():
        logits = aligned(**tok('{"name": "get_weather"}', return_tensors="pt")).logits
    assert logits.shape[-1] == aligned.config.vocab_size and torch.isfinite(logits).all()
    changed = [n for (n, a), (_, b) in zip(base.named_parameters(), aligned.named_parameters()) if not torch.equal(a, b)]
    assert changed, "DPO left every parameter of the SFT model unchanged"
