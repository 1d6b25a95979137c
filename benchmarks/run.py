"""Issues 8 and 15's benchmark: our stages against the plain baselines a user would write, on this machine.

    python benchmarks/run.py --model smollm2_135m --out benchmarks/results/smollm2_135m.json   # the default model
    python benchmarks/run.py --model tiny --out benchmarks/results/tiny.json
    python benchmarks/run.py --model smollm2_135m --only sft,dpo --repeats 0 --profile benchmarks/results/profiles
    python benchmarks/run.py --quick --out /tmp/bench.json                        # seconds: checks the harness works

Each comparison runs both sides in this run, on the same model, rows, batch size, sequence lengths and
steps, alternating the order over repeats (ours, baseline, baseline, ours, ...); every side runs in a
fresh process. It reports medians and ours/baseline ratios, and training FLOP/s on model=small as a
fraction of the matmul peak measured here in the training dtype. What is counted: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import sides  # noqa: E402
import utilisation  # noqa: E402
from common import REPO, Sides, compose, machine, median, merge_overrides  # noqa: E402
from report import COMPARISONS, TARGETS, met, table  # noqa: E402

# Per model: the batch sizes the issue measured (SmolLM2 at 8 rows a step) and workloads that keep a run of
# every comparison at about 15 minutes on 2 cores; any flag or --override given on the command line wins.
MODEL_DEFAULTS = {
    "smollm2_135m": {"overrides": ["hardware.sft_batch_size=8", "hardware.dpo_batch_size=8"],
                     "args": {"repeats": 1, "steps": 3, "mfu_steps": 8, "mfu_warmup": 3, "eval_prompts": 24,
                              "episodes": 24, "ref_pairs": 32, "ref_repeats": 3, "sample_prompts": 12}},
    "tiny": {"overrides": [], "args": {"repeats": 3, "steps": 20, "mfu_steps": 6, "mfu_warmup": 1, "eval_prompts": 128,
                                       "episodes": 32, "ref_pairs": 256, "ref_repeats": 3, "sample_prompts": 64}},
}
START = time.perf_counter()
# --quick: the test suite's micro model (tests/conftest.py MICRO) and seconds-long workloads
QUICK = ["model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.intermediate_size=64",
         "model.vocab_size=600", "model.tokenizer_corpus_rows=150", "model.max_length=256", "model.max_prompt_length=200",
         "model.copy_warmup_steps=0",
         "data.procedural_tools=20", "hardware.sft_batch_size=4", "hardware.dpo_batch_size=4",
         "hardware.eval_batch_size=16", "evaluate.max_new_tokens=12"]
QUICK_ROLLOUTS = ["model.max_length=768", "model.max_prompt_length=704", "agent.max_new_tokens=12", "env.horizon=2"]


def say(msg: str) -> None:
    print(f"[{time.perf_counter() - START:7.1f} s] {msg}", flush=True)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="write the JSON results here")
    ap.add_argument("--quick", action="store_true", help="micro model, 1 repeat, a few steps: checks the harness works")
    ap.add_argument("--model", default="tiny", help="model preset for the comparisons (tiny | smollm2_135m | ...)")
    ap.add_argument("--mfu-model", help="model preset for the utilisation figure (default: --model; small for tiny)")
    ap.add_argument("--only", help="comma-separated comparisons to run (default all: " + ",".join(COMPARISONS) + ")")
    ap.add_argument("--repeats", type=int, help="runs per side; order alternates (0: only --profile runs)")
    ap.add_argument("--steps", type=int, help="optimizer steps per SFT/DPO run")
    ap.add_argument("--mfu-steps", type=int, help="SFT steps on --mfu-model (the first --mfu-warmup are not timed)")
    ap.add_argument("--mfu-warmup", type=int, help="SFT steps run before the utilisation's clock starts (>= 1)")
    ap.add_argument("--eval-prompts", type=int)
    ap.add_argument("--episodes", type=int, help="agent episodes per rollout run (test tasks)")
    ap.add_argument("--ref-pairs", type=int, help="pairs in the reference log-prob comparison")
    ap.add_argument("--ref-repeats", type=int, help="runs per side of the reference comparison (plain TRL's pass swings "
                    "0.42-0.56 pairs/s between runs, so one run a side decides little; 0 with --repeats 0)")
    ap.add_argument("--sample-prompts", type=int, help="prompts in the on-policy sampling comparison "
                                                       "(dpo.samples_per_prompt samples each)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads on both sides (0: hardware.torch_threads' default)")
    ap.add_argument("--eval-model", help="checkpoint for evaluation and rollouts (default: the pipeline run's "
                                         "checkpoints/sft if known, else the untrained model)")
    ap.add_argument("--pipeline-summary", type=Path, help="summary.json of a default pipeline run: its stage timings")
    ap.add_argument("--run-pipeline", action="store_true", help="run `python -m agent_align` first and time it")
    ap.add_argument("--baseline-fp32", action="store_true", help="plain trainers with bf16=False instead of TRL's "
                                                                  "bf16=True default (shows the dtype's share)")
    ap.add_argument("--override", action="append", default=[], help="extra key=value for every config (both sides)")
    ap.add_argument("--profile", type=Path, help="after the timed runs, profile one more run of every side and "
                                                 "write the tables (torch ops, cProfile) to this directory")
    ap.add_argument("--work-dir", type=Path, help="where data and runs go (default: a temp dir, removed at the end)")
    args = ap.parse_args(argv)
    defaults = MODEL_DEFAULTS.get(args.model, MODEL_DEFAULTS["smollm2_135m"])
    for key, value in defaults["args"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.model_overrides = list(defaults["overrides"])
    for flag in ("repeats", "ref_repeats"):
        if getattr(args, flag) < 0:
            ap.error(f"--{flag.replace('_', '-')} {getattr(args, flag)}: runs per side cannot be negative")
    if not 1 <= args.mfu_warmup < args.mfu_steps:
        ap.error(f"--mfu-warmup {args.mfu_warmup}: needs 1 <= warm-up < --mfu-steps ({args.mfu_steps})")
    args.mfu_model = args.mfu_model or ("small" if args.model == "tiny" else args.model)
    args.only = [c.strip() for c in args.only.split(",")] if args.only else list(COMPARISONS)
    if set(args.only) - set(COMPARISONS):
        ap.error(f"--only: unknown {sorted(set(args.only) - set(COMPARISONS))}; valid: {','.join(COMPARISONS)}")
    if args.quick:
        args.repeats, args.steps, args.mfu_steps, args.eval_prompts, args.episodes = 1, 2, 3, 8, 4
        args.mfu_warmup = 1
        args.ref_pairs, args.sample_prompts, args.ref_repeats = 8, 4, 1
        args.mfu_model = args.model
        if args.run_pipeline:
            ap.error("--quick never runs the pipeline; pass --pipeline-summary instead")
    return args


def pipeline_seconds_from(summary_path: Path) -> float:
    """Sum of a pipeline summary.json's stage ``timings`` (its ``total`` entry is that same sum)."""
    timings = json.loads(Path(summary_path).read_text()).get("timings")
    if not timings:
        raise SystemExit(f"error: {summary_path} has no stage 'timings'; pass the summary.json of a finished "
                         "`python -m agent_align` run")
    return float(sum(v for k, v in timings.items() if k != "total"))


def run_pipeline(work: Path) -> dict:
    run_dir = work / "pipeline"
    cmd = [sys.executable, "-m", "agent_align", f"run_dir={run_dir}"]
    say(f"running the default pipeline: {' '.join(cmd)} (log: {work / 'pipeline.log'})")
    start = time.perf_counter()
    with open(work / "pipeline.log", "w") as log:
        subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=True)
    return {"summary": str(run_dir / "summary.json"), "wall_seconds": time.perf_counter() - start}


class Plan:
    """The configs and workload sizes of one benchmark run."""

    def __init__(self, args, work: Path):
        self.args, self.work = args, work
        self.base = merge_overrides([f"model={args.model}", "resume=never", f"hardware.torch_threads={args.threads}"],
                                    args.model_overrides, QUICK if args.quick else [])
        hw = self.compose().hardware
        self.sft_rows = args.steps * hw.sft_batch_size * hw.sft_grad_accum
        self.dpo_rows = args.steps * hw.dpo_batch_size * hw.dpo_grad_accum
        self.mfu_rows = args.mfu_steps * hw.sft_batch_size * hw.sft_grad_accum
        n_train = int(1.5 * max(self.sft_rows, self.dpo_rows, self.mfu_rows, args.ref_pairs, args.sample_prompts)) + 64
        n_train = max(n_train, 2 * args.sample_prompts + 64)  # some rows don't fit the cutoff; SFT rows are distinct prompts
        data = [f"data.n_train={n_train}", f"data.n_eval={max(args.eval_prompts, 16)}"]
        self.sft = self.compose(data, [f"sft.max_steps={args.steps}"])
        # every completion token, as plain TRL trains (the default run's decision mask would score fewer)
        self.dpo = self.compose(data, ["loss=dpo", f"dpo.max_steps={args.steps}", "data.negatives_source=synthetic",
                                       "dpo.decision_tokens=0"])
        self.eval = self.compose(data)
        self.ref = self.compose(data, ["loss=dpo", "data.negatives_source=synthetic", "dpo.decision_tokens=0"])
        self.sampling = self.compose(data, [f"dpo.sample_prompts={args.sample_prompts}", "data.negatives_source=on_policy"])
        self.mfu = self.compose([f"model={args.mfu_model}"], data, [f"sft.max_steps={args.mfu_steps}"])
        self.threads = args.threads or os.cpu_count() or 1

    def compose(self, *groups: list[str]):
        """The base overrides, then ``groups``, then the user's --override (which wins)."""
        return compose(merge_overrides(self.base, *groups, self.args.override))

    def rollouts(self, agent_model: str):
        return self.compose(["+experiment=agentic_sft_dpo", "agent.split=test", f"agent.limit={self.args.episodes}",
                             f"agent.model_path={agent_model}", "agent.temperature=0", "agent.num_samples=1"],
                            QUICK_ROLLOUTS if self.args.quick else [])

    def specs(self, prep: dict, eval_model: str) -> dict:
        """comparison -> (ours function, baseline function, spec)."""
        common = {"system": prep["system"], "threads": self.threads, "baseline_fp32": self.args.baseline_fp32}
        cmp = prep["cmp"]

        def train_spec(cfg, rows, stage_cfg, batch, accum):
            return {**common, "cfg": cfg, "rows": rows, "model_dir": cmp["model_dir"], "batch_size": batch,
                    "grad_accum": accum, "steps": self.args.steps, "lr": stage_cfg.lr,
                    "max_length": cfg.model.max_length, "max_prompt_length": cfg.model.max_prompt_length}

        hw = self.sft.hardware
        return {
            "sft": (sides.sft_ours, sides.sft_baseline,
                    train_spec(self.sft, cmp["sft_rows"], self.sft.sft, hw.sft_batch_size, hw.sft_grad_accum)),
            "dpo": (sides.dpo_ours, sides.dpo_baseline,
                    train_spec(self.dpo, cmp["dpo_rows"], self.dpo.dpo, hw.dpo_batch_size, hw.dpo_grad_accum)),
            "ref": (sides.ref_ours, sides.ref_baseline,
                    {**train_spec(self.ref, cmp["ref_rows"], self.ref.dpo, hw.dpo_batch_size, 1),
                     "ref_batch_size": self.ref.hardware.eval_batch_size}),
            "sampling": (sides.sampling_ours, sides.sampling_baseline,
                         {**common, "cfg": self.sampling, "rows": cmp["sampling_rows"], "model_dir": eval_model}),
            "eval": (sides.eval_ours, sides.eval_baseline,
                     {**common, "cfg": self.eval, "rows": prep["eval_rows"], "model_dir": eval_model,
                      "max_new_tokens": self.eval.evaluate.max_new_tokens}),
            "rollouts": (sides.rollouts_ours, sides.rollouts_baseline, {**common, "cfg": self.rollouts(eval_model)}),
        }


def agreement(comparison: str, ours: dict, base: dict) -> dict:
    """How alike the two sides' outputs were (greedy decoding on both): a check that they did the same work."""
    if comparison == "eval":
        same = sum(a == b for a, b in zip(ours["outputs"], base["outputs"]))
        verdicts = sum(a == b for a, b in zip(ours["verdicts"], base["verdicts"]))
        return {"identical_outputs_fraction": same / len(ours["outputs"]),
                "same_verdict_fraction": verdicts / len(ours["verdicts"])}
    if comparison == "rollouts":
        a, b = ours["steps_by_episode"], base["steps_by_episode"]
        return {"same_episode_length_fraction": sum(a[k] == b.get(k) for k in a) / len(a)}
    if comparison == "ref":  # bf16 on both sides (where the CPU has it): equal to about a bf16 rounding per token
        diffs = [abs(a - b) for side in ("ref_chosen", "ref_rejected") for a, b in zip(ours[side], base[side])]
        scale = [abs(b) for side in ("ref_chosen", "ref_rejected") for b in base[side]]
        return {"ref_logps_max_abs_diff": max(diffs), "ref_logps_mean_abs": sum(scale) / len(scale),
                "ref_logps_within_2pct_fraction": sum(d <= 0.02 * max(s, 1.0) for d, s in zip(diffs, scale)) / len(diffs)}
    if comparison == "sampling":  # sampled, so not equal: the same validator pass rate within noise
        return {"pass_rate_ours": ours["pass_rate"], "pass_rate_baseline": base["pass_rate"]}
    return {}


def summarise(unit: str, runs: dict) -> dict:
    out = {"unit": f"{unit}/s"}
    for side, rs in runs.items():
        for r in rs:
            r["rate"] = r[unit] / r["seconds"]
            for big in ("outputs", "verdicts", "steps_by_episode", "ref_chosen", "ref_rejected"):
                r.pop(big, None)
        out[side] = {"median_rate": median([r["rate"] for r in rs]),
                     "median_peak_rss_mb": median([r["peak_rss_mb"] for r in rs]),
                     "median_peak_increase_mb": median([r["peak_increase_mb"] for r in rs]), "runs": rs}
    out["ratio"] = out["ours"]["median_rate"] / out["baseline"]["median_rate"]
    return out


def repeats_of(args, comparison: str) -> int:
    """Runs per side: ``--repeats``, or ``--ref-repeats`` for the reference pass (none when --repeats is 0)."""
    return args.ref_repeats if comparison == "ref" and args.repeats and args.ref_repeats else args.repeats


def measure(args, plan: Plan, pool: Sides, prep: dict, eval_model: str) -> dict:
    raw: dict = {}
    for comparison, (ours_fn, base_fn, spec) in plan.specs(prep, eval_model).items():
        if comparison not in args.only:
            continue
        unit = next(u for c, u, _, _ in TARGETS.values() if c == comparison)
        runs: dict = {"ours": [], "baseline": []}
        repeats = repeats_of(args, comparison)
        for r in range(repeats):
            order = ("ours", "baseline") if r % 2 == 0 else ("baseline", "ours")
            for side in order:
                run_dir = plan.work / "runs" / f"{comparison}-{side}-r{r}"
                fn = ours_fn if side == "ours" else base_fn
                say(f"{comparison}: repeat {r + 1}/{repeats}, {side}")
                res = pool.run(fn, {**spec, "run_dir": str(run_dir)})
                res["order"] = len(runs["ours"]) + len(runs["baseline"])
                runs[side].append(res)
                shutil.rmtree(run_dir, ignore_errors=True)
        if args.profile:
            for side, fn in (("ours", ours_fn), ("baseline", base_fn)):
                say(f"{comparison}: profiling {side} (not timed)")
                args.profile.mkdir(parents=True, exist_ok=True)
                path = args.profile / f"{comparison}-{side}.txt"
                pool.run(sides.profiled, {**spec, "side_fn": fn.__name__, "run_dir": str(plan.work / "runs" / "profile"),
                                          "profile_path": str(path)})
                raw.setdefault("profile", {})[f"{comparison}-{side}"] = json.loads(Path(f"{path}.json").read_text())
                shutil.rmtree(plan.work / "runs" / "profile", ignore_errors=True)
        if not repeats:
            continue
        checks = agreement(comparison, runs["ours"][0], runs["baseline"][0])
        raw[comparison] = {**summarise(unit, runs), **checks}
        if comparison in ("sft", "dpo"):
            raw[comparison]["same_tokens_fraction"] = min(r["same_tokens_fraction"] for r in runs["baseline"])
    return raw


def main(argv=None) -> dict:
    args = parse_args(argv)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="agent_align_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _main(args, work)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


def _main(args, work: Path) -> dict:
    mach = machine()
    pipeline: dict = {}
    if args.run_pipeline:
        pipeline = run_pipeline(work)
    elif args.pipeline_summary:
        pipeline = {"summary": str(args.pipeline_summary)}
    if pipeline:
        pipeline["stage_seconds_sum"] = pipeline_seconds_from(Path(pipeline["summary"]))
    plan = Plan(args, work)
    pool = Sides()
    same_model = args.mfu_model == args.model
    need = {"sft": plan.sft_rows, "dpo": plan.dpo_rows, "ref": args.ref_pairs, "sampling": args.sample_prompts}
    models = [("cmp", plan.sft, {**need, **({"mfu": plan.mfu_rows} if same_model else {})})]
    if not same_model and "mfu" in args.only:
        models.append(("mfu", plan.mfu, {"mfu": plan.mfu_rows}))
    say("preparing data and models")
    prep = pool.run(sides.prepare, {"cfg": plan.sft, "work": str(work), "models": models, "n_eval": args.eval_prompts})
    eval_model = args.eval_model or _pipeline_sft(pipeline) or prep["cmp"]["model_dir"]
    raw = measure(args, plan, pool, prep, eval_model)
    if "mfu" in args.only:
        raw["mfu"] = run_mfu(args, plan, pool, prep, work, same_model)
        if pipeline and args.mfu_model == args.model:
            raw["mfu"]["pipeline_sft"] = utilisation.pipeline_sft_utilisation(Path(pipeline["summary"]), raw["mfu"])
        mach.update(training_precision=raw["mfu"]["precision"], torch_threads=raw["mfu"]["threads"],
                    matmul_peak_flops=raw["mfu"]["matmul_peak_flops"])
    mach["load_average_end"] = list(os.getloadavg())
    ratios = {key: raw[c]["ratio"] if u != "peak_rss_mb" else
              raw[c]["ours"]["median_peak_rss_mb"] / raw[c]["baseline"]["median_peak_rss_mb"]
              for key, (c, u, _, _) in TARGETS.items() if c in raw}
    if "dpo" in raw:
        raw["dpo"]["peak_increase_ratio"] = raw["dpo"]["ours"]["median_peak_increase_mb"] / \
            raw["dpo"]["baseline"]["median_peak_increase_mb"]
    raw["pipeline"] = pipeline
    raw["settings"] = {"quick": args.quick, "model": args.model, "mfu_model": args.mfu_model, "only": args.only,
                       "repeats": args.repeats, "steps": args.steps, "mfu_steps": args.mfu_steps,
                       "mfu_warmup": args.mfu_warmup,
                       "eval_prompts": args.eval_prompts, "episodes": args.episodes, "ref_pairs": args.ref_pairs,
                       "ref_repeats": repeats_of(args, "ref"),
                       "sample_prompts": args.sample_prompts, "eval_model": eval_model,
                       "baseline_fp32": args.baseline_fp32, "eval_model_trained": eval_model != prep["cmp"]["model_dir"],
                       "overrides": plan.base + args.override, "sft_batch_size": plan.sft.hardware.sft_batch_size,
                       "dpo_batch_size": plan.dpo.hardware.dpo_batch_size, "max_length": plan.sft.model.max_length,
                       "shared_prompt_dpo": plan.dpo.hardware.shared_prompt_dpo,
                       "gradient_checkpointing": plan.dpo.hardware.gradient_checkpointing}
    raw["command"] = " ".join([Path(sys.executable).name, *sys.argv])
    mfu = raw["mfu"]["mfu"] if "mfu" in raw else None
    raw["targets"] = met(ratios, mfu, pipeline.get("stage_seconds_sum"))
    result = {"machine": mach, "model": args.model, "ratios": ratios, "mfu": mfu,
              "pipeline_seconds": pipeline.get("stage_seconds_sum"), "raw": raw}
    if ratios or mfu is not None:
        print(table(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(args.out.suffix + ".tmp")
        tmp.write_text(json.dumps(result, indent=2, default=str, allow_nan=False) + "\n")  # measured numbers are finite
        os.replace(tmp, args.out)
    return result


def run_mfu(args, plan: Plan, pool: Sides, prep: dict, work: Path, same_model: bool) -> dict:
    """Training FLOP/s of our SFT path over the matmul peak measured in the same process, in the training dtype."""
    mfu_rows = prep["cmp" if same_model else "mfu"]
    say(f"utilisation: matmul peak, then {args.mfu_steps} SFT steps on model={args.mfu_model}")
    mfu_spec = {"cfg": plan.mfu, "rows": mfu_rows["mfu_rows"], "model_dir": mfu_rows["model_dir"],
                "run_dir": str(work / "runs" / "mfu"), "matmul_n": 512 if args.quick else 2048,
                "matmul_repeats": 3 if args.quick else 10, "warmup": args.mfu_warmup}
    out = pool.run(utilisation.mfu, mfu_spec)
    shutil.rmtree(mfu_spec["run_dir"], ignore_errors=True)
    out["model"] = args.mfu_model
    if args.profile:
        say("utilisation: profiling (not timed)")
        args.profile.mkdir(parents=True, exist_ok=True)
        pool.run(sides.profiled, {**mfu_spec, "side_fn": "utilisation.mfu", "run_dir": str(work / "runs" / "mfu-profile"),
                                  "profile_path": str(args.profile / "mfu.txt")})
        shutil.rmtree(work / "runs" / "mfu-profile", ignore_errors=True)
    return out


def _pipeline_sft(pipeline: dict) -> str | None:
    if not pipeline:
        return None
    sft = Path(pipeline["summary"]).parent / "checkpoints" / "sft"
    return str(sft) if (sft / "config.json").exists() else None


if __name__ == "__main__":
    main()
