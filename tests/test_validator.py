"""The validator: extraction, every category, every precedence pair, and the compiled checker
against jsonschema on many generated calls."""

from __future__ import annotations

import itertools
import json
import random

import pytest
from jsonschema import Draft202012Validator

from agent_align.data.generator import Generator
from agent_align.data.negatives import NEGATIVES
from agent_align.validation import CATEGORIES, PRECEDENCE, SchemaChecker, validate_output
from agent_align.validation.categories import keyword_category
from agent_align.validation.compiled import compile_schema
from agent_align.validation.validator import summarize

SCHEMA = {
    "type": "object",
    "properties": {
        "tool": {"type": "string", "const": "create_task"},
        "parameters": {
            "type": "object",
            "properties": {
                "title": {"type": "string"},
                "priority": {"type": "string", "enum": ["low", "medium", "high"]},
                "limit": {"type": "integer", "minimum": 1, "maximum": 50},
                "due": {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$"},
                "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1},
            },
            "required": ["title", "priority"],
            "additionalProperties": False,
        },
    },
    "required": ["tool", "parameters"],
    "additionalProperties": False,
}
GOOD = {"tool": "create_task", "parameters": {"title": "Review PR", "priority": "high", "limit": 5}}

# One mutation per category, each on its own key so they combine.
MUTATIONS = {
    "wrong_tool": lambda c: c.update(tool="create_tasks"),
    "missing_required": lambda c: c["parameters"].pop("title"),
    "hallucinated_param": lambda c: c["parameters"].update(verbose=True),
    "type_mismatch": lambda c: c["parameters"].update(limit="5"),
    "enum_violation": lambda c: c["parameters"].update(priority="urgent"),
    "other_schema_error": lambda c: c["parameters"].update(due="tomorrow"),
}


def mutated(*cats: str) -> str:
    call = json.loads(json.dumps(GOOD))
    for c in cats:
        MUTATIONS[c](call)
    return json.dumps(call)


def test_valid_call_passes_in_both_formats():
    assert validate_output(json.dumps(GOOD), SCHEMA).passed
    react = f"Thought: I need create_task.\nAction:\n```json\n{json.dumps(GOOD)}\n```"
    assert validate_output(react, SCHEMA, "react").passed
    fenced = f"```json\n{json.dumps(GOOD)}\n```"
    assert validate_output(fenced, SCHEMA, "json").passed


@pytest.mark.parametrize("cat", list(MUTATIONS))
def test_each_category_alone(cat):
    v = validate_output(mutated(cat), SCHEMA)
    assert not v.passed and v.category == cat, v


@pytest.mark.parametrize("output", [
    "", "The answer is 1000.", "{'tool': 'create_task'}", '{"tool": "create_task",}', "[1, 2]", '"text"', "42",
    '{"tool": NaN}', "```json\n{\"tool\": 1}\n``` trailing prose",
])
def test_json_errors(output):
    v = validate_output(output, SCHEMA)
    assert (v.passed, v.category) == (False, "json_error"), v


def test_react_without_action_block_is_json_error():
    v = validate_output(json.dumps(GOOD), SCHEMA, "react")
    assert v.category == "json_error" and "Action" in v.detail


SINGLE = [c for c in CATEGORIES if c in MUTATIONS]  # missing_call/extra_call: tests/test_parallel.py


def test_mutations_cover_every_single_call_category():
    assert set(CATEGORIES) - set(SINGLE) == {"json_error", "missing_call", "extra_call"}


@pytest.mark.parametrize("high,low", [(a, b) for a, b in itertools.combinations(SINGLE, 2)])
def test_precedence_pairs(high, low):
    assert PRECEDENCE[high] < PRECEDENCE[low]
    v = validate_output(mutated(high, low), SCHEMA)
    assert v.category == high, (high, low, v)


@pytest.mark.parametrize("low", SINGLE)
def test_json_error_beats_everything(low):
    broken = mutated(low)[:-1]  # drop the closing brace
    assert validate_output(broken, SCHEMA).category == "json_error"


def test_jsonschema_2020_12_number_semantics():
    s = {"type": "object", "properties": {"n": {"type": "integer"}}}
    chk = SchemaChecker()
    assert chk.check({"n": 5.0}, s).passed  # 5.0 is an integer in JSON Schema
    assert chk.check({"n": True}, s).category == "type_mismatch"  # true is not
    assert chk.check({"n": 5.5}, s).category == "type_mismatch"
    e = {"type": "object", "properties": {"x": {"enum": [1, "a"]}}}
    assert chk.check({"x": True}, e).category == "enum_violation"  # true != 1 in JSON
    assert chk.check({"x": 1.0}, e).passed


def test_seed_001_sample_triplet():
    """The reference write-up's example: chosen passes, rejected ('urgent') is an enum violation."""
    row = {
        "prompt": "Create a task with title 'Review PR' and priority high.\n"
                  "Tool: create_task(title: str, priority: enum['low', 'medium', 'high'])",
        "chosen": "{\"tool\": \"create_task\", \"parameters\": {\"title\": \"Review PR\", \"priority\": \"high\"}}",
        "rejected": "{\"tool\": \"create_task\", \"parameters\": {\"title\": \"Review PR\", \"priority\": \"urgent\"}}",
        "schema": {"type": "object", "properties": {
            "tool": {"type": "string", "const": "create_task"},
            "parameters": {"type": "object", "properties": {"title": {"type": "string"},
                                                            "priority": {"type": "string", "enum": ["low", "medium", "high"]}},
                           "required": ["title", "priority"], "additionalProperties": False}},
            "required": ["tool", "parameters"], "additionalProperties": False},
    }
    assert validate_output(row["chosen"], row["schema"]).passed
    assert validate_output(row["rejected"], row["schema"]).category == "enum_violation"


def test_summary_has_all_categories():
    vs = [validate_output(json.dumps(GOOD), SCHEMA), validate_output(mutated("enum_violation"), SCHEMA)]
    s = summarize(vs)
    assert s["n"] == 2 and s["passed"] == 1 and s["sspr"] == 0.5
    assert set(s["failures"]) == set(CATEGORIES) and s["failures"]["enum_violation"] == 1


def test_unsupported_keywords_fall_back_to_jsonschema():
    s = {"type": "object", "properties": {"a": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
         "additionalProperties": False}
    chk = SchemaChecker()
    assert chk.check({"a": 3}, s).passed
    assert chk.check({"a": 3.5}, s).category == "other_schema_error"
    assert chk.check({"a": 1, "b": 2}, s).category == "hallucinated_param"


def _reference_category(obj, schema) -> str | None:
    """What plain jsonschema says, mapped through the same keyword table."""
    best = None
    for err in Draft202012Validator(schema).iter_errors(obj):
        cat = keyword_category(str(err.validator), tuple(err.absolute_path))
        if best is None or PRECEDENCE[cat] < PRECEDENCE[best]:
            best = cat
    return best


def test_compiled_checker_agrees_with_jsonschema_on_generated_calls(cfg_factory):
    """Differential test: chosen calls and every kind of hard negative, on all built-in and 200
    procedural tool schemas (minProperties etc. use the fallback)."""
    cfg = cfg_factory("data.procedural_tools=200", "data.n_train=10")
    gen = Generator(cfg.data, cfg.seed)
    rng = random.Random(0)
    checked = 0
    for tool in gen.pools.all:
        schema = gen.schemas[tool.name]
        try:
            compile_schema(schema)
        except Exception:
            continue
        chk = SchemaChecker()
        for i in range(6):
            from agent_align.tools.values import sample_object

            call = {"tool": tool.name, "parameters": sample_object(tool.parameters, rng, 0.5)}
            for neg in ["type_mismatch", "enum_violation", "hallucinated_param", "missing_required", "wrong_tool"]:
                bad = NEGATIVES.get(neg)(call, tool, [], rng)
                for obj in (call, bad):
                    if obj is None:
                        continue
                    got = chk.check(obj, schema)
                    assert (None if got.passed else got.category) == _reference_category(obj, schema), (tool.name, obj)
                    checked += 1
    assert checked > 2000


@pytest.mark.parametrize("schema,good,bad", [
    ({"type": "array", "minItems": 1}, [1], []),
    ({"type": "array", "maxItems": 1}, [1], [1, 2]),
    ({"type": "object", "minProperties": 1}, {"a": 1}, {}),
    ({"type": "object", "maxProperties": 1}, {"a": 1}, {"a": 1, "b": 2}),
    ({"type": "string", "minLength": 2}, "ab", "a"),
    ({"type": "string", "maxLength": 2}, "ab", "abc"),
    ({"type": "number", "exclusiveMinimum": 0}, 0.5, 0),
    ({"type": "number", "multipleOf": 0.5}, 1.5, 1.2),
])
def test_size_and_bound_keywords(schema, good, bad):
    wrapped = {"type": "object", "properties": {"x": schema}}
    chk = SchemaChecker()
    assert chk.check({"x": good}, wrapped).passed
    v = chk.check({"x": bad}, wrapped)
    assert v.category == "other_schema_error" and v.category == _reference_category({"x": bad}, wrapped)
