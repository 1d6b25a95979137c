"""Targets and the printed table of benchmarks/run.py's result."""

from __future__ import annotations

from common import BF16_FLAGS

# ratio key -> (comparison, unit, direction, target): ours / baseline
TARGETS = {"sft_tokens_per_s": ("sft", "tokens", ">=", 1.5), "dpo_pairs_per_s": ("dpo", "pairs", ">=", 2.0),
           "dpo_peak_memory": ("dpo", "peak_rss_mb", "<=", 0.7), "ref_logps_pairs_per_s": ("ref", "pairs", ">=", 3.0),
           "sampling_samples_per_s": ("sampling", "samples", ">=", 3.0), "eval_calls_per_s": ("eval", "calls", ">=", 5.0),
           "rollouts_per_s": ("rollouts", "episodes", ">=", 3.0)}
COMPARISONS = ("sft", "dpo", "ref", "sampling", "eval", "rollouts", "mfu")
MFU_TARGET, PIPELINE_TARGET_S = 0.35, 600.0  # of the measured matmul peak in the training dtype; the default run


def met(ratios: dict, mfu: float | None, pipeline_s: float | None) -> dict:
    out = {key: (ratios[key] >= target if op == ">=" else ratios[key] <= target)
           for key, (_, _, op, target) in TARGETS.items() if key in ratios}
    if mfu is not None:
        out["mfu"] = mfu >= MFU_TARGET
    if pipeline_s is not None:
        out["pipeline_seconds"] = pipeline_s <= PIPELINE_TARGET_S
    return out


def table(result: dict) -> str:
    raw, m = result["raw"], result["machine"]
    rows = [("comparison", "ours", "baseline", "ratio", "target", "met?")]
    for key, (c, unit, op, target) in TARGETS.items():
        if key not in result["ratios"]:
            continue
        if unit == "peak_rss_mb":
            o, b = raw[c]["ours"]["median_peak_rss_mb"], raw[c]["baseline"]["median_peak_rss_mb"]
            label, fmt = "DPO peak RSS (MB)", "{:,.0f}"
        else:
            o, b = raw[c]["ours"]["median_rate"], raw[c]["baseline"]["median_rate"]
            label, fmt = f"{c} {raw[c]['unit']}", "{:,.1f}" if o >= 10 else "{:,.2f}"
        rows.append((label, fmt.format(o), fmt.format(b), f"{result['ratios'][key]:.2f}x", f"{op} {target}x",
                     "yes" if raw["targets"][key] else "NO"))
    if "mfu" in raw:
        mf = raw["mfu"]
        rows.append((f"MFU {mf['model']} ({mf['precision']})", f"{mf['achieved_flops'] / 1e9:,.1f} GFLOP/s",
                     f"{mf['matmul_peak_flops'][mf['precision']] / 1e9:,.1f} peak", f"{result['mfu']:.1%}",
                     f">= {MFU_TARGET:.0%}", "yes" if raw["targets"]["mfu"] else "NO"))
        if mf.get("pipeline_sft"):  # the default run's own SFT stage, attention not counted
            ps = mf["pipeline_sft"]
            rows.append((f"  the pipeline's SFT ({ps['tokens']:,.0f} tokens)",
                         f"{ps['flops_per_s'] / 1e9:,.1f} GFLOP/s", "", f"{ps['of_peak']:.1%}", "", ""))
        if "model_gemms" in mf:  # what the GEMMs alone reach at this model's shapes (benchmarks/README.md)
            rows.append(("  of the model's own GEMM shapes", "", f"{mf['model_gemms']['flops_per_s'] / 1e9:,.1f} GEMMs",
                         f"{mf['of_model_gemm_flops']:.1%}", "", ""))
    p = result["pipeline_seconds"]
    rows.append(("default pipeline (s)", f"{p:,.0f}" if p is not None else "not run", "", "", f"<= {PIPELINE_TARGET_S:.0f}",
                 ("yes" if raw["targets"]["pipeline_seconds"] else "NO") if p is not None else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    absent = [f for f in BF16_FLAGS if f not in m["flags"]]
    lines += ["", f"model {result['model']}; machine: {m['cpu']} ({m['cpu_family_model']}), "
                  f"{m['cores_visible']}/{m['cores_total']} cores; flags {' '.join(m['flags'])}"
                  + (f" (absent: {' '.join(absent)})" if absent else ""),
              f"  torch {m['torch']}, transformers {m['transformers']}, trl {m['trl']}; "
              f"{m.get('torch_threads', '?')} threads, OMP_WAIT_POLICY={m['omp_wait_policy'] or 'unset'}, "
              f"GOMP_SPINCOUNT={m.get('gomp_spincount') or 'unset'}; "
              f"training dtype {m.get('training_precision', '?')}, bf16/fp32 matmul speed {m['bf16_speedup']:.2f}x"]
    if "matmul_peak_flops" in m:
        peaks = ", ".join(f"{d} {v / 1e9:,.1f} GFLOP/s" for d, v in m["matmul_peak_flops"].items())
        lines.append(f"  matmul peak: {peaks}")
    lines.append(f"  load average {m['load_average_start'][0]:.2f} -> {m['load_average_end'][0]:.2f}")
    checks = [f"{c}: {k} {raw[c][k]:.3g}" for c in COMPARISONS if c in raw and c != "mfu" for k in raw[c]
              if k.endswith("_fraction") or k.startswith(("pass_rate", "ref_logps_max"))]
    lines.append("  checks (fractions: 1.00 = both sides saw/produced the same): " + "; ".join(checks))
    if raw["pipeline"]:
        lines.append(f"  pipeline: the stage timings of {raw['pipeline']['summary']}")
    if not raw["settings"]["eval_model_trained"]:
        lines.append("  note: eval, sampling and rollouts used the untrained model (pass --eval-model or "
                     "--pipeline-summary)")
    return "\n".join(lines)
