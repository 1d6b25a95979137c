"""Table and plot of the data-mixture study: mean and spread over seeds per positive/negative/synthetic mix.

    python -m agent_align -m +experiment=mixture_study              # writes them when the sweep ends
    python experiments/mixture_table.py multirun/mixture_study/<date_time>   # again, or for any run dirs

Per job: the normalised shares of its SFT data, its seed, the post-SFT (baseline) and post-DPO
(aligned) SSPR by split, and the post-SFT average verifier step score of its evaluation outputs
(finer-grained than SSPR: a right thought before a wrong call still counts). Jobs with the same
shares are grouped: mean, sample standard deviation and min/max over their seeds. Writes
mixture_table.md, mixture_table.json and mixture.png into the sweep directory.
"""

from __future__ import annotations

import logging
import statistics
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from agent_align.jsonl import atomic_open, read_jsonl, write_json
from agent_align.steps import plots
from agent_align.steps.mixture import KINDS, shares
from agent_align.steps.scorers import VerifierScorer
from agent_align.steps.scoring import all_correct, mean_score, score_rows

log = logging.getLogger(__name__)
METRICS = (("sspr_sft", "SSPR after SFT"), ("sspr_sft_seen", "SSPR seen"), ("sspr_sft_unseen", "SSPR unseen"),
           ("sspr_aligned", "SSPR after DPO"), ("step_score_sft", "step score after SFT"),
           ("all_steps_correct_sft", "all steps correct"))


def job_dirs(paths: list[str | Path]) -> list[Path]:
    """Run directories holding a summary.json: the paths themselves, or their children (a sweep)."""
    out = []
    for a in paths:
        p = Path(a)
        if (p / "summary.json").exists():
            out.append(p)
        elif p.is_dir():
            out += [d for d in sorted(p.iterdir()) if (d / "summary.json").exists()]
    return out


def step_score(job: Path, fmt: str, label: str) -> tuple[float | None, float | None]:
    preds_path = job / f"predictions_{label}.jsonl"
    if not preds_path.exists():
        return None, None
    rows = {r["id"]: r for r in read_jsonl(job / "data" / "eval.jsonl")}
    preds = read_jsonl(preds_path)
    scorer = VerifierScorer(SimpleNamespace(unverifiable_score=1.0))
    scored = score_rows([{**rows[p["id"]], "chosen": p["output"]} for p in preds], scorer, "auto",
                        sides=("chosen",), default=fmt)
    scores = [r["chosen_scores"] for r in scored]
    if not scores:
        return None, None
    return sum(map(mean_score, scores)) / len(scores), sum(all_correct(s, 0.5) for s in scores) / len(scores)


def row_of(job: Path) -> dict:
    import json

    cfg_path = job / ".hydra" / "config.yaml"
    cfg = OmegaConf.load(cfg_path) if cfg_path.exists() else None
    mix = cfg.mixture if cfg is not None and "mixture" in cfg else None
    if mix is not None and any(mix.get(k) is not None for k in KINDS):
        share = shares(mix)
    else:  # no mixture: plain SFT on every request (the default recipe's own mix of real and procedural tools)
        share = {"positive": 1.0, "negative": 0.0, "synthetic": 0.0}
    s = json.loads((job / "summary.json").read_text())
    b, a = s["models"]["baseline"], s["models"]["aligned"]
    score, correct = step_score(job, cfg.data.format if cfg is not None else "json", "baseline")
    return {"job": job.name, **{k: round(v, 3) for k, v in share.items()},
            "seed": cfg.seed if cfg is not None else None,
            "sspr_sft": b["sspr"], "sspr_sft_seen": b["by_split"].get("seen", {}).get("sspr"),
            "sspr_sft_unseen": b["by_split"].get("unseen", {}).get("sspr"), "sspr_aligned": a["sspr"],
            "step_score_sft": None if score is None else round(score, 4),
            "all_steps_correct_sft": None if correct is None else round(correct, 4),
            "sft_seconds": s.get("timings", {}).get("sft")}


def group(rows: list[dict]) -> list[dict]:
    """One entry per mix: its jobs' seeds and, per metric, mean / sd (n-1; 0 for one seed) / min / max."""
    by_mix: dict[tuple, list[dict]] = {}
    for r in rows:
        by_mix.setdefault(tuple(r[k] for k in KINDS), []).append(r)
    out = []
    for mix, jobs in sorted(by_mix.items(), key=lambda kv: (kv[0][1], kv[0][2], -kv[0][0])):
        entry: dict[str, Any] = dict(zip(KINDS, mix))
        entry["seeds"] = sorted(j["seed"] for j in jobs if j["seed"] is not None)
        entry["n"] = len(jobs)
        for key, _ in METRICS:
            vals = [j[key] for j in jobs if j[key] is not None]
            entry[key] = None if not vals else {
                "mean": round(statistics.fmean(vals), 4), "sd": round(statistics.stdev(vals), 4) if len(vals) > 1 else 0.0,
                "min": min(vals), "max": max(vals), "n": len(vals)}
        out.append(entry)
    return out


def _cell(stat: dict | None) -> str:
    if stat is None:
        return "-"
    return f"{stat['mean']:.3f}" if stat["n"] == 1 else f"{stat['mean']:.3f} ± {stat['sd']:.3f}"


def markdown(groups: list[dict], rows: list[dict]) -> str:
    head = ["positive", "negative", "synthetic", "seeds"] + [label for _, label in METRICS]
    lines = ["Mean ± sample standard deviation over seeds (one value: a single seed).", "",
             "| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for g in groups:
        lines.append("| " + " | ".join([f"{g[k]:.3f}" for k in KINDS] + [",".join(map(str, g["seeds"])) or "-"]
                                       + [_cell(g[k]) for k, _ in METRICS]) + " |")
    jhead = ["job", "seed", *KINDS] + [k for k, _ in METRICS]
    lines += ["", "Per job:", "", "| " + " | ".join(jhead) + " |", "|" + "---|" * len(jhead)]
    for r in rows:
        lines.append("| " + " | ".join(str(r[k]) if k in ("job", "seed") else "-" if r[k] is None else f"{r[k]:.3f}"
                                       for k in jhead) + " |")
    return "\n".join(lines) + "\n"


def write_tables(paths: list[str | Path], out: Path) -> dict:
    """The study's table (md + json) and plot from the jobs under ``paths``, into ``out``."""
    jobs = job_dirs(paths)
    if not jobs:
        raise FileNotFoundError(f"no job directory with summary.json under {[str(p) for p in paths]}")
    rows = [row_of(j) for j in jobs]
    groups = group(rows)
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(groups, rows)
    with atomic_open(out / "mixture_table.md") as fh:
        fh.write(text)
    write_json(out / "mixture_table.json", {"groups": groups, "jobs": rows})
    labels = [f"{g['positive']:.2f}/{g['negative']:.2f}/{g['synthetic']:.2f}" for g in groups]
    series = {label: [(g[key] or {}).get("mean", 0.0) for g in groups] for key, label in METRICS[:3] + METRICS[4:5]}
    errors = {label: [(g[key] or {}).get("sd", 0.0) for g in groups] for key, label in METRICS[:3] + METRICS[4:5]}
    plots.grouped_bars(labels, series, errors, "SFT data mix (positive/negative/synthetic), mean ± sd over seeds",
                       "score", out / "mixture.png")
    return {"jobs": len(rows), "mixes": len(groups), "markdown": text, "out": str(out)}


class MixtureTableCallback(Callback):
    """Writes the table and plot into the sweep directory once every job of a `-m` sweep has ended
    (local or SLURM launcher: both return only then). A table problem is logged, never raised:
    the jobs' results are already on disk and the script can be re-run on them."""

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        try:
            result = write_tables([sweep], sweep)
        except Exception as exc:  # noqa: BLE001 - hours of jobs must not end in a traceback over a table
            log.error("mixture table not written (%s: %s); re-run: python experiments/mixture_table.py %s",
                      type(exc).__name__, exc, sweep)
            return
        log.info("mixture study: %d jobs, %d mixes -> %s/mixture_table.md, mixture.png", result["jobs"],
                 result["mixes"], sweep)
        print(result["markdown"])
