"""stage=score: SSPR and the failure breakdown of any model's outputs.

    python -m agent_align stage=score score.data=data/eval.jsonl score.predictions=preds.jsonl

Rows of ``score.predictions`` are ``{"output": ...}`` (plus ``"id"``), matched to ``score.data`` rows
by id when both have ids, else by order. Writes score.json and verdicts.jsonl in the run directory.
"""

from __future__ import annotations

import json
import logging
import sys

from agent_align.errors import UserError, file_error
from agent_align.jsonl import read_jsonl, write_json, write_jsonl
from agent_align.stages.context import RunContext
from agent_align.validation.validator import SchemaChecker, Verdict, breakdown_table, is_valid_schema, summarize, validate_output

log = logging.getLogger(__name__)


def pair_predictions(data_rows: list[dict], pred_rows: list[dict], data_path: str, pred_path: str) -> list[tuple[dict, dict]]:
    for r in pred_rows:
        if "output" not in r:
            raise file_error(pred_path, r["_line"], "row has no 'output' key", 'rows look like {"id": ..., "output": "..."}')
    if all("id" in r for r in data_rows) and all("id" in r for r in pred_rows):
        by_id = {}
        for r in pred_rows:
            if r["id"] in by_id:
                raise file_error(pred_path, r["_line"], f"duplicate id {r['id']!r}")
            by_id[r["id"]] = r
        missing = [r["id"] for r in data_rows if r["id"] not in by_id]
        extra = sorted(set(by_id) - {r["id"] for r in data_rows}, key=str)
        if missing or extra:
            raise UserError(f"{pred_path}: ids do not match {data_path}: {len(missing)} missing (first: {missing[:3]}), "
                            f"{len(extra)} unknown (first: {extra[:3]}); predict every data row exactly once")
        return [(r, by_id[r["id"]]) for r in data_rows]
    if len(data_rows) != len(pred_rows):
        raise UserError(f"{pred_path}: {len(pred_rows)} predictions for {len(data_rows)} rows of {data_path} "
                        f"(no ids to match on); give one prediction per data row, in order, or add 'id' to both")
    return list(zip(data_rows, pred_rows))


def check_schemas(rows: list[dict], path: str) -> None:
    """Every row has a valid schema; rows with equal schemas then share one object, so the
    checker finds its compiled validator by identity instead of re-serialising each row's schema."""
    seen: dict[str, tuple[dict, str]] = {}
    for r in rows:
        if "schema" not in r:
            raise file_error(path, r["_line"], "row has no 'schema' key", "each row needs the call's JSON Schema")
        key = json.dumps(r["schema"], sort_keys=True)
        if key not in seen:
            seen[key] = (r["schema"], is_valid_schema(r["schema"]))
        shared, problem = seen[key]
        if problem:
            raise file_error(path, r["_line"], f"invalid JSON Schema: {problem}")
        r["schema"] = shared


def score_rows(pairs: list[tuple[dict, dict]], fmt: str) -> list[Verdict]:
    checker = SchemaChecker()
    return [validate_output(pred["output"], row["schema"], fmt, checker) for row, pred in pairs]


def run(cfg, ctx: RunContext) -> dict:
    if cfg.data.name == "bfcl":
        from agent_align.bfcl.stages import score_bfcl

        return score_bfcl(cfg, ctx)
    data_path = cfg.score.data or str(ctx.path("data", "eval.jsonl"))
    if not cfg.score.predictions:
        raise UserError("config key 'score.predictions' is not set: pass score.predictions=FILE "
                        '(JSONL rows {"id": ..., "output": "..."})')
    data_rows = read_jsonl(data_path, "score.data")
    check_schemas(data_rows, data_path)
    pred_rows = read_jsonl(cfg.score.predictions, "score.predictions")
    pairs = pair_predictions(data_rows, pred_rows, data_path, cfg.score.predictions)
    fmt = cfg.score.format or cfg.data.format
    verdicts = score_rows(pairs, fmt)
    summary = summarize(verdicts)
    if ctx.is_main:
        write_jsonl(ctx.path("verdicts.jsonl"), (v.as_row(row.get("id")) for (row, _), v in zip(pairs, verdicts)))
        write_json(ctx.path("score.json"), summary)
    print(breakdown_table(f"SCORE: {cfg.score.predictions}", summary), file=sys.stdout)
    return summary
