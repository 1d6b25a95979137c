"""BFCL scorers on the shared BFCL data: reference answers score 100%, mutations get their error type."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest

from agent_align.bfcl.checker import check_ast, check_strict, reference_calls
from agent_align.bfcl.loader import load_bfcl
from agent_align.bfcl.parse import as_json, parse_calls
from agent_align.bfcl.stages import score_items
from agent_align.validation.validator import SchemaChecker
from tests.conftest import SHARED

BFCL = SHARED / "bfcl"
CATEGORIES = ["simple_python", "multiple", "parallel", "parallel_multiple"]
# Rows whose reference answer contradicts the function's own schema, so no answer can pass strictly:
# a variable reference "data['sales']" where an array is declared, and words in an integer array.
SCHEMA_CONTRADICTED = {"parallel_multiple_21", "parallel_multiple_94"}
pytestmark = pytest.mark.skipif(not (BFCL / "possible_answer").is_dir(),
                                reason=f"BFCL data missing at {BFCL} (CI clones ../shared beside the repo)")


@pytest.fixture(scope="module")
def loaded():
    checker = SchemaChecker()
    start = time.perf_counter()
    items = load_bfcl(SimpleNamespace(bfcl_dir=str(BFCL), categories=CATEGORIES), checker)
    print(f"loaded {sum(map(len, items.values()))} BFCL rows in {time.perf_counter() - start:.2f}s")
    return items, checker


@pytest.fixture(scope="module")
def rows(loaded):
    return [it for its in loaded[0].values() for it in its]


def as_python(calls) -> str:
    """BFCL's own answer syntax, ``[f(a=1), g.h(b='x')]``."""
    return "[" + ", ".join(f"{n}(" + ", ".join(f"{k}={v!r}" for k, v in a.items()) + ")" for n, a in calls) + "]"


def test_reference_answers_score_100_percent_in_every_syntax(loaded):
    items, checker = loaded
    assert {k: len(v) for k, v in items.items()} == {"simple_python": 400, "multiple": 200, "parallel": 200,
                                                     "parallel_multiple": 200}
    for render in (as_json, as_python):
        outputs = {it.id: render(reference_calls(it)) for its in items.values() for it in its}
        start = time.perf_counter()
        report, verdicts = score_items(items, outputs, "json", checker)
        print(f"{render.__name__}: scored 1000 rows in {time.perf_counter() - start:.2f}s")
        for cat, s in report["categories"].items():
            assert s["ast_accuracy"] == 1.0, (cat, s["errors"])
            assert s["n"] == len(items[cat])
        strict_failed = {v["id"]: v["strict_category"] for v in verdicts if not v["strict_passed"]}
        assert strict_failed == {i: "type_mismatch" for i in SCHEMA_CONTRADICTED}
        for cat in ("simple_python", "multiple", "parallel"):
            assert report["categories"][cat]["sspr"] == 1.0
        assert report["overall"]["n"] == 1000 and report["overall"]["ast_accuracy"] == 1.0


def test_openai_tool_calls_syntax_scores_like_json(loaded, rows):
    _, checker = loaded
    for it in rows[::7]:
        calls = reference_calls(it)
        msg = {"role": "assistant", "tool_calls": [
            {"type": "function", "function": {"name": n, "arguments": json.dumps(a)}} for n, a in calls]}
        parsed, why = parse_calls(json.dumps(msg))
        assert why == "" and parsed == calls
        assert check_ast(it, parsed).passed


def _first_call_param(it, want_types):
    """(param, schema type) of the first call's first parameter of a wanted type whose reference value
    has that type (not one of BFCL's 'variable' answers)."""
    name, args = reference_calls(it)[0]
    props = it.functions[name]["properties"]
    pytypes = {"string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,)}
    for p, v in args.items():
        t = props.get(p, {}).get("type")
        if t in want_types and type(v) in pytypes[t] and not (t != "boolean" and isinstance(v, bool)):
            return p, t
    return None, None


def _expect(it, calls, checker, ast_error, strict_category="same"):
    """Single-call categories report the error itself; parallel ones report cannot_find_match with the
    error of the mutated call against its closest expected call as sub_error (count errors come first)."""
    ast = check_ast(it, calls)
    parallel = it.kind == "parallel" and ast_error != "wrong_count"
    want = ("cannot_find_match", ast_error) if parallel else (ast_error, None)
    assert (ast.error, ast.sub_error) == want, (it.id, ast)
    if it.id not in SCHEMA_CONTRADICTED and strict_category != "same":
        strict = check_strict(it, calls, checker)
        assert strict.category == strict_category, (it.id, strict)


def _mutate_first(it, fn):
    calls = [(n, dict(a)) for n, a in reference_calls(it)]
    calls[0] = fn(*calls[0])
    return calls


def test_wrong_function_name(loaded, rows):
    _, checker = loaded
    for it in rows:
        _expect(it, _mutate_first(it, lambda n, a: (n + "_renamed", a)), checker, "wrong_func_name", "wrong_tool")


def test_multiple_needs_the_right_one_of_the_offered_functions(loaded):
    items, checker = loaded
    n = 0
    for it in items["multiple"]:
        want = next(iter(it.answers[0]))
        other = next(name for name in it.functions if name != want)
        _expect(it, [(other, reference_calls(it)[0][1])], checker, "wrong_func_name")
        n += 1
    assert n == 200


def test_dropped_required_parameter(loaded, rows):
    _, checker = loaded
    n = 0
    for it in rows:
        name, args = reference_calls(it)[0]
        required = [p for p in it.functions[name].get("required", []) if p in args]
        if required:
            _expect(it, _mutate_first(it, lambda n_, a: (n_, {k: v for k, v in a.items() if k != required[0]})),
                    checker, "missing_required", "missing_required")
            n += 1
    assert n > 900


def test_extra_parameter(loaded, rows):
    _, checker = loaded
    for it in rows:
        _expect(it, _mutate_first(it, lambda n, a: (n, {**a, "zz_not_a_param": 1})), checker, "unexpected_param",
                "hallucinated_param")


@pytest.mark.parametrize("schema_type,bad,strict_category", [
    ("string", 12345, "type_mismatch"), ("integer", "12", "type_mismatch"), ("number", "1.5", "type_mismatch"),
    ("boolean", "yes", "type_mismatch"), ("integer", True, "type_mismatch"),
    ("integer", 3.0, None),  # BFCL: a float is never an integer; JSON Schema: 3.0 is
])
def test_wrong_type(loaded, rows, schema_type, bad, strict_category):
    _, checker = loaded
    n = 0
    for it in rows:
        p, _ = _first_call_param(it, {schema_type})
        if p is not None:
            _expect(it, _mutate_first(it, lambda n_, a: (n_, {**a, p: bad})), checker, "type_error", strict_category)
            n += 1
    assert n >= 20


def test_int_accepted_for_float(loaded, rows):
    _, checker = loaded
    n = 0
    for it in rows:
        name, args = reference_calls(it)[0]
        props = it.functions[name]["properties"]
        p = next((k for k, v in args.items() if props.get(k, {}).get("type") == "number" and type(v) is float
                  and v.is_integer()), None)
        if p is not None:
            calls = _mutate_first(it, lambda n_, a: (n_, {**a, p: int(a[p])}))
            assert check_ast(it, calls).passed, it.id
            n += 1
    assert n >= 20


@pytest.mark.parametrize("schema_type", ["string", "integer"])
def test_value_outside_the_acceptable_list(loaded, rows, schema_type):
    _, checker = loaded
    n_enum = n_free = 0
    for it in rows:
        p, _ = _first_call_param(it, {schema_type})
        if p is None:
            continue
        name = reference_calls(it)[0][0]
        schema = it.functions[name]["properties"][p]
        bad = "zzqx not an answer" if schema_type == "string" else 987654321
        in_enum = "enum" in schema
        _expect(it, _mutate_first(it, lambda n_, a: (n_, {**a, p: bad})), checker, "value_error",
                "enum_violation" if in_enum else "same")
        if not in_enum and it.id not in SCHEMA_CONTRADICTED and "maximum" not in schema:
            assert check_strict(it, _mutate_first(it, lambda n_, a: (n_, {**a, p: bad})), checker).passed
        n_enum += in_enum
        n_free += not in_enum
    assert n_free >= 20 and (schema_type != "string" or n_enum >= 5)


def test_string_normalisation(loaded, rows):
    n = 0
    for it in rows:
        p, _ = _first_call_param(it, {"string"})
        if p is not None:
            calls = _mutate_first(it, lambda n_, a: (n_, {**a, p: " " + a[p].upper().replace(" ", " _ ") + "."}))
            assert check_ast(it, calls).passed, it.id
            n += 1
    assert n > 500


def test_parallel_order_does_not_matter_and_counts_do(loaded, rows):
    _, checker = loaded
    multi = [it for it in rows if len(it.answers) > 1]
    assert len(multi) >= 350
    for it in multi:
        calls = reference_calls(it)
        swapped = calls[::-1]
        assert check_ast(it, swapped).passed, it.id
        assert check_strict(it, swapped, checker).passed == (it.id not in SCHEMA_CONTRADICTED)
        _expect(it, calls[:-1], checker, "wrong_count", "missing_call")
        _expect(it, calls + calls[:1], checker, "wrong_count", "extra_call")


def test_single_call_categories_reject_extra_calls(loaded):
    items, checker = loaded
    for it in items["simple_python"] + items["multiple"]:
        calls = reference_calls(it)
        _expect(it, calls * 2, checker, "wrong_count", "extra_call")


def test_undecodable_answer(loaded, rows):
    _, checker = loaded
    for it in rows[:50]:
        calls, why = parse_calls("I would call the function now.")
        assert calls is None and why
        assert check_ast(it, calls, why).error == "decoder_failed"
        assert check_strict(it, calls, checker, why).category == "json_error"
