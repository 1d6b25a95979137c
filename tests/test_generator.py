"""The generator: deterministic, verified, every negative type, seen/unseen split, user tools."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from agent_align.data.generator import Generator
from agent_align.data.negatives import EXPECTED_CATEGORY
from agent_align.errors import UserError
from agent_align.stages.context import RunContext
from agent_align.stages.generate import run as generate
from agent_align.tools.library import call_schema, load_builtin_tools
from agent_align.validation import validate_output


def _run(cfg, tmp_path):
    return generate(cfg, RunContext(run_dir=tmp_path))


def test_builtin_library_covers_the_schema_features():
    tools = load_builtin_tools()
    assert len(tools) >= 15
    blob = json.dumps([t.parameters for t in tools])
    for kw in ['"string"', '"integer"', '"number"', '"boolean"', '"array"', '"object"', '"enum"', '"minimum"',
               '"maximum"', '"pattern"', '"minItems"', '"items"', '"required"']:
        assert kw in blob, kw
    assert any(set(t.properties) - set(t.required) for t in tools)  # optional parameters exist
    for t in tools:
        assert len(t.templates) >= 5, t.name
        s = call_schema(t)
        assert s["additionalProperties"] is False and s["properties"]["parameters"]["additionalProperties"] is False
        assert s["properties"]["tool"]["const"] == t.name


@pytest.mark.parametrize("fmt", ["json", "react"])
def test_rows_are_verified_and_cover_all_negative_types(cfg_factory, tmp_path, fmt):
    cfg = cfg_factory(f"data.format={fmt}", "data.n_train=300", "data.n_eval=40", "data.negatives_per_prompt=2")
    res = _run(cfg, tmp_path)
    rows = [json.loads(line) for line in open(res["train_path"])]
    assert len(rows) == 600  # two pairs per prompt
    types = Counter(r["negative_type"] for r in rows)
    assert set(types) == set(EXPECTED_CATEGORY), types
    for r in rows:
        assert {"id", "prompt", "chosen", "rejected", "schema", "tool", "negative_type", "tools"} <= set(r)
        assert validate_output(r["chosen"], r["schema"], fmt).passed
        v = validate_output(r["rejected"], r["schema"], fmt)
        assert not v.passed and v.category == EXPECTED_CATEGORY[r["negative_type"]]
        assert r["tool"] in [t["function"]["name"] for t in r["tools"]]
        if fmt == "react":
            assert r["chosen"].startswith("Thought:") and "Action:\n```json" in r["chosen"]
    assert 0.10 < sum("calls" in r for r in rows) / len(rows) < 0.20  # data.parallel_fraction 0.15
    ev = [json.loads(line) for line in open(res["eval_path"])]
    assert len(ev) == 45 and Counter(r["split"] for r in ev) == {"seen": 20, "unseen": 20, "parallel": 5}
    heldout = set(cfg.data.heldout_tools)
    assert all((r["tool"] in heldout) == (r["split"] == "unseen") for r in ev)
    assert not any(r["tool"] in heldout for r in rows)  # held-out tools never trained on


def test_same_seed_gives_byte_identical_files(cfg_factory, tmp_path):
    a = _run(cfg_factory("data.n_train=200", "data.procedural_tools=20"), tmp_path / "a")
    b = _run(cfg_factory("data.n_train=200", "data.procedural_tools=20"), tmp_path / "b")
    c = _run(cfg_factory("data.n_train=200", "data.procedural_tools=20", "seed=1"), tmp_path / "c")
    for key in ("train_path", "eval_path"):
        assert open(a[key], "rb").read() == open(b[key], "rb").read()
    assert open(a["train_path"], "rb").read() != open(c["train_path"], "rb").read()


def test_negative_weights_and_distractors(cfg_factory):
    cfg = cfg_factory("data.n_train=200", "data.distractor_tools=0",
                      "data.negative_weights={type_mismatch: 0, enum_violation: 0, hallucinated_param: 0, "
                      "missing_required: 0, wrong_tool: 0, json_error: 1, unstructured: 0, missing_call: 0, "
                      "extra_call: 0, swapped_args: 0}")
    gen = Generator(cfg.data, 0)
    rows = list(gen.rows("train", 50))
    assert {r["negative_type"] for r in rows} == {"json_error"}
    assert any("calls" in r for r in rows)
    assert all(len(r["tools"]) == len(set(r.get("calls", [r["tool"]]))) for r in rows)  # only the called tools


def test_values_are_copied_into_requests(cfg_factory):
    gen = Generator(cfg_factory("data.n_train=10").data, 0)
    for i in range(100):
        for r in gen.make_rows("train", i):
            calls = json.loads(r["chosen"])
            for v in [v for c in (calls if isinstance(calls, list) else [calls]) for v in c["parameters"].values()]:
                if isinstance(v, str) and len(v) > 3:
                    assert v in r["prompt"], (v, r["prompt"])


def test_user_tools_file(cfg_factory, tmp_path):
    tools = [{"type": "function", "function": {"name": "open_ticket", "description": "Open a ticket.",
              "parameters": {"type": "object", "properties": {
                  "summary": {"type": "string"}, "severity": {"type": "integer", "minimum": 1, "maximum": 4}},
                  "required": ["summary", "severity"]}}}]
    path = tmp_path / "tools.yaml"
    import yaml

    path.write_text(yaml.safe_dump(tools))
    cfg = cfg_factory(f"data.tools_file={path}", "data.include_builtin_tools=false", "data.heldout_tools=[]",
                      "data.procedural_tools=0",
                      "data.n_train=30")
    rows = list(Generator(cfg.data, 0).rows("train", 30))
    assert rows and {r["tool"] for r in rows} == {"open_ticket"}


@pytest.mark.parametrize("content,needle", [
    ('[{"type": "function", "function": {"name": "bad name!", "parameters": {"type": "object"}}}]', "not a valid identifier"),
    ('[{"type": "function", "function": {"name": "t", "parameters": {"type": "object", "properties": {"a": {"type": "strng"}}}}}]',
     "invalid JSON Schema"),
    ('[{"type": "function", "function": {"name": "t", "parameters": {"type": "object", "properties": {}, "required": ["x"]}}}]',
     "not declared"),
    ('{"oops": 1', "malformed JSON"),
    ("", "empty"),
])
def test_bad_tools_files_fail_with_one_line(cfg_factory, tmp_path, content, needle):
    path = tmp_path / "tools.json"
    path.write_text(content)
    cfg = cfg_factory(f"data.tools_file={path}")
    with pytest.raises(UserError) as exc:
        Generator(cfg.data, 0)
    assert needle in str(exc.value) and "\n" not in str(exc.value) and str(path) in str(exc.value)


def test_unknown_heldout_tool_is_a_config_error(cfg_factory):
    with pytest.raises(UserError, match="data.heldout_tools"):
        Generator(cfg_factory("data.heldout_tools=[no_such_tool]").data, 0)


def test_procedural_tools_are_deterministic_and_valid(cfg_factory):
    from agent_align.tools.procedural import procedural_tools
    from agent_align.validation.validator import is_valid_schema

    a, b = procedural_tools(50, 3), procedural_tools(50, 3)
    assert [t.name for t in a] == [t.name for t in b] and len({t.name for t in a}) == 50
    assert all(not is_valid_schema(t.parameters) for t in a)


def test_renamed_tools_keep_the_natural_request_and_change_the_schema(cfg_factory):
    from agent_align.tools.library import load_builtin_tools
    from agent_align.tools.procedural import renamed

    import random

    tool = next(t for t in load_builtin_tools() if t.name == "create_calendar_event")
    new, mapping = renamed(tool, random.Random(0))
    assert new.name != tool.name and set(mapping) == set(tool.properties)
    assert list(new.properties) == [mapping[k] for k in tool.properties]  # order kept, so calls stay in order
    assert new.required == [mapping[k] for k in tool.required]
    gen = Generator(cfg_factory("data.rename_fraction=1.0", "data.procedural_tools=0").data, 0)
    builtin = {t.name for t in gen.pools.all}
    rows = [r for i in range(40) for r in gen.make_rows("train", i)]
    assert rows and all(r["tool"] not in builtin for r in rows)  # every train row renamed, every one verified
    assert all(r["tool"] in [t["function"]["name"] for t in r["tools"]] for r in rows)
    evals = [r for i in range(20) for r in gen.make_rows("eval", i)]
    assert all(r["tool"] in builtin for r in evals)  # evaluation is never renamed
