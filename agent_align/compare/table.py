"""One row per run from its ``summary.json`` (the pipeline's public interface), written as CSV and a
markdown table: swept keys, SSPR (overall/seen/unseen, baseline and aligned), aligned failure counts
per category, final DPO reward margin, wall time and peak memory.

    python -m agent_align stage=compare compare.sweep=multirun/default/2026-01-01_12-00-00
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_align.jsonl import atomic_open

MARGIN_KEY = "rewards/margins"  # TRL's DPO log key: mean(chosen reward - rejected reward)


@dataclass
class Run:
    label: str  # what names the run in tables and plots: job number, or the directory name
    dir: Path
    swept: dict[str, str] = field(default_factory=dict)
    summary: dict | None = None
    problem: str = ""  # why the run has no row (no summary.json yet, job failed...)
    agentic: dict | None = None  # its agentic_summary.json (stage=agent_pipeline; rows in agent_table)


def load_summary(run_dir: Path) -> tuple[dict | None, str]:
    p = run_dir / "summary.json"
    if not p.is_file():
        return None, "no summary.json (job unfinished or failed)"
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except ValueError as exc:
        return None, f"summary.json is not valid JSON ({exc})"
    if not isinstance(data.get("models"), dict) or not data["models"]:
        return None, "summary.json has no 'models' section"
    return data, ""


def _last(obj: Any, key: str) -> float | None:
    """The last value logged under ``key`` anywhere in nested dicts/lists (TRL log history rows)."""
    found = None
    if isinstance(obj, dict):
        v = obj.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            found = float(v)
        children = [c for c in obj.values() if isinstance(c, (dict, list))]
    elif isinstance(obj, list):
        children = obj
    else:
        return None
    for child in children:
        val = _last(child, key)
        found = val if val is not None else found
    return found


def reward_margin(summary: dict, run_dir: Path) -> float | None:
    """Final DPO reward margin: the pipeline's ``train.dpo.final_reward_margin``, else the last
    ``rewards/margins`` in ``train_metrics`` or in the DPO log (metrics/dpo.jsonl)."""
    margin = ((summary.get("train") or {}).get("dpo") or {}).get("final_reward_margin")
    if margin is None:
        margin = _last(summary.get("train_metrics"), MARGIN_KEY)
    log = run_dir / "metrics" / "dpo.jsonl"
    if margin is None and log.is_file():
        rows = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
        margin = _last(rows, MARGIN_KEY)
    return margin


def _split(model: dict, split: str) -> float | None:
    s = (model.get("by_split") or {}).get(split) or {}
    return s.get("sspr")


def row(run: Run, failure_cats: list[str]) -> dict[str, Any]:
    s = run.summary or {}
    models = s.get("models", {})
    base, aligned = models.get("baseline", {}), models.get("aligned", {})
    out: dict[str, Any] = {"run": run.label, **run.swept}
    out.update({
        "aligned_sspr": aligned.get("sspr"), "aligned_seen": _split(aligned, "seen"),
        "aligned_unseen": _split(aligned, "unseen"), "baseline_sspr": base.get("sspr"),
        "baseline_seen": _split(base, "seen"), "baseline_unseen": _split(base, "unseen"),
        "n_eval": aligned.get("n", base.get("n")),
    })
    fails = aligned.get("failures") or {}
    out.update({f"fail_{c}": fails.get(c, 0) for c in failure_cats})
    out["reward_margin"] = reward_margin(s, run.dir)
    timings = s.get("timings") or {}
    stage_times = [v for k, v in timings.items() if k != "total" and isinstance(v, (int, float))]
    out["time_s"] = round(timings.get("total", sum(stage_times)), 1) if timings else None
    mem = [v for v in (s.get("peak_memory_mb") or {}).values() if isinstance(v, (int, float))]
    out["peak_mem_mb"] = round(max(mem)) if mem else None
    out["dir"] = str(run.dir)
    return out


def build_rows(runs: list[Run]) -> list[dict[str, Any]]:
    """Rows for the runs that have a summary, best aligned SSPR first."""
    ok = [r for r in runs if r.summary]
    cats = sorted({c for r in ok for c in ((r.summary["models"].get("aligned") or {}).get("failures") or {})})
    rows = [row(r, cats) for r in ok]
    return sorted(rows, key=lambda x: -(x["aligned_sspr"] if x["aligned_sspr"] is not None else -1.0))


def write_csv(rows: list[dict], path: Path) -> None:
    cols = list(rows[0]) if rows else []
    with atomic_open(path) as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)


def _fmt(key: str, v: Any) -> str:
    if v is None:
        return "-"
    if "sspr" in key or key.endswith(("_seen", "_unseen")):
        return f"{100 * v:.1f}%"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def markdown(rows: list[dict], skipped: list[Run], title: str) -> str:
    lines = [f"# {title}", ""]
    if rows:
        # failure categories no run has stay in the CSV but would only widen this table
        cols = [c for c in rows[0] if c != "dir" and not (c.startswith("fail_") and not any(r[c] for r in rows))]
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(_fmt(c, r[c]) for c in cols) + " |" for r in rows]
        lines += ["", "SSPR: share of eval prompts whose output passes strict schema validation; seen/unseen: "
                  "tools present in / held out from training; fail_*: the aligned model's failures by category; "
                  "reward_margin: final DPO `rewards/margins`; time_s: sum of stage timings.", ""]
        lines += [f"- run {r['run']}: `{r['dir']}`" for r in rows]
    if skipped:
        lines += ["", "Not included:"] + [f"- {r.label} (`{r.dir}`): {r.problem}" for r in skipped]
    return "\n".join(lines) + "\n"
