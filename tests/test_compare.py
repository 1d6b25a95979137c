"""stage=compare on a real (tiny, in-process) Hydra sweep whose jobs get synthetic summary.json files,
and the swept-key helpers both compare and the W&B logger use."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest
import yaml

from agent_align.compare.jobs import sweep_jobs
from agent_align.compare.overrides import differing, job_tags, swept_keys, values
from agent_align.errors import UserError
from agent_align.stages.context import RunContext
from tests.conftest import compose, run_cli

# aligned SSPR per (loss, beta): ipo/0.1 is best, dpo/0.05 worst
SSPR = {("dpo", "0.05"): 0.40, ("dpo", "0.1"): 0.55, ("ipo", "0.05"): 0.60, ("ipo", "0.1"): 0.75}


def summary(aligned: float, margin: float) -> dict:
    def model(sspr: float, fails: dict) -> dict:
        n = 200
        return {"n": n, "passed": round(n * sspr), "sspr": sspr, "failures": fails,
                "by_split": {"seen": {"n": 100, "passed": round(100 * (sspr + 0.1)), "sspr": sspr + 0.1},
                             "unseen": {"n": 100, "passed": round(100 * (sspr - 0.1)), "sspr": sspr - 0.1}}}

    return {"models": {"baseline": model(0.2, {"missing_required": 120, "json_error": 40}),
                       "aligned": model(aligned, {"missing_required": round(200 * (1 - aligned)) - 5, "enum_violation": 5})},
            "timings": {"generate": 1.5, "sft": 30.0, "dpo": 20.0, "evaluate": 8.5, "total": 60.0},
            "peak_memory_mb": {"sft": 900.0, "dpo": 1200.4},
            "train": {"dpo": {"final_reward_margin": margin, "final_loss": 0.3}}, "objective": aligned}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A real 4-job sweep (basic launcher, stage=generate: ~3 s) plus a summary.json in 3 of its jobs."""
    d = tmp_path_factory.mktemp("sweep") / "multirun" / "exp" / "2026-01-01_00-00-00"
    res = run_cli(["-m", "stage=generate", "data.n_train=4", "data.n_eval=4", "loss=dpo,ipo", "loss.beta=0.05,0.1",
                   f"hydra.sweep.dir={d}"], timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    for job in sorted(p for p in d.iterdir() if p.is_dir()):
        ov = values(yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()))
        key = (ov["loss"], ov["loss.beta"])
        if key == ("dpo", "0.05"):
            continue  # an unfinished job: no summary.json
        s = summary(SSPR[key], margin=10 * SSPR[key])
        if key == ("dpo", "0.1"):  # margin only in the DPO log (TRL log history rows), not in the summary
            del s["train"]
            (job / "metrics").mkdir()
            (job / "metrics" / "dpo.jsonl").write_text("\n".join(json.dumps(r) for r in (
                {"step": 5, "rewards/margins": 1.0, "loss": 0.6}, {"step": 10, "rewards/margins": 5.5}, {"train_loss": 0.5})))
        (job / "summary.json").write_text(json.dumps(s))
    return d


def test_swept_keys_from_sweep_syntax_and_sweeper_params():
    assert swept_keys(["loss=dpo,ipo", "loss.beta=0.05,0.1", "seed=1", "stage=sft,dpo", "hydra.verbose=true"]) == \
        ["loss", "loss.beta"]
    assert swept_keys(["x=range(1,3)", "+y=choice(a,b)", "z=1"], {"dpo.lr": "interval(1e-5,1e-3)", "x": "..."}) == \
        ["x", "y", "dpo.lr"]
    assert values(["a=1", "+b=[x,y]", "~c", "hydra.job.chdir=true"]) == {"a": "1", "b": "[x,y]"}
    assert differing({"r1": {"a": "1", "b": "2"}, "r2": {"a": "1", "b": "3", "c": "4"}}) == ["b", "c"]


def test_sweep_jobs_read_hydra_records(sweep):
    jobs = sweep_jobs(sweep, live=False)
    assert [j.num for j in jobs] == [0, 1, 2, 3]
    assert [j.swept for j in jobs] == [{"loss": l, "loss.beta": b} for l in ("dpo", "ipo") for b in ("0.05", "0.1")]
    assert all(j.state == "done" for j in jobs)  # basic launcher: its stage record says it finished
    from omegaconf import OmegaConf

    node = OmegaConf.load(jobs[3].dir / ".hydra" / "hydra.yaml").hydra
    assert job_tags(node) == ["loss=ipo", "loss.beta=0.1"]


def test_compare_sweep_table_and_plots(sweep, tmp_path):
    from agent_align.stages.compare import run

    cfg = compose(["stage=compare", f"compare.sweep={sweep}", f"run_dir={tmp_path}"])
    res = run(cfg, RunContext(run_dir=tmp_path))
    out = sweep / "compare"
    assert res["out"] == str(out) and res["rows"] == 3 and res["swept_keys"] == ["loss", "loss.beta"]
    rows = list(csv.DictReader((out / "comparison.csv").open()))
    assert [(r["loss"], r["loss.beta"]) for r in rows] == [("ipo", "0.1"), ("ipo", "0.05"), ("dpo", "0.1")]
    best = rows[0]
    assert float(best["aligned_sspr"]) == 0.75 and float(best["aligned_unseen"]) == pytest.approx(0.65)
    assert float(best["baseline_sspr"]) == 0.2 and float(best["reward_margin"]) == pytest.approx(7.5)
    assert int(best["fail_missing_required"]) == 45 and int(best["fail_enum_violation"]) == 5
    assert float(best["time_s"]) == 60.0 and int(best["peak_mem_mb"]) == 1200
    assert float(rows[2]["reward_margin"]) == 5.5  # from metrics/dpo.jsonl
    md = (out / "comparison.md").read_text()
    assert "| run | loss | loss.beta | aligned_sspr |" in md and "| 3 | ipo | 0.1 | 75.0% |" in md
    assert "Not included:" in md and "no summary.json" in md  # the job without a summary is named, not dropped silently
    for png in ("sspr.png", "failures.png", "margin_vs_sspr.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, png


def test_compare_listed_runs_uses_differing_overrides(sweep, tmp_path):
    from agent_align.stages.compare import run

    dirs = sorted(str(p) for p in sweep.iterdir() if p.name[:1] in "23")
    cfg = compose(["stage=compare", f"compare.runs=[{','.join(dirs)}]", f"compare.out={tmp_path / 'cmp'}"])
    res = run(cfg, RunContext(run_dir=tmp_path))
    assert res["swept_keys"] == ["loss.beta"]  # both runs are ipo: only beta differs
    rows = list(csv.DictReader((tmp_path / "cmp" / "comparison.csv").open()))
    assert [r["loss.beta"] for r in rows] == ["0.1", "0.05"]


def test_compare_wandb_offline_logs_the_table(sweep, tmp_path, monkeypatch):
    from agent_align.stages.compare import run

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = compose(["stage=compare", "logger=wandb", f"compare.sweep={sweep}", f"compare.out={tmp_path}"])
    run(cfg, RunContext(run_dir=tmp_path))
    runs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0
    deadline = time.monotonic() + 30  # W&B's service process may still be writing after run.finish() on a busy machine
    while b"comparison" not in runs[0].read_bytes() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert b"comparison" in runs[0].read_bytes()


def test_compare_user_errors_are_one_line(tmp_path):
    res = run_cli(["stage=compare", f"run_dir={tmp_path}"])
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1] == ("error: config key 'compare.sweep' = None: set "
                                                   "compare.sweep=MULTIRUN_DIR or compare.runs=[RUN_DIR,...]")
    empty = tmp_path / "empty_sweep"
    empty.mkdir()
    from agent_align.stages.compare import run

    with pytest.raises(UserError, match="no run has a usable summary.json"):
        run(compose(["stage=compare", f"compare.sweep={empty}"]), RunContext(run_dir=tmp_path))
    with pytest.raises(UserError, match="run directory not found"):
        run(compose(["stage=compare", f"compare.runs=[{tmp_path / 'nope'}]"]), RunContext(run_dir=tmp_path))
