"""Parallel calls: an answer that is a JSON list of calls, matched to the expected calls in any order.

    schema = parallel_schema([call_schema(weather), call_schema(weather), call_schema(task)])
    validate_output('[{"tool": "create_task", ...}, {"tool": "get_weather", ...}, ...]', schema).passed

A row that needs several calls stores this schema: a plain JSON Schema (2020-12) for "an array of
exactly these calls, in any order" (every item valid for one of the tools; ``contains`` with
``minContains``/``maxContains`` fixes how often each tool is called), so any JSON Schema validator
agrees on pass/fail (tests/test_parallel.py checks that against jsonschema). ``check_calls`` scores
the same set with one category per answer, which no JSON Schema validator can give: calls are
paired to expected calls by tool name (the call schemas' ``const``), unpaired calls are checked
against the still-missing expected calls (``wrong_tool``), and what is left is ``extra_call`` or
``missing_call``. The answer's category is the highest-precedence failure among its calls.
A bare call object for a parallel row counts as a list of one call (it misses the others).
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from agent_align.validation.categories import PRECEDENCE

if TYPE_CHECKING:  # validator imports this module; the runtime import stays inside check_calls
    from agent_align.validation.validator import Verdict

Expected = list[tuple[str, Any]]  # (tool name, its call schema) per expected call, with repeats


def parallel_schema(call_schemas: list[dict]) -> dict:
    """The schema of an answer made of one call per item of ``call_schemas`` (our call schemas:
    ``properties.tool.const`` names the tool), in any order."""
    names = [s["properties"]["tool"]["const"] for s in call_schemas]
    distinct = {n: s for n, s in zip(names, call_schemas)}
    return {"type": "array", "minItems": len(names), "maxItems": len(names),
            "items": {"anyOf": list(distinct.values())},
            "allOf": [{"contains": {"type": "object", "properties": {"tool": {"const": n}}, "required": ["tool"]},
                       "minContains": c, "maxContains": c} for n, c in Counter(names).items()]}


def expected_calls(schema: Any) -> Expected | None:
    """The expected calls of a ``parallel_schema``, or None for any other schema (single-call rows)."""
    if not isinstance(schema, dict) or schema.get("type") != "array":
        return None
    try:
        by_name = {s["properties"]["tool"]["const"]: s for s in schema["items"]["anyOf"]}
        out: Expected = []
        for part in schema["allOf"]:
            name = part["contains"]["properties"]["tool"]["const"]
            out += [(name, by_name[name])] * part["minContains"]
    except (KeyError, TypeError):
        return None
    return out if out and len(out) == schema.get("minItems") else None


def check_calls(answer: Any, expected: Expected, checker) -> "Verdict":
    """One verdict for a whole answer (a list of call objects, or one object) against ``expected``."""
    from agent_align.validation.validator import Verdict

    calls = answer if isinstance(answer, list) else [answer]
    for i, call in enumerate(calls):
        if not isinstance(call, dict):
            return Verdict(False, "json_error", f"call #{i} is {type(call).__name__}, not an object")
    schemas = dict(expected)
    want = Counter(name for name, _ in expected)
    failures: list[tuple[int, str, str]] = []
    unpaired = []
    for i, call in enumerate(calls):
        name = call.get("tool")
        if isinstance(name, str) and want[name] > 0:
            want[name] -= 1
            v = checker.check(call, schemas[name])
            if not v.passed:
                failures.append((PRECEDENCE[v.category], v.category, f"call #{i} {name}: {v.detail}"))
        else:
            unpaired.append(i)
    missing = [name for name, n in want.items() for _ in range(n)]
    for i, name in zip(unpaired, missing):  # a call in place of an expected one: its own schema says why
        v = checker.check(calls[i], schemas[name])
        failures.append((PRECEDENCE[v.category], v.category, f"call #{i} in place of {name}: {v.detail}"))
    if len(unpaired) > len(missing):
        extra = [calls[i].get("tool") for i in unpaired[len(missing):]]
        failures.append((PRECEDENCE["extra_call"], "extra_call",
                         f"{len(calls)} calls for {len(expected)} expected; extra: {extra}"))
    elif len(missing) > len(unpaired):
        failures.append((PRECEDENCE["missing_call"], "missing_call",
                         f"{len(calls)} call(s) for {len(expected)} expected; missing: {missing[len(unpaired):]}"))
    if not failures:
        return Verdict(True, None)
    _, category, detail = min(failures, key=lambda f: f[0])
    return Verdict(False, category, detail)
