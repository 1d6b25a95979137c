"""Table and plot of the data-mixture study: one row per job of a sweep (or per run directory).

    python experiments/mixture_table.py multirun/mixture_study/<date_time>
    python experiments/mixture_table.py runs/a runs/b            # any run directories

Per job: the normalised positive/negative/synthetic shares of its SFT data, the post-SFT (baseline)
and post-DPO (aligned) SSPR by split, and the post-SFT average step score of its evaluation outputs
(verifier; finer-grained than SSPR: a right thought before a wrong call still counts). Writes
mixture_table.md, mixture_table.json and mixture.png next to the jobs (or in the current directory).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

from omegaconf import OmegaConf

from agent_align.jsonl import atomic_open, read_jsonl, write_json
from agent_align.steps import plots
from agent_align.steps.scorers import VerifierScorer
from agent_align.steps.scoring import all_correct, mean_score, score_rows


def job_dirs(args: list[str]) -> list[Path]:
    out = []
    for a in args:
        p = Path(a)
        out += [d for d in sorted(p.iterdir()) if (d / "summary.json").exists()] if not (p / "summary.json").exists() else [p]
    return out


def step_score(job: Path, fmt: str, label: str) -> tuple[float, float]:
    rows = {r["id"]: r for r in read_jsonl(job / "data" / "eval.jsonl")}
    preds = read_jsonl(job / f"predictions_{label}.jsonl")
    scorer = VerifierScorer(SimpleNamespace(unverifiable_score=1.0))
    scored = score_rows([{**rows[p["id"]], "chosen": p["output"]} for p in preds], scorer, "auto",
                        sides=("chosen",), default=fmt)
    scores = [r["chosen_scores"] for r in scored]
    return sum(map(mean_score, scores)) / len(scores), sum(all_correct(s, 0.5) for s in scores) / len(scores)


def row_of(job: Path) -> dict:
    cfg = OmegaConf.load(job / ".hydra" / "config.yaml") if (job / ".hydra" / "config.yaml").exists() else None
    m = cfg.mixture if cfg is not None else SimpleNamespace(positive=None, negative=None, synthetic=None)
    shares = {k: float(getattr(m, k) or 0.0) for k in ("positive", "negative", "synthetic")}
    total = sum(shares.values()) or 1.0
    shares = {k: round(v / total, 3) for k, v in shares.items()}
    s = json.loads((job / "summary.json").read_text())
    fmt = cfg.data.format if cfg is not None else "json"
    b, a = s["models"]["baseline"], s["models"]["aligned"]
    score, correct = step_score(job, fmt, "baseline")
    return {"job": job.name, **shares,
            "sspr_sft": b["sspr"], "sspr_sft_seen": b["by_split"].get("seen", {}).get("sspr"),
            "sspr_sft_unseen": b["by_split"].get("unseen", {}).get("sspr"), "sspr_aligned": a["sspr"],
            "step_score_sft": round(score, 4), "all_steps_correct_sft": round(correct, 4),
            "sft_seconds": s["timings"].get("sft")}


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    jobs = job_dirs(argv)
    if not jobs:
        print(f"error: no job directory with summary.json under {argv}", file=sys.stderr)
        return 2
    rows = [row_of(j) for j in jobs]
    out = Path(argv[0]) if len(argv) == 1 and not (Path(argv[0]) / "summary.json").exists() else Path(".")
    head = ["positive", "negative", "synthetic", "sspr_sft", "sspr_sft_seen", "sspr_sft_unseen", "sspr_aligned",
            "step_score_sft", "all_steps_correct_sft"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    lines += ["| " + " | ".join("-" if r[h] is None else f"{r[h]:.3f}" for h in head) + " |" for r in rows]
    with atomic_open(out / "mixture_table.md") as fh:
        fh.write("\n".join(lines) + "\n")
    write_json(out / "mixture_table.json", rows)
    labels = [f"{r['positive']:.2f}/{r['negative']:.2f}/{r['synthetic']:.2f}" for r in rows]
    plots.lines(list(range(len(rows))), {"SSPR after SFT": [r["sspr_sft"] for r in rows],
                                         "avg step score after SFT": [r["step_score_sft"] for r in rows],
                                         "all steps correct after SFT": [r["all_steps_correct_sft"] for r in rows]},
                "Data mixture (positive/negative/synthetic): " + ", ".join(f"{i}={l}" for i, l in enumerate(labels)),
                "job", "score", out / "mixture.png")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
