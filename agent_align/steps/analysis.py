"""Failure-mode analysis (seed 004): group an evaluation's failures and pick targeted negatives.

Validator categories come from ``verdicts*.jsonl`` (one row per eval prompt: ``passed``,
``category``, and ``tool``/``split`` or an ``id`` joined to the eval rows); agent step categories
from trajectories that record a category per step. The most frequent categories that a negative
generator can produce, and the tools failing most often, become ``targeted_negatives.json``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from agent_align.validation.categories import CATEGORIES

# Validator category -> generator negative types that produce it (other_schema_error has none).
CATEGORY_NEGATIVES = {"json_error": ["json_error", "unstructured"], "wrong_tool": ["wrong_tool"],
                      "missing_required": ["missing_required"], "hallucinated_param": ["hallucinated_param"],
                      "type_mismatch": ["type_mismatch"], "enum_violation": ["enum_violation"],
                      "missing_call": ["missing_call"], "extra_call": ["extra_call"]}
STEP_CATEGORY_KEYS = ("category", "reward_category", "step_category")


def join_tools(verdicts: list[dict], data_rows: list[dict] | None) -> list[dict]:
    """Verdict rows with ``tool`` and ``split``, taken from the eval rows by id when missing."""
    by_id = {r.get("id"): r for r in data_rows or []}
    out = []
    for v in verdicts:
        src = by_id.get(v.get("id"), {})
        out.append({**v, "tool": v.get("tool") or src.get("tool") or "?", "split": v.get("split") or src.get("split") or "-"})
    return out


def failure_table(verdicts: list[dict]) -> dict:
    """Counts of failures by category, by tool, and by (tool, category), with rates."""
    n = len(verdicts)
    failed = [v for v in verdicts if not v.get("passed")]
    per_tool_n = Counter(v["tool"] for v in verdicts)
    by_cat = Counter(v.get("category") or "unknown" for v in failed)
    by_tool = Counter(v["tool"] for v in failed)
    cells = Counter((v["tool"], v.get("category") or "unknown") for v in failed)
    by_split = Counter(v["split"] for v in failed)
    return {"n": n, "failed": len(failed), "fail_rate": len(failed) / n if n else 0.0,
            "by_category": {c: by_cat.get(c, 0) for c in list(CATEGORIES) + sorted(set(by_cat) - set(CATEGORIES))},
            "by_tool": {t: {"n": per_tool_n[t], "failed": by_tool.get(t, 0), "fail_rate": by_tool.get(t, 0) / per_tool_n[t],
                            "heldout": all(v["split"] == "unseen" for v in verdicts if v["tool"] == t)}
                        for t in sorted(per_tool_n, key=lambda t: (-by_tool.get(t, 0), t))},
            "by_split": dict(sorted(by_split.items())),
            "cells": [{"tool": t, "category": c, "count": k} for (t, c), k in cells.most_common()]}


def step_categories(trajectories: list[dict]) -> dict:
    """Counts of per-step categories over trajectories (``steps`` lists whose items name a category)."""
    counts, per_tool = Counter(), Counter()
    for t in trajectories:
        for step in t.get("steps") or []:
            cat = next((step[k] for k in STEP_CATEGORY_KEYS if isinstance(step, dict) and step.get(k)), None)
            if cat is None:
                continue
            if step.get("validator_category"):
                cat = f"{cat}/{step['validator_category']}"
            counts[cat] += 1
            call = next((step[k] for k in ("call", "action") if isinstance(step.get(k), dict)), {})
            tool = call.get("tool") or call.get("name") or step.get("tool")
            if tool:
                per_tool[(tool, cat)] += 1
    return {"by_category": dict(counts.most_common()),
            "by_tool": [{"tool": t, "category": c, "count": k} for (t, c), k in per_tool.most_common()]}


def load_trajectories(path: str) -> list[dict]:
    p = Path(path)
    files = sorted(p.glob("*.json")) if p.is_dir() else [p]
    out = []
    for f in files:
        from agent_align.jsonl import read_json_or_yaml, read_jsonl

        if f.suffix == ".jsonl":
            out.extend(read_jsonl(f, "analyze.trajectories"))
        else:
            data = read_json_or_yaml(f, "analyze.trajectories")
            out.extend(data if isinstance(data, list) else [data])
    return out


def targeted_negatives(table: dict, top_k: int, boost: float) -> dict:
    """Multipliers for the ``top_k`` most frequent producible categories and failing tools."""
    cats = [c for c, k in sorted(table["by_category"].items(), key=lambda kv: -kv[1]) if k > 0 and c in CATEGORY_NEGATIVES]
    types = {t: boost for c in cats[:top_k] for t in CATEGORY_NEGATIVES[c]}
    # held-out tools are never trained on, so over-sampling them would change nothing
    tools = [t for t, s in table["by_tool"].items() if s["failed"] > 0 and t != "?" and not s.get("heldout")]
    return {"negative_types": types, "tools": {t: boost for t in tools[:top_k]},
            "from": {"categories": cats[:top_k], "tools": tools[:top_k]}}


def markdown(table: dict, steps: dict | None) -> str:
    lines = ["# Failure modes\n", f"{table['failed']} of {table['n']} outputs failed "
             f"({100 * table['fail_rate']:.1f}%).\n", "| category | failures | share |", "|---|---:|---:|"]
    for c, k in sorted(table["by_category"].items(), key=lambda kv: -kv[1]):
        lines.append(f"| {c} | {k} | {100 * k / max(1, table['failed']):.1f}% |")
    lines += ["", "| tool | n | failed | fail rate |", "|---|---:|---:|---:|"]
    for t, s in table["by_tool"].items():
        lines.append(f"| {t} | {s['n']} | {s['failed']} | {100 * s['fail_rate']:.1f}% |")
    if table["cells"]:
        lines += ["", "| tool | category | failures |", "|---|---|---:|"]
        lines += [f"| {c['tool']} | {c['category']} | {c['count']} |" for c in table["cells"][:30]]
    if steps and steps["by_category"]:
        lines += ["", "## Agent step categories", "", "| category | steps |", "|---|---:|"]
        lines += [f"| {c} | {k} |" for c, k in steps["by_category"].items()]
    return "\n".join(lines) + "\n"
