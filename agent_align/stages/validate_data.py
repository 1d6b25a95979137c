"""stage=validate_data: check a triplet file before training on it.

    python -m agent_align stage=validate_data validate.path=data/train.jsonl

Every row needs prompt/chosen/rejected/schema, a valid schema, a chosen that passes and a rejected
that fails with its ``negative_type``. Bad rows are listed as ``file:line: problem``; exit code 2.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter

from agent_align.data.negatives import EXPECTED_CATEGORY
from agent_align.errors import UserError
from agent_align.jsonl import read_jsonl
from agent_align.stages.context import RunContext
from agent_align.validation.validator import SchemaChecker, is_valid_schema, validate_output

log = logging.getLogger(__name__)
REQUIRED = ("prompt", "chosen", "rejected", "schema")


def row_format(row: dict) -> str:
    return "react" if "Action:" in str(row.get("chosen", "")) else "json"


def problems_of(row: dict, checker: SchemaChecker, schema_ok: dict) -> list[str]:
    missing = [k for k in REQUIRED if k not in row]
    if missing:
        return [f"missing key(s) {missing}"]
    key = repr(row["schema"])
    if key not in schema_ok:
        schema_ok[key] = is_valid_schema(row["schema"])
    if schema_ok[key]:
        return [f"invalid JSON Schema: {schema_ok[key]}"]
    out = []
    fmt = row_format(row)
    chosen = validate_output(row["chosen"], row["schema"], fmt, checker)
    if not chosen.passed:
        out.append(f"chosen fails ({chosen.category}: {chosen.detail})")
    rejected = validate_output(row["rejected"], row["schema"], fmt, checker)
    neg = row.get("negative_type")
    if rejected.passed:
        out.append("rejected passes the schema (it must fail)")
    elif neg is not None:
        want = EXPECTED_CATEGORY.get(neg)
        if want is None:
            out.append(f"unknown negative_type {neg!r}; valid: {sorted(EXPECTED_CATEGORY)}")
        elif rejected.category != want:
            out.append(f"rejected labelled {neg} fails as {rejected.category} ({rejected.detail})")
    return out


def run(cfg, ctx: RunContext) -> dict:
    path = cfg.validate.path or str(ctx.path("data", "train.jsonl"))
    rows = read_jsonl(path, "validate.path")
    checker, schema_ok = SchemaChecker(), {}
    bad, counts, n_bad_rows = [], Counter(), 0
    for row in rows:
        probs = problems_of(row, checker, schema_ok)
        bad.extend(f"{path}:{row['_line']}: {p}" for p in probs)
        n_bad_rows += bool(probs)
        if not probs:
            counts[row.get("negative_type", "unlabelled")] += 1
    print(f"{path}: {len(rows)} rows, {len(rows) - n_bad_rows} valid")
    for k, v in sorted(counts.items()):
        print(f"  {k:<20} {v}")
    if bad:
        for line in bad[:50]:
            print(line, file=sys.stderr)
        more = " (first 50 shown)" if len(bad) > 50 else ""
        raise UserError(f"{path}: {len(bad)} problem(s) in {len(rows)} rows{more}; fix or regenerate the file")
    return {"path": path, "n": len(rows), "by_negative_type": dict(counts)}
