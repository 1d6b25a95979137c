"""benchmarks/run.py --quick: the harness runs every comparison end to end and writes its JSON. It checks
that the harness works, not how fast anything is: no timing is compared with a threshold."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow
RATIOS = {"sft_tokens_per_s", "dpo_pairs_per_s", "dpo_peak_memory", "ref_logps_pairs_per_s", "sampling_samples_per_s",
          "eval_calls_per_s", "rollouts_per_s"}
COMPARISONS = ("sft", "dpo", "ref", "sampling", "eval", "rollouts")


def _numbers(obj, path=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numbers(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _numbers(v, f"{path}[{i}]")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield path, obj


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "benchmarks/run.py", "--quick", "--out", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def test_quick_run_writes_every_key_with_finite_positive_numbers(quick):
    result, stdout = quick
    assert set(result) == {"machine", "model", "ratios", "mfu", "pipeline_seconds", "raw"}
    assert result["model"] == "tiny"
    assert set(result["ratios"]) == RATIOS
    assert result["pipeline_seconds"] is None  # --quick never runs the pipeline
    assert {"cpu", "cores_total", "flags", "torch", "trl", "transformers", "matmul_peak_flops",
            "training_precision", "bf16_speedup"} <= set(result["machine"])
    for key in (*COMPARISONS, "mfu", "settings", "targets", "command"):
        assert key in result["raw"], key
    headline = [("mfu", result["mfu"]), *((f"ratios.{k}", v) for k, v in result["ratios"].items()),
                *_numbers(result["machine"]["matmul_peak_flops"], "machine.matmul_peak_flops")]
    for path, value in headline:
        assert math.isfinite(value) and value > 0, (path, value)
    for path, value in _numbers(result):
        assert math.isfinite(value) and value >= 0, (path, value)
    for comparison in COMPARISONS:
        for side in ("ours", "baseline"):
            for run in result["raw"][comparison][side]["runs"]:
                assert run["seconds"] > 0 and run["rate"] > 0 and run["peak_rss_mb"] > 0, (comparison, side, run)
    assert result["raw"]["sft"]["same_tokens_fraction"] == 1.0  # both trainers saw the same token sequences
    assert result["raw"]["dpo"]["same_tokens_fraction"] == 1.0
    # the reference pass: ours (shared prompt) and TRL's precompute give the same log-probs, to bf16 rounding
    assert result["raw"]["ref"]["ref_logps_within_2pct_fraction"] == 1.0
    # equal outputs get equal verdicts; outputs ours cut early (call end, prose) must still agree on the verdict
    assert result["raw"]["eval"]["same_verdict_fraction"] >= result["raw"]["eval"]["identical_outputs_fraction"]
    assert result["raw"]["settings"]["shared_prompt_dpo"] is True
    assert "met?" in stdout and "matmul peak" in stdout
    gemms = result["raw"]["mfu"]["model_gemms"]  # the same steps against the GEMMs at the model's own shapes
    assert gemms["tokens"] > 0 and gemms["flops_per_s"] > 0 and "own GEMM shapes" in stdout
    assert result["raw"]["mfu"]["of_model_gemm_flops"] == pytest.approx(
        result["raw"]["mfu"]["achieved_flops"] / gemms["flops_per_s"])
    mfu = result["raw"]["mfu"]  # --quick: 3 steps, the first one warm-up; each step's tokens and padded positions
    steps = mfu["per_step"]
    assert len(steps) == 3 and mfu["warmup_steps"] == 1 and mfu["timed_steps"] == 2
    assert steps[0]["seconds"] is None and all(s["seconds"] > 0 for s in steps[1:])
    assert all(0 < s["tokens"] <= s["positions"] for s in steps)
    assert mfu["timed_tokens"] == sum(s["tokens"] for s in steps[1:])
    assert mfu["seconds"] == pytest.approx(sum(s["seconds"] for s in steps[1:]))


def test_model_gemm_shapes_are_every_projection_forward_and_backward():
    import importlib
    from types import SimpleNamespace

    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        common = importlib.import_module("common")
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    cfg = SimpleNamespace(hidden_size=8, intermediate_size=24, vocab_size=40, num_attention_heads=4,
                          num_key_value_heads=2, num_hidden_layers=2)
    out = common.model_gemm_flops(cfg, 5, "fp32", repeats=1)
    # (K, N): q/o 8x8, k/v 8x4 (2 of 4 heads), gate/up 8x24, down 24x8, head 8x40; each as T x K x N, T x N x K, K x T x N
    expect = {f"{m}x{k}x{n}" for kk, nn in ((8, 8), (8, 4), (8, 24), (24, 8), (8, 40))
              for m, k, n in ((5, kk, nn), (5, nn, kk), (kk, 5, nn))}
    assert set(out["per_shape_flops_per_s"]) == expect and out["flops_per_s"] > 0 and out["tokens"] == 5


def test_pipeline_seconds_is_the_sum_of_a_summarys_stage_timings(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("benchmarks_run", REPO / "benchmarks" / "run.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"timings": {"generate": 4.0, "sft": 300.5, "dpo": 200.0, "total": 504.5}}))
    assert bench.pipeline_seconds_from(summary) == 504.5


def _bench_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("benchmarks_run", REPO / "benchmarks" / "run.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_the_pipelines_sft_utilisation_is_6n_per_trained_token_over_the_training_loop(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import utilisation
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "sft.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"loss": 0.5, "num_tokens": 1000.0, "step": 5}, {"loss": 0.1, "num_tokens": 2000.0, "step": 10},
        {"train_runtime": 10.0, "train_loss": 0.3, "step": 10}]) + "\n")
    mfu = {"parameters": 100, "precision": "bf16", "matmul_peak_flops": {"fp32": 1e5, "bf16": 2e5}}
    out = utilisation.pipeline_sft_utilisation(tmp_path / "summary.json", mfu)
    assert out["tokens"] == 2000 and out["seconds"] == 10.0
    assert out["flops_per_s"] == pytest.approx(6 * 100 * 2000 / 10.0) and out["of_peak"] == pytest.approx(0.6)
    assert utilisation.pipeline_sft_utilisation(tmp_path / "elsewhere" / "summary.json", mfu) is None  # no metrics kept


@pytest.mark.parametrize("flags,named", [(["--mfu-steps", "3", "--mfu-warmup", "3"], "--mfu-warmup"),
                                         (["--mfu-warmup", "0"], "--mfu-warmup"), (["--ref-repeats", "-1"], "--ref-repeats")])
def test_flags_that_leave_nothing_to_time_are_refused(flags, named, capsys):
    bench = _bench_module()
    with pytest.raises(SystemExit) as exc:
        bench.parse_args(["--model", "smollm2_135m", *flags])
    assert exc.value.code == 2 and named in capsys.readouterr().err


def test_the_reference_pass_runs_its_own_repeats_unless_only_profiles_run():
    bench = _bench_module()
    args = bench.parse_args(["--model", "smollm2_135m"])
    assert (args.repeats, args.ref_repeats) == (1, 3)
    assert bench.repeats_of(args, "ref") == 3 and bench.repeats_of(args, "sft") == 1
    assert bench.repeats_of(bench.parse_args(["--model", "smollm2_135m", "--repeats", "0"]), "ref") == 0
    assert bench.repeats_of(bench.parse_args(["--quick"]), "ref") == 1


def test_profile_of_the_utilisation_run_goes_into_a_new_directory(tmp_path):
    """--profile DIR with --only mfu: DIR need not exist (it used to fail looking for DIR/mfu.txt.json)."""
    profile = tmp_path / "profiles" / "new"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "benchmarks/run.py", "--quick", "--only", "mfu", "--profile", str(profile),
                           "--out", str(tmp_path / "out.json")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (profile / "mfu.txt").read_text()
    assert table.startswith("timed block:") and "share of the timed block: matmul" in table
