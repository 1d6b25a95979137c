"""Issue 8's benchmark: our stages against the plain baselines a user would write, on this machine.

    python benchmarks/run.py --out benchmarks/results/run.json --pipeline-summary runs/default/default/summary.json
    python benchmarks/run.py --run-pipeline --out benchmarks/results/run.json   # also times `python -m agent_align`
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
from common import BF16_FLAGS, REPO, Sides, compose, machine, median, merge_overrides  # noqa: E402

# ratio key -> (comparison, unit, direction, target): ours / baseline
TARGETS = {"sft_tokens_per_s": ("sft", "tokens", ">=", 1.5), "dpo_pairs_per_s": ("dpo", "pairs", ">=", 2.0),
           "dpo_peak_memory": ("dpo", "peak_rss_mb", "<=", 0.7), "eval_calls_per_s": ("eval", "calls", ">=", 5.0),
           "rollouts_per_s": ("rollouts", "episodes", ">=", 3.0)}
MFU_TARGET, PIPELINE_TARGET_S = 0.25, 300.0
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
    ap.add_argument("--model", default="tiny", help="model preset for the comparisons (default tiny, the pipeline's)")
    ap.add_argument("--mfu-model", default="small", help="model preset for the utilisation figure")
    ap.add_argument("--repeats", type=int, default=3, help="runs per side; order alternates")
    ap.add_argument("--steps", type=int, default=20, help="optimizer steps per SFT/DPO run")
    ap.add_argument("--mfu-steps", type=int, default=6, help="SFT steps on --mfu-model (the first is not timed)")
    ap.add_argument("--eval-prompts", type=int, default=128)
    ap.add_argument("--episodes", type=int, default=32, help="agent episodes per rollout run (test tasks)")
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
    if args.quick:
        args.repeats, args.steps, args.mfu_steps, args.eval_prompts, args.episodes = 1, 2, 3, 8, 4
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
                                    QUICK if args.quick else [])
        hw = self.compose().hardware
        self.sft_rows = args.steps * hw.sft_batch_size * hw.sft_grad_accum
        self.dpo_rows = args.steps * hw.dpo_batch_size * hw.dpo_grad_accum
        self.mfu_rows = args.mfu_steps * hw.sft_batch_size * hw.sft_grad_accum
        n_train = int(1.5 * max(self.sft_rows, self.dpo_rows, self.mfu_rows)) + 64  # some rows don't fit the cutoff
        data = [f"data.n_train={n_train}", f"data.n_eval={max(args.eval_prompts, 16)}"]
        self.sft = self.compose(data, [f"sft.max_steps={args.steps}"])
        self.dpo = self.compose(data, ["loss=dpo", f"dpo.max_steps={args.steps}", "data.negatives_source=synthetic"])
        self.eval = self.compose(data)
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
            "eval": (sides.eval_ours, sides.eval_baseline,
                     {**common, "cfg": self.eval, "rows": prep["eval_rows"], "model_dir": eval_model,
                      "max_new_tokens": self.eval.evaluate.max_new_tokens}),
            "rollouts": (sides.rollouts_ours, sides.rollouts_baseline, {**common, "cfg": self.rollouts(eval_model)}),
        }


def agreement(comparison: str, ours: dict, base: dict) -> dict:
    """How alike the two sides' outputs were (greedy decoding on both): a check that they did the same work."""
    if comparison == "eval":
        same = sum(a == b for a, b in zip(ours["outputs"], base["outputs"]))
        return {"identical_outputs_fraction": same / len(ours["outputs"])}
    if comparison == "rollouts":
        a, b = ours["steps_by_episode"], base["steps_by_episode"]
        return {"same_episode_length_fraction": sum(a[k] == b.get(k) for k in a) / len(a)}
    return {}


def summarise(unit: str, runs: dict) -> dict:
    out = {"unit": f"{unit}/s"}
    for side, rs in runs.items():
        for r in rs:
            r["rate"] = r[unit] / r["seconds"]
            r.pop("outputs", None)
            r.pop("steps_by_episode", None)
        out[side] = {"median_rate": median([r["rate"] for r in rs]),
                     "median_peak_rss_mb": median([r["peak_rss_mb"] for r in rs]),
                     "median_peak_increase_mb": median([r["peak_increase_mb"] for r in rs]), "runs": rs}
    out["ratio"] = out["ours"]["median_rate"] / out["baseline"]["median_rate"]
    return out


def measure(args, plan: Plan, pool: Sides, prep: dict, eval_model: str) -> dict:
    raw: dict = {}
    for comparison, (ours_fn, base_fn, spec) in plan.specs(prep, eval_model).items():
        unit = next(u for c, u, _, _ in TARGETS.values() if c == comparison)
        runs: dict = {"ours": [], "baseline": []}
        for r in range(args.repeats):
            order = ("ours", "baseline") if r % 2 == 0 else ("baseline", "ours")
            for side in order:
                run_dir = plan.work / "runs" / f"{comparison}-{side}-r{r}"
                fn = ours_fn if side == "ours" else base_fn
                say(f"{comparison}: repeat {r + 1}/{args.repeats}, {side}")
                res = pool.run(fn, {**spec, "run_dir": str(run_dir)})
                res["order"] = len(runs["ours"]) + len(runs["baseline"])
                runs[side].append(res)
                shutil.rmtree(run_dir, ignore_errors=True)
        if args.profile:
            for side, fn in (("ours", ours_fn), ("baseline", base_fn)):
                say(f"{comparison}: profiling {side} (not timed)")
                args.profile.mkdir(parents=True, exist_ok=True)
                pool.run(sides.profiled, {**spec, "side_fn": fn.__name__, "run_dir": str(plan.work / "runs" / "profile"),
                                          "profile_path": str(args.profile / f"{comparison}-{side}.txt")})
                shutil.rmtree(plan.work / "runs" / "profile", ignore_errors=True)
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
    models = [("cmp", plan.sft, {"sft": plan.sft_rows, "dpo": plan.dpo_rows, **({"mfu": plan.mfu_rows} if same_model else {})})]
    if not same_model:
        models.append(("mfu", plan.mfu, {"mfu": plan.mfu_rows}))
    say("preparing data and models")
    prep = pool.run(sides.prepare, {"cfg": plan.sft, "work": str(work), "models": models, "n_eval": args.eval_prompts})
    eval_model = args.eval_model or _pipeline_sft(pipeline) or prep["cmp"]["model_dir"]
    raw = measure(args, plan, pool, prep, eval_model)
    mfu_rows = prep["cmp" if same_model else "mfu"]
    say(f"utilisation: matmul peak, then {args.mfu_steps} SFT steps on model={args.mfu_model}")
    mfu_spec = {"cfg": plan.mfu, "rows": mfu_rows["mfu_rows"], "model_dir": mfu_rows["model_dir"],
                "run_dir": str(work / "runs" / "mfu"), "matmul_n": 512 if args.quick else 2048,
                "matmul_repeats": 3 if args.quick else 10}
    raw["mfu"] = pool.run(sides.mfu, mfu_spec)
    shutil.rmtree(mfu_spec["run_dir"], ignore_errors=True)
    raw["mfu"]["model"] = args.mfu_model
    if args.profile:
        say("utilisation: profiling (not timed)")
        pool.run(sides.profiled, {**mfu_spec, "side_fn": "mfu", "run_dir": str(work / "runs" / "mfu-profile"),
                                  "profile_path": str(args.profile / "mfu.txt")})
        shutil.rmtree(work / "runs" / "mfu-profile", ignore_errors=True)
    mach.update(training_precision=raw["mfu"]["precision"], torch_threads=raw["mfu"]["threads"],
                matmul_peak_flops=raw["mfu"]["matmul_peak_flops"], load_average_end=list(os.getloadavg()))
    ratios = {key: raw[c]["ratio"] if u != "peak_rss_mb" else
              raw[c]["ours"]["median_peak_rss_mb"] / raw[c]["baseline"]["median_peak_rss_mb"]
              for key, (c, u, _, _) in TARGETS.items()}
    raw["dpo"]["peak_increase_ratio"] = raw["dpo"]["ours"]["median_peak_increase_mb"] / \
        raw["dpo"]["baseline"]["median_peak_increase_mb"]
    raw["pipeline"] = pipeline
    raw["settings"] = {"quick": args.quick, "model": args.model, "mfu_model": args.mfu_model, "repeats": args.repeats,
                       "steps": args.steps, "mfu_steps": args.mfu_steps, "eval_prompts": args.eval_prompts,
                       "episodes": args.episodes, "eval_model": eval_model, "baseline_fp32": args.baseline_fp32,
                       "eval_model_trained": eval_model != prep["cmp"]["model_dir"], "overrides": plan.base + args.override,
                       "sft_batch_size": plan.sft.hardware.sft_batch_size,
                       "dpo_batch_size": plan.dpo.hardware.dpo_batch_size, "max_length": plan.sft.model.max_length}
    raw["command"] = " ".join([Path(sys.executable).name, *sys.argv])
    raw["targets"] = met(ratios, raw["mfu"]["mfu"], pipeline.get("stage_seconds_sum"))
    result = {"machine": mach, "ratios": ratios, "mfu": raw["mfu"]["mfu"],
              "pipeline_seconds": pipeline.get("stage_seconds_sum"), "raw": raw}
    print(table(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(args.out.suffix + ".tmp")
        tmp.write_text(json.dumps(result, indent=2, default=str, allow_nan=False) + "\n")  # measured numbers are finite
        os.replace(tmp, args.out)
    return result


def _pipeline_sft(pipeline: dict) -> str | None:
    if not pipeline:
        return None
    sft = Path(pipeline["summary"]).parent / "checkpoints" / "sft"
    return str(sft) if (sft / "config.json").exists() else None


def met(ratios: dict, mfu: float, pipeline_s: float | None) -> dict:
    out = {key: (ratios[key] >= target if op == ">=" else ratios[key] <= target)
           for key, (_, _, op, target) in TARGETS.items()}
    out["mfu"] = mfu >= MFU_TARGET
    if pipeline_s is not None:
        out["pipeline_seconds"] = pipeline_s <= PIPELINE_TARGET_S
    return out


def table(result: dict) -> str:
    raw, m = result["raw"], result["machine"]
    rows = [("comparison", "ours", "baseline", "ratio", "target", "met?")]
    for key, (c, unit, op, target) in TARGETS.items():
        if unit == "peak_rss_mb":
            o, b = raw[c]["ours"]["median_peak_rss_mb"], raw[c]["baseline"]["median_peak_rss_mb"]
            label, fmt = "DPO peak RSS (MB)", "{:,.0f}"
        else:
            o, b = raw[c]["ours"]["median_rate"], raw[c]["baseline"]["median_rate"]
            label, fmt = f"{c} {raw[c]['unit']}", "{:,.1f}"
        rows.append((label, fmt.format(o), fmt.format(b), f"{result['ratios'][key]:.2f}x", f"{op} {target}x",
                     "yes" if raw["targets"][key] else "NO"))
    mf = raw["mfu"]
    rows.append((f"MFU {mf['model']} ({mf['precision']})", f"{mf['achieved_flops'] / 1e9:,.1f} GFLOP/s",
                 f"{mf['matmul_peak_flops'][mf['precision']] / 1e9:,.1f} peak", f"{result['mfu']:.1%}",
                 f">= {MFU_TARGET:.0%}", "yes" if raw["targets"]["mfu"] else "NO"))
    p = result["pipeline_seconds"]
    rows.append(("default pipeline (s)", f"{p:,.0f}" if p is not None else "not run", "", "", f"<= {PIPELINE_TARGET_S:.0f}",
                 ("yes" if raw["targets"]["pipeline_seconds"] else "NO") if p is not None else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    peaks = ", ".join(f"{d} {v / 1e9:,.1f} GFLOP/s" for d, v in m["matmul_peak_flops"].items())
    absent = [f for f in BF16_FLAGS if f not in m["flags"]]
    lines += ["", f"machine: {m['cpu']} ({m['cpu_family_model']}), {m['cores_visible']}/{m['cores_total']} cores; "
                  f"flags {' '.join(m['flags'])}" + (f" (absent: {' '.join(absent)})" if absent else ""),
              f"  torch {m['torch']}, transformers {m['transformers']}, trl {m['trl']}; {m['torch_threads']} threads, "
              f"OMP_WAIT_POLICY={m['omp_wait_policy'] or 'unset'}; training dtype {m['training_precision']}",
              f"  matmul peak: {peaks}; load average {m['load_average_start'][0]:.2f} -> {m['load_average_end'][0]:.2f}"]
    checks = [f"{c}: {k} {raw[c][k]:.2f}" for c in ("sft", "dpo", "eval", "rollouts") for k in raw[c]
              if k.endswith("_fraction")]
    lines.append("  checks (1.00 = both sides saw/produced the same): " + "; ".join(checks))
    if raw["pipeline"]:
        lines.append(f"  pipeline: the stage timings of {raw['pipeline']['summary']}")
    if not raw["settings"]["eval_model_trained"]:
        lines.append("  note: eval and rollouts used the untrained model (pass --eval-model or --pipeline-summary): "
                     "its outputs rarely stop early, which flatters batching")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
