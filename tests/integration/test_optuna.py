"""The Optuna search (+hparams_search=sspr_optuna) for real: 2 tiny-pipeline trials in-process (~1 min).
The sweeper maximises what `@hydra.main` returns (aligned SSPR), and stage=compare finds an Optuna
sweep's keys (it writes no multirun.yaml) in the search space each trial's Hydra config carries."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import run_cli
from tests.integration.test_slurm import TINY_PIPELINE

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_optuna_search_runs_trials_and_reports_the_best(tmp_path):
    sweep = tmp_path / "optuna"
    res = run_cli(["-m", "+hparams_search=sspr_optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=1",
                   "hydra.sweeper.sampler.n_startup_trials=1", *TINY_PIPELINE, f"hydra.sweep.dir={sweep}",
                   "hydra.sweep.subdir=${hydra:job.num}"], timeout=1200)
    assert res.returncode == 0, res.stderr[-4000:]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == {"loss", "loss.beta", "dpo.lr", "data.negatives_per_prompt"}
    objectives = [json.loads((sweep / str(n) / "summary.json").read_text())["objective"] for n in (0, 1)]
    assert best["best_value"] == max(objectives)  # the sweeper got each trial's aligned SSPR
    res = run_cli(["stage=compare", f"compare.sweep={sweep}", f"hydra.run.dir={tmp_path / 'cmp'}"])
    assert res.returncode == 0, res.stderr[-3000:]
    header = (sweep / "compare" / "comparison.md").read_text().split("\n")[2]
    assert header.startswith("| run | loss | loss.beta | dpo.lr | data.negatives_per_prompt | aligned_sspr |"), header
