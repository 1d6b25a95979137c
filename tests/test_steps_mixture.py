"""The positive / negative (NAT-tagged) / synthetic (procedural-tool) SFT mixture, the mixture-study
experiment's sweep, and its table: mean and spread over seeds, written when the sweep ends."""

from __future__ import annotations

import itertools
import json
import runpy
import statistics
from collections import Counter

import pytest
from omegaconf import OmegaConf

from agent_align.errors import UserError
from agent_align.jsonl import write_jsonl
from tests.conftest import REPO, compose


def test_mixture_draws_real_tool_positives_nat_negatives_and_procedural_synthetics(tmp_path):
    from agent_align.data.generator import Generator, build_pools
    from agent_align.steps.mixture import real_tool_names, sft_rows

    tiny = ["data.procedural_tools=400", "data.rename_fraction=0", "data.parallel_fraction=0"]  # the tiny recipe's tools
    cfg = compose([f"run_dir={tmp_path}", *tiny, "data.negatives=nat", "mixture.negative=0.25",
                   "mixture.synthetic=0.25", "mixture.total=80"])  # positive null: the remaining half
    rows = list(Generator(cfg.data, 0).rows("train", 60))
    procedural = {t.name for t in build_pools(cfg.data, 0).procedural}
    real = real_tool_names(cfg)
    assert procedural and real and not procedural & real
    assert {r["tool"] in procedural for r in rows} == {True, False}  # the generator mixes both kinds of tool
    out = sft_rows(rows, cfg)
    assert Counter(r["kind"] for r in out) == {"positive": 40, "negative": 20, "synthetic": 20}
    by_id = {r["id"]: r for r in rows}
    for r in out:
        src = by_id[r["id"].rsplit("-", 1)[0]]
        if r["kind"] == "negative":
            assert r["prompt"] == "[Incorrect] " + src["prompt"] and r["completion"] == src["rejected"]
        else:
            assert r["prompt"] == "[Correct] " + src["prompt"] and r["completion"] == src["chosen"]
            assert (src["tool"] in procedural) == (r["kind"] == "synthetic")
    assert out == sft_rows(rows, cfg)  # deterministic for the seed
    weights = compose([f"run_dir={tmp_path}", *tiny, "data.negatives=nat", "mixture.positive=2", "mixture.negative=1",
                       "mixture.synthetic=1", "mixture.total=80"])  # explicit weights, normalised
    assert Counter(r["kind"] for r in sft_rows(rows, weights)) == {"positive": 40, "negative": 20, "synthetic": 20}
    assert {r["kind"] for r in sft_rows(rows, compose([f"run_dir={tmp_path}", *tiny]))} == {"positive"}  # no mixture


def test_mixture_mistakes_fail_naming_the_key_and_the_fix(tmp_path):
    from agent_align.checks import check_config
    from agent_align.data.generator import Generator
    from agent_align.steps.mixture import sft_rows

    def check(*overrides):
        check_config(compose([f"run_dir={tmp_path}", *overrides]))
    with pytest.raises(UserError, match="mixture.negative.*data.negatives=nat"):
        check("mixture.negative=0.5")
    with pytest.raises(UserError, match=r"mixture.negative.*negative \+ synthetic = 1.25 > 1"):
        check("data.negatives=nat", "mixture.negative=0.75", "mixture.synthetic=0.5")
    with pytest.raises(UserError, match="mixture.synthetic.*data.procedural_tools"):
        check("mixture.synthetic=0.5", "data.procedural_tools=0")
    check("data.negatives=nat", "mixture.negative=0.0", "mixture.synthetic=0.0")  # all positive: a valid mix
    cfg = compose([f"run_dir={tmp_path}", "data.procedural_tools=400", "data.procedural_fraction=1.0",
                   "mixture.synthetic=0.5"])
    with pytest.raises(UserError, match=r"mixture.positive: .*\(share 0.50\), but every training request uses a procedural"):
        sft_rows(list(Generator(cfg.data, 0).rows("train", 10)), cfg)


def test_mixture_study_sweeps_six_mixes_over_three_seeds(tmp_path):
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from hydra.utils import instantiate

    from agent_align.checks import check_config
    from agent_align.steps.mixture import shares
    from agent_align.steps.mixture_table import MixtureTableCallback
    from tests.conftest import CONF

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        full = hcompose("config", overrides=["+experiment=mixture_study"], return_hydra_config=True)
    params = {k: v.split(",") for k, v in full.hydra.sweeper.params.items()}
    assert set(params) == {"mixture.negative", "mixture.synthetic", "seed"} and params["seed"] == ["0", "1", "2"]
    assert isinstance(instantiate(full.hydra.callbacks.mixture_table), MixtureTableCallback)
    mixes = set()
    for neg, syn in itertools.product(params["mixture.negative"], params["mixture.synthetic"]):
        cfg = compose([f"run_dir={tmp_path}", "+experiment=mixture_study", f"mixture.negative={neg}",
                       f"mixture.synthetic={syn}"])
        check_config(cfg)
        assert cfg.data.negatives == "nat" and cfg.mixture.total == 0 and cfg.data.procedural_tools > 0
        mixes.add(tuple(round(v, 3) for v in shares(cfg.mixture).values()))
    assert mixes == {(1.0, 0.0, 0.0), (0.75, 0.0, 0.25), (0.5, 0.0, 0.5),
                     (0.75, 0.25, 0.0), (0.5, 0.25, 0.25), (0.25, 0.25, 0.5)}


def fake_job(sweep, num: int, neg: float, syn: float, seed: int, sspr: float, outputs: list[str]):
    """A finished pipeline job as the sweep leaves it: its config, summary and baseline predictions."""
    from agent_align.data.generator import Generator

    job = sweep / f"{num}_mixture.negative-{neg}__mixture.synthetic-{syn}__seed-{seed}"
    cfg = compose([f"run_dir={job}", "+experiment=mixture_study", f"mixture.negative={neg}",
                   f"mixture.synthetic={syn}", f"seed={seed}"])
    (job / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, job / ".hydra" / "config.yaml")
    rows = list(Generator(cfg.data, seed).rows("eval", len(outputs)))
    write_jsonl(job / "data" / "eval.jsonl", rows)
    write_jsonl(job / "predictions_baseline.jsonl",
                [{"id": r["id"], "output": r["chosen"] if o == "gold" else o} for r, o in zip(rows, outputs)])
    model = {"sspr": sspr, "by_split": {"seen": {"sspr": sspr + 0.1}, "unseen": {"sspr": sspr - 0.1}}}
    (job / "summary.json").write_text(json.dumps({"models": {"baseline": model, "aligned": model},
                                                  "timings": {"sft": 1.0}}))
    return job


def test_mixture_table_reports_mean_and_spread_over_seeds_when_the_sweep_ends(tmp_path, capsys):
    from agent_align.steps.mixture_table import MixtureTableCallback

    sweep = tmp_path / "multirun"
    fake_job(sweep, 0, 0.0, 0.5, 0, 0.4, ["gold", "oops"])
    fake_job(sweep, 1, 0.0, 0.5, 1, 0.6, ["gold", "gold"])
    fake_job(sweep, 2, 0.25, 0.25, 0, 0.3, ["oops", "oops"])
    (sweep / "3_mixture.negative-0.25__mixture.synthetic-0.25__seed-1" / ".hydra").mkdir(parents=True)  # died
    MixtureTableCallback().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))

    got = json.loads((sweep / "mixture_table.json").read_text())
    assert len(got["jobs"]) == 3
    default, negatives = got["groups"]  # sorted by negative share
    assert (default["positive"], default["negative"], default["synthetic"], default["seeds"]) == (0.5, 0.0, 0.5, [0, 1])
    assert default["sspr_sft"] == {"mean": 0.5, "sd": round(statistics.stdev([0.4, 0.6]), 4), "min": 0.4, "max": 0.6, "n": 2}
    assert default["step_score_sft"]["mean"] == 0.75  # one of two outputs wrong in seed 0, none in seed 1
    assert negatives["seeds"] == [0] and negatives["sspr_sft"]["sd"] == 0.0 and negatives["step_score_sft"]["mean"] == 0.0
    table = (sweep / "mixture_table.md").read_text()
    assert "| 0.500 | 0.000 | 0.500 | 0,1 | 0.500 ± 0.141 | 0.600 ± 0.141 | 0.400 ± 0.141 |" in table
    assert "| 0.500 | 0.250 | 0.250 | 0 | 0.300 |" in table  # one seed: no spread to show
    assert (sweep / "mixture.png").stat().st_size > 0

    (sweep / "mixture_table.md").unlink()
    script = runpy.run_path(str(REPO / "experiments" / "mixture_table.py"), run_name="mixture_table")
    assert script["main"]([str(sweep)]) == 0 and (sweep / "mixture_table.md").read_text() == table
    assert "0.500 ± 0.141" in capsys.readouterr().out
    assert script["main"]([str(tmp_path / "nothing")]) == 2
    assert "no job directory with summary.json" in capsys.readouterr().err
