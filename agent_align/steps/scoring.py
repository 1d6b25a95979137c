"""Scoring rows step by step with any scorer, and the summaries built on step scores."""

from __future__ import annotations

from typing import Any, Iterable

from agent_align.steps.split import detect_format


def completion_format(completion: Any, fmt: str, default: str = "json") -> str:
    return detect_format(completion, default) if fmt == "auto" else fmt


def score_rows(rows: list[dict], scorer, fmt: str = "auto", sides: Iterable[str] = ("chosen", "rejected"),
               default: str = "json") -> list[dict]:
    """Adds ``{side}_scores`` (one score per step) to every row, in place; returns the rows."""
    items, where = [], []
    for r in rows:
        for side in sides:
            if side in r and r[side] is not None:
                items.append({"row": r, "completion": r[side], "fmt": completion_format(r[side], fmt, default)})
                where.append((r, side))
    for (r, side), scores in zip(where, scorer.score(items)):
        r[f"{side}_scores"] = [round(float(s), 4) for s in scores]
    return rows


def mean_score(scores: list[float]) -> float:
    """A completion's score: the mean of its step scores (0 for a completion with no step)."""
    return sum(scores) / len(scores) if scores else 0.0


def first_wrong(scores: list[float], threshold: float) -> int | None:
    """Index of the first step scoring below ``threshold``, or None when every step is correct."""
    return next((i for i, s in enumerate(scores) if s < threshold), None)


def all_correct(scores: list[float], threshold: float) -> bool:
    return bool(scores) and first_wrong(scores, threshold) is None
