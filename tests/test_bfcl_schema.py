"""BFCL function definitions -> JSON Schema and OpenAI tools; BFCL files as the generator's tool library."""

from __future__ import annotations

import pytest
from jsonschema import Draft202012Validator

from agent_align.bfcl.schema import bfcl_function_to_openai, bfcl_parameters_to_json_schema
from agent_align.errors import UserError
from agent_align.tools.library import load_tools_file
from tests.conftest import SHARED, compose

BFCL = SHARED / "bfcl"
needs_data = pytest.mark.skipif(not BFCL.is_dir(),
                                reason=f"BFCL data missing at {BFCL} (CI clones ../shared beside the repo)")

PARAMS = {
    "type": "dict",
    "properties": {
        "budget": {"type": "dict", "description": "range", "optional": True,
                   "properties": {"min": {"type": "float"}, "max": {"type": "float", "maximum": 10.0}}},
        "point": {"type": "tuple", "items": {"type": "integer"}, "description": "x, y"},
        "data": {"type": "any", "description": "anything"},
        "rows": {"type": "array", "items": {"type": "dict", "properties": {"k": {"type": "string", "enum": ["a", "b"]}},
                                            "required": ["k"]}},
        "unit": {"type": "string", "default": "km", "format": "unit-name"},
    },
    "required": ["budget", "point"],
}


def test_types_convert_recursively_and_bfcl_only_keys_are_dropped():
    out = bfcl_parameters_to_json_schema(PARAMS)
    Draft202012Validator.check_schema(out)
    props = out["properties"]
    assert out["type"] == "object" and out["required"] == ["budget", "point"]
    assert props["budget"] == {"type": "object", "description": "range", "properties": {
        "min": {"type": "number"}, "max": {"type": "number", "maximum": 10.0}}}  # "optional" dropped
    assert props["point"] == {"type": "array", "items": {"type": "integer"}, "description": "x, y"}
    assert props["data"] == {"description": "anything"}  # any: no type constraint
    assert props["rows"]["items"] == {"type": "object", "properties": {"k": {"type": "string", "enum": ["a", "b"]}},
                                      "required": ["k"]}
    assert props["unit"] == {"type": "string", "default": "km", "format": "unit-name"}
    assert PARAMS["properties"]["budget"]["type"] == "dict"  # the input is not modified


def test_validates_like_bfcl_types_mean():
    v = Draft202012Validator(bfcl_parameters_to_json_schema(PARAMS))
    ok = {"budget": {"min": 1, "max": 2.5}, "point": [1, 2], "data": [{"any": "thing"}], "rows": [{"k": "a"}]}
    assert not list(v.iter_errors(ok))
    assert list(v.iter_errors({**ok, "point": [1.5, 2]}))
    assert list(v.iter_errors({**ok, "rows": [{"k": "c"}]}))


def test_openai_definition():
    fn = {"name": "math.hypot", "description": "norm", "parameters": PARAMS}
    tool = bfcl_function_to_openai(fn)
    assert tool["type"] == "function" and tool["function"]["name"] == "math.hypot"
    assert tool["function"]["parameters"] == bfcl_parameters_to_json_schema(PARAMS)
    empty = bfcl_function_to_openai({"name": "ping"})
    assert empty["function"]["parameters"] == {"type": "object", "properties": {}}


def test_unknown_type_is_a_user_error_naming_where():
    with pytest.raises(UserError, match=r"unknown type 'HashMap' at parameters\.m"):
        bfcl_parameters_to_json_schema({"type": "dict", "properties": {"m": {"type": "HashMap"}}})


@needs_data
def test_bfcl_function_file_is_a_tool_library():
    tools = load_tools_file(BFCL / "BFCL_v4_simple_python.json")  # JSON Lines under a .json name
    assert len(tools) > 350 and all(t.origin == "bfcl" and t.parameters["type"] == "object" for t in tools)
    assert {"calculate_triangle_area", "math.factorial"} <= {t.name for t in tools}


@needs_data
def test_generator_builds_verified_pairs_from_bfcl_functions():
    from agent_align.data.generator import Generator
    from agent_align.validation.validator import validate_output

    cfg = compose([f"data.tools_file={BFCL / 'BFCL_v4_simple_python.json'}", "data.include_builtin_tools=false", "data.procedural_tools=0",
                   "data.heldout_tools=[]"])
    gen = Generator(cfg.data, seed=0)
    rows = list(gen.rows("train", 60))
    assert len(rows) >= 50 and not gen.pools.skipped
    names = {t.name for t in load_tools_file(BFCL / "BFCL_v4_simple_python.json")}
    for r in rows:
        assert r["tool"] in names
        assert validate_output(r["chosen"], r["schema"]).passed
        assert validate_output(r["rejected"], r["schema"]).category is not None
