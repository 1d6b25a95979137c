"""Throughput of the data side: verified preference pairs generated per second and model outputs
scored per second (a mix of valid and invalid outputs, every category represented).

    python benchmarks/data_bench.py --out benchmarks/results/data_bench.json
    taskset -c 0 python benchmarks/data_bench.py     # pin to one core, as the targets are stated

Targets (one core): >= 5,000 verified pairs/s, >= 50,000 scored outputs/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def bench_generate(n_prompts: int, repeats: int) -> dict:
    from conftest import compose

    from agent_align.data.generator import Generator

    cfg = compose(["data.procedural_tools=0"])
    gen = Generator(cfg.data, cfg.seed)
    rates = []
    for r in range(repeats):
        gen.stats.clear()
        start = time.perf_counter()
        n = sum(1 for _ in gen.rows(f"bench{r}", n_prompts))
        rates.append(n / (time.perf_counter() - start))
    return {"pairs": n, "pairs_per_s": statistics.median(rates), "runs": rates}


def bench_score(n_rows: int, repeats: int) -> dict:
    from conftest import compose

    from agent_align.data.generator import Generator
    from agent_align.validation.validator import SchemaChecker, validate_output

    cfg = compose(["data.procedural_tools=0"])
    gen = Generator(cfg.data, cfg.seed)
    rows = list(gen.rows("score", n_rows // 2))
    items = [(r["chosen"], r["schema"]) for r in rows] + [(r["rejected"], r["schema"]) for r in rows]
    checker = SchemaChecker()
    for out, schema in items[:200]:  # compile each distinct schema once, outside the timing
        validate_output(out, schema, "json", checker)
    rates, passed = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        passed = sum(validate_output(out, schema, "json", checker).passed for out, schema in items)
        rates.append(len(items) / (time.perf_counter() - start))
    return {"outputs": len(items), "valid_fraction": passed / len(items), "outputs_per_s": statistics.median(rates),
            "runs": rates}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    gen = bench_generate(args.prompts, args.repeats)
    score = bench_score(args.prompts * 2, args.repeats)
    machine = {"python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
               "cores_visible": len(os.sched_getaffinity(0)), "cores_total": os.cpu_count()}
    result = {"machine": machine, "generate": gen, "score": score}
    print(f"{'measure':<32}{'median':>14}{'target':>12}")
    print(f"{'verified pairs / s':<32}{gen['pairs_per_s']:>14,.0f}{'5,000':>12}")
    print(f"{'scored outputs / s':<32}{score['outputs_per_s']:>14,.0f}{'50,000':>12}")
    print(f"(cores visible: {machine['cores_visible']}; scored mix {100 * score['valid_fraction']:.0f}% valid)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
