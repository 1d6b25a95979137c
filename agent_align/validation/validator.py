"""Scoring outputs against call schemas: Verdicts, SSPR and the failure breakdown."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from referencing import Registry
from referencing.exceptions import NoSuchResource, Unresolvable

from agent_align.validation.categories import CATEGORIES, PRECEDENCE, keyword_category
from agent_align.validation.compiled import Unsupported, compile_schema
from agent_align.validation.extract import extract_call
from agent_align.validation.parallel import check_calls, expected_calls


@dataclass(frozen=True)
class Verdict:
    passed: bool
    category: str | None  # None when passed
    detail: str = ""

    def as_row(self, row_id: Any = None) -> dict:
        return {"id": row_id, "passed": self.passed, "category": self.category, "detail": self.detail}


def _refuse_retrieval(uri: str):
    raise NoSuchResource(ref=uri)


# Schemas come from downloaded datasets: a $ref is followed only inside its own schema. Without this
# registry jsonschema would open file:// and http:// URIs.
NO_RETRIEVAL = Registry(retrieve=_refuse_retrieval)
REF_KEYWORDS = ("$ref", "$dynamicRef", "$recursiveRef")
_VALUE_KEYWORDS = ("enum", "const", "default", "examples")  # instance data, not subschemas


def remote_ref(schema: Any) -> str:
    """The first ``$ref`` that points outside ``schema`` (anything not starting with '#'), or ''."""
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            for key, value in node.items():
                if key in REF_KEYWORDS and isinstance(value, str) and not value.startswith("#"):
                    return value
                if key not in _VALUE_KEYWORDS:
                    stack.append(value)
    return ""


def _fmt_path(path: tuple) -> str:
    return ".".join(str(p) for p in path) if path else "(root)"


class SchemaChecker:
    """Checks call objects against schemas; each distinct schema is compiled once and cached."""

    def __init__(self):
        self._cache: dict[str, Any] = {}
        self._by_id: dict[int, tuple[Any, Any]] = {}  # id(schema) -> (schema, compiled): no re-serialising

    def _compiled(self, schema: Any):
        by_id = self._by_id.get(id(schema))
        if by_id is not None and by_id[0] is schema:
            return by_id[1]
        key = schema if isinstance(schema, str) else json.dumps(schema, sort_keys=True)
        hit = self._cache.get(key)
        if hit is None:
            obj = json.loads(key) if isinstance(schema, str) else schema
            Draft202012Validator.check_schema(obj)  # raises SchemaError: callers report file:line
            try:
                hit = ("compiled", compile_schema(obj))
            except Unsupported:
                hit = ("jsonschema", Draft202012Validator(obj, registry=NO_RETRIEVAL))
            self._cache[key] = hit
        if not isinstance(schema, str):
            if len(self._by_id) > 100_000:  # bounded: it keeps the schema objects alive
                self._by_id.clear()
            self._by_id[id(schema)] = (schema, hit)
        return hit

    def check(self, obj: Any, schema: Any) -> Verdict:
        kind, impl = self._compiled(schema)
        if kind == "compiled":
            errors: list = []
            impl(obj, (), errors)
            if not errors:
                return Verdict(True, None)
            rank, path, msg = min(errors, key=lambda e: e[0])
            return Verdict(False, CATEGORIES[rank], f"{_fmt_path(path)}: {msg}")
        best = None
        try:
            for err in impl.iter_errors(obj):
                cat = keyword_category(str(err.validator), tuple(err.absolute_path))
                if best is None or PRECEDENCE[cat] < PRECEDENCE[best[0]]:
                    best = (cat, f"{_fmt_path(tuple(err.absolute_path))}: {err.message}")
        except Unresolvable as exc:
            return Verdict(False, "other_schema_error", f"schema $ref {exc.ref!r} cannot be resolved "
                                                        "(only refs inside the schema, '#/...', are followed)")
        except RecursionError:  # a $ref cycle that the instance keeps following
            return Verdict(False, "other_schema_error", "schema $refs recurse without end on this output")
        return Verdict(True, None) if best is None else Verdict(False, best[0], best[1])


_DEFAULT = SchemaChecker()


def is_valid_schema(schema: Any) -> str:
    """'' when ``schema`` is a valid JSON Schema (2020-12), else the reason."""
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        return exc.message
    except RecursionError:
        return "schema nested too deeply"
    ref = remote_ref(schema)
    if ref:
        return f"$ref {ref!r} points outside the schema; only '#/...' refs are allowed (nothing is fetched)"
    return ""


def validate_output(output: str, schema: Any, fmt: str = "json", checker: SchemaChecker | None = None) -> Verdict:
    expected = expected_calls(schema)  # None for a single-call schema: that path is unchanged
    obj, why = extract_call(output, fmt, allow_list=expected is not None)
    if obj is None:
        return Verdict(False, "json_error", why)
    if expected is not None:
        return check_calls(obj, expected, checker or _DEFAULT)
    return (checker or _DEFAULT).check(obj, schema)


def summarize(verdicts: Iterable[Verdict]) -> dict:
    """``{"n", "passed", "sspr", "failures"}`` with every category present."""
    verdicts = list(verdicts)
    counts = Counter(v.category for v in verdicts if not v.passed)
    passed = sum(v.passed for v in verdicts)
    n = len(verdicts)
    return {"n": n, "passed": passed, "sspr": passed / n if n else 0.0,
            "failures": {c: counts.get(c, 0) for c in CATEGORIES}}


def breakdown_table(title: str, summary: dict) -> str:
    """The printed "Failure Breakdown" block, as in the reference write-up."""
    n = summary["n"]
    lines = ["=" * 50, title, f"Total Samples: {n}", f"Passed: {summary['passed']}",
             f"SSPR: {100 * summary['sspr']:.2f}%", "", "Failure Breakdown:"]
    for cat, count in sorted(summary["failures"].items(), key=lambda kv: (-kv[1], PRECEDENCE[kv[0]])):
        lines.append(f"  - {cat}: {count} ({100 * count / n if n else 0:.1f}%)")
    lines.append("=" * 50)
    return "\n".join(lines)
