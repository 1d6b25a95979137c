"""BFCL's AST matching rules, one small hand-written question each (no shared data needed)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from agent_align.bfcl.checker import check_ast, check_strict, normalize
from agent_align.bfcl.loader import load_bfcl
from agent_align.bfcl.parse import parse_calls
from agent_align.validation.validator import SchemaChecker


def write_bfcl(root, category: str, rows: list[tuple[dict, dict]]) -> None:
    """A BFCL data folder: BFCL_v4_<category>.json and possible_answer/ (JSON Lines, no final newline)."""
    (root / "possible_answer").mkdir(parents=True, exist_ok=True)
    (root / f"BFCL_v4_{category}.json").write_text("\n".join(json.dumps(q) for q, _ in rows))
    (root / "possible_answer" / f"BFCL_v4_{category}.json").write_text("\n".join(json.dumps(a) for _, a in rows))


def make_item(root, functions: list[dict], ground_truth: list[dict], category: str = "simple_python"):
    q = {"id": f"{category}_0", "question": [[{"role": "user", "content": "do it"}]], "function": functions}
    write_bfcl(root, category, [(q, {"id": q["id"], "ground_truth": ground_truth})])
    return load_bfcl(SimpleNamespace(bfcl_dir=str(root), categories=[category]))[category][0]


def fn(name: str, properties: dict, required: list[str]) -> dict:
    return {"name": name, "description": "",
            "parameters": {"type": "dict", "properties": properties, "required": required}}


def ast_of(item, text: str):
    calls, why = parse_calls(text)
    return check_ast(item, calls, why)


@pytest.fixture
def weather(tmp_path):
    f = fn("weather.get", {"city": {"type": "string"}, "days": {"type": "integer"}, "unit": {"type": "string"},
                           "scale": {"type": "float"}, "detailed": {"type": "boolean"}}, ["city"])
    answer = {"weather.get": {"city": ["New York, NY", "NYC"], "days": [3, ""], "unit": ["celsius"],
                              "scale": [1.0, ""], "detailed": ["", False]}}
    return make_item(tmp_path, [f], [answer])


def test_normalize_drops_bfcl_punctuation_and_case():
    assert normalize("New York, NY") == normalize("new_york-ny.") == "newyorkny"
    assert normalize("a*b^c/d") == "abcd" and normalize("it's") == 'it"s'


@pytest.mark.parametrize("text,error", [
    ("weather.get(city='new york ny', unit='Celsius')", None),
    ("weather.get(city='NYC', unit='celsius', days=3, scale=1, detailed=False)", None),  # int for float
    ("weather.get(city='Boston', unit='celsius')", "value_error"),
    ("weather.get(city='NYC')", "missing_optional"),  # schema-optional, but the answer has no "" for unit
    ("weather.get(unit='celsius')", "missing_required"),
    ("weather.get(city='NYC', unit='celsius', days=3.0)", "type_error"),  # a float is not an integer
    ("weather.get(city='NYC', unit='celsius', days=True)", "type_error"),  # a bool is not an int
    ("weather.get(city='NYC', unit='celsius', scale='1')", "type_error"),
    ("weather.get(city='NYC', unit='celsius', days=4)", "value_error"),
    ("weather.get(city='NYC', unit='celsius', lang='en')", "unexpected_param"),
    ("weather.fetch(city='NYC', unit='celsius')", "wrong_func_name"),
    ("weather_get(city='NYC', unit='celsius')", None),  # the underscored name OpenAI-style APIs need
    ("[weather.get(city='NYC', unit='celsius'), weather.get(city='NYC', unit='celsius')]", "wrong_count"),
    ("get the weather", "decoder_failed"),
])
def test_simple_rules(weather, text, error):
    result = ast_of(weather, text)
    assert (result.passed, result.error) == (error is None, error), result.detail


def test_parameter_in_schema_but_in_no_answer_is_unexpected(tmp_path):
    f = fn("f", {"a": {"type": "integer"}, "b": {"type": "string"}}, ["a"])
    item = make_item(tmp_path, [f], [{"f": {"a": [1]}}])
    result = ast_of(item, "f(a=1, b='x')")
    assert result.error == "unexpected_param" and "in no acceptable answer" in result.detail
    assert check_strict(item, [("f", {"a": 1, "b": "x"})], SchemaChecker()).passed  # valid for the schema


def test_nested_lists_and_dicts_element_wise(tmp_path):
    f = fn("db.query", {"conditions": {"type": "array", "items": {"type": "dict", "properties": {
        "field": {"type": "string"}, "value": {"type": "float"}, "op": {"type": "string"}}}},
        "table": {"type": "tuple", "items": {"type": "integer"}}}, ["conditions"])
    answer = {"db.query": {"conditions": [[{"field": ["age"], "value": [25.0], "op": ["", ">"]},
                                           {"field": ["job"], "value": [1.5], "op": ["="]}]],
                           "table": [[1, 2], ""]}}
    item = make_item(tmp_path, [f], [answer])
    ok = "db.query(conditions=[{'field': 'AGE', 'value': 25}, {'field': 'job', 'value': 1.5, 'op': '='}], table=(1, 2))"
    assert ast_of(item, ok).passed
    swapped = "db.query(conditions=[{'field': 'job', 'value': 1.5, 'op': '='}, {'field': 'age', 'value': 25}])"
    assert ast_of(item, swapped).error == "value_error"  # list order matters inside a parameter
    assert ast_of(item, "db.query(conditions=[{'field': 'age', 'value': 25}])").error == "value_error"
    missing_key = "db.query(conditions=[{'field': 'age', 'value': 25}, {'field': 'job', 'value': 1.5}])"
    assert ast_of(item, missing_key).error == "value_error"  # op has no "" in the second dict
    second = "{'field': 'job', 'value': 1.5, 'op': '='}"
    extra_key = f"db.query(conditions=[{{'field': 'age', 'value': 25, 'x': 1}}, {second}])"
    assert ast_of(item, extra_key).error == "value_error"
    nested_bool = f"db.query(conditions=[{{'field': 'age', 'value': 25}}, {second}], table=[1, True])"
    assert ast_of(item, nested_bool).error == "type_error"  # checked at every depth


def test_free_form_dict_compares_values_strictly(tmp_path):
    f = fn("avg", {"scores": {"type": "dict", "description": "subject -> score"}}, ["scores"])
    item = make_item(tmp_path, [f], [{"avg": {"scores": [{"Math": [90], "Art": [1], "Music": [75, ""]}]}}])
    assert ast_of(item, "avg(scores={'Math': 90.0, 'Art': 1})").passed  # 90.0 == 90, Music may be left out
    assert ast_of(item, "avg(scores={'math': 90, 'Art': 1})").error == "value_error"  # keys are not normalised
    assert ast_of(item, "avg(scores={'Math': 90, 'Art': True})").error == "value_error"  # True is not 1
    assert ast_of(item, "avg(scores={'Math': 90})").error == "value_error"


def test_variable_references_and_any_type(tmp_path):
    f = fn("fit", {"x": {"type": "array", "items": {"type": "float"}}, "data": {"type": "any"}}, ["x", "data"])
    item = make_item(tmp_path, [f], [{"fit": {"x": ["df['sales']"], "data": ["my_data"]}}])
    assert ast_of(item, "fit(x=df['sales'], data=my_data)").passed  # BFCL spells variables as strings
    assert ast_of(item, "fit(x=df['cost'], data=my_data)").error == "value_error"
    assert ast_of(item, "fit(x=[1.0], data=my_data)").error == "value_error"
    strict = check_strict(item, parse_calls("fit(x=df['sales'], data=my_data)")[0], SchemaChecker())
    assert strict.category == "type_mismatch"  # a variable is not an array for the strict scorer


def test_parallel_matches_in_any_order_with_a_perfect_matching(tmp_path):
    f = fn("p", {"a": {"type": "integer"}}, ["a"])
    item = make_item(tmp_path, [f], [{"p": {"a": [1, 2]}}, {"p": {"a": [1]}}], category="parallel")
    # Greedy matching (BFCL's) pairs the first answer with a=1 and then fails; a perfect matching exists.
    assert ast_of(item, "[p(a=1), p(a=2)]").passed
    assert ast_of(item, "[p(a=2), p(a=1)]").passed
    result = ast_of(item, "[p(a=2), p(a=2)]")
    assert (result.error, result.sub_error) == ("cannot_find_match", "value_error")
    assert ast_of(item, "[p(a=1)]").error == "wrong_count"


def test_multiple_scores_the_answers_function_only(tmp_path):
    fns = [fn("a", {"x": {"type": "integer"}}, ["x"]), fn("b", {"x": {"type": "integer"}}, ["x"])]
    item = make_item(tmp_path, fns, [{"b": {"x": [1]}}], category="multiple")
    assert item.kind == "multiple" and ast_of(item, "b(x=1)").passed
    assert ast_of(item, "a(x=1)").error == "wrong_func_name"
    assert check_strict(item, [("a", {"x": 1})], SchemaChecker()).passed  # a valid call, just not the right one
    assert check_strict(item, [("c", {"x": 1})], SchemaChecker()).category == "wrong_tool"
    two = check_strict(item, [("a", {"x": 1}), ("b", {"x": "1"})], SchemaChecker())
    assert two.category == "extra_call"  # a wrong number of calls comes before argument errors, as in the validator
    two = check_strict(item, [("c", {"x": 1}), ("b", {"x": "1"})], SchemaChecker())
    assert two.category == "wrong_tool" and "call #0" in two.detail  # ... and after a wrong tool
    one = check_strict(item, [("b", {"x": "1"})], SchemaChecker())
    assert one.category == "type_mismatch" and "call #0" in one.detail
