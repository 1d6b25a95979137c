"""Untrusted content never escapes as a crash or an I/O: no `$ref` is ever fetched or read while scoring,
any model output ends as a verdict, and property tests (hypothesis) for the readers and the scorer.
The bad-input table (one `error:` line, exit 2) is tests/test_bad_inputs.py."""

from __future__ import annotations

import builtins
import io
import json
import socket
import urllib.request

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_align.__main__ import cli
from agent_align.errors import UserError
from agent_align.jsonl import MAX_DEPTH, read_json_or_yaml, read_jsonl, write_json
from agent_align.validation.validator import (
    SchemaChecker,
    Verdict,
    is_valid_schema,
    validate_output,
)
from tests.test_bad_inputs import DATA, DEEP, GOOD_CALL, SCHEMA, jl

# --- $ref: never a file read, never a socket ----------------------------------------------------------

REMOTE = [{"$ref": "file:///etc/passwd"}, {"$ref": "http://127.0.0.1:9/schema.json"},
          {"$id": "file:///etc/", "$ref": "passwd"}, {"type": "object", "properties": {"a": {"$ref": "https://x.org/a"}}},
          {"$defs": {"a": {"$ref": "file:///etc/hosts"}}, "$ref": "#/$defs/a"}, {"$dynamicRef": "http://x/y#meta"}]


@pytest.fixture
def no_io(monkeypatch):
    """Any file open or network connection fails the test."""
    def refuse(*a, **k):
        raise AssertionError(f"I/O attempted during scoring: {a[:1]}")
    for target, attr in ((builtins, "open"), (io, "open"), (urllib.request, "urlopen"), (socket.socket, "connect")):
        monkeypatch.setattr(target, attr, refuse)


def test_no_ref_is_ever_fetched_when_scoring(no_io):
    checker = SchemaChecker()
    for schema in REMOTE:
        assert "outside the schema" in is_valid_schema(schema)
        v = validate_output('{"a": 1}', schema, "json", checker)
        assert not v.passed and v.category == "other_schema_error" and "cannot be resolved" in v.detail, v
        for output in (GOOD_CALL, "[]", "{}"):  # a ref the output never reaches is not followed at all
            assert isinstance(validate_output(output, schema, "json", checker), Verdict)
    local = {"$defs": {"s": {"type": "string"}}, "type": "object", "properties": {"a": {"$ref": "#/$defs/s"}}}
    assert validate_output('{"a": "x"}', local, "json", checker).passed
    assert validate_output('{"a": 1}', local, "json", checker).category == "type_mismatch"


def test_score_stage_with_remote_refs_reads_nothing_but_its_files(tmp_path, monkeypatch):
    """The whole stage: its own two files are read, no other file and no socket."""
    from agent_align.stages import score as score_stage

    data = tmp_path / "d.jsonl"
    data.write_text(jl(*({"id": str(i), "schema": s} for i, s in enumerate(REMOTE))))
    preds = tmp_path / "p.jsonl"
    preds.write_text(jl(*({"id": str(i), "output": '{"a": 1}'} for i in range(len(REMOTE)))))
    rows = read_jsonl(data)
    with pytest.raises(UserError, match=":1: invalid JSON Schema"):
        score_stage.check_schemas(rows, str(data))
    seen = []
    real_open = builtins.open
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("urlopen"))
    monkeypatch.setattr(socket.socket, "connect", lambda *a, **k: pytest.fail("socket"))
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: seen.append(str(f)) or real_open(f, *a, **k))
    verdicts = score_stage.score_rows([(r, {"output": '{"a": 1}'}) for r in rows], "json")
    assert all(not v.passed and v.category == "other_schema_error" for v in verdicts)
    assert seen == []


def test_bfcl_conversion_drops_refs():
    from agent_align.bfcl.schema import bfcl_function_to_openai

    tool = bfcl_function_to_openai({"name": "f", "description": "", "parameters": {
        "type": "dict", "properties": {"a": {"$ref": "file:///etc/passwd", "type": "string"}}}})
    assert "$ref" not in json.dumps(tool)


# --- model outputs always end as a verdict ------------------------------------------------------------

@pytest.mark.parametrize("output", [DEEP, "]" * 100_000, "[" * 500 + "]" * 500, "{\"a\":" * 50_000 + "1" + "}" * 50_000,
                                    "x" * 1_000_000, "```json\n" + DEEP + "\n```", 12, None, ["a"]])
@pytest.mark.parametrize("fmt", ["json", "react"])
def test_any_output_is_a_verdict(output, fmt):
    text = output if not isinstance(output, str) or fmt == "json" else f"Thought: t\nAction: ```json\n{output}\n```"
    v = validate_output(text, SCHEMA, fmt)
    assert not v.passed and v.category == "json_error" and v.detail


def test_deep_output_in_stage_score_is_one_json_error_verdict(tmp_path, capsys):
    (tmp_path / "d.jsonl").write_text(DATA)
    (tmp_path / "p.jsonl").write_text(jl({"id": "a", "output": GOOD_CALL}, {"id": "b", "output": "[" * 30_000}))
    code = cli(["stage=score", f"score.data={tmp_path}/d.jsonl", f"score.predictions={tmp_path}/p.jsonl",
                f"run_dir={tmp_path}/run"])
    assert code == 0, capsys.readouterr().err
    verdicts = read_jsonl(tmp_path / "run" / "verdicts.jsonl")
    assert [v["passed"] for v in verdicts] == [True, False] and verdicts[1]["category"] == "json_error"
    assert "nested deeper" in verdicts[1]["detail"]


# --- property tests: the readers and the scorer never crash --------------------------------------------

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
                           max_leaves=30)


def _read_or_user_error(fn, *a):
    try:
        return fn(*a)
    except UserError as exc:
        assert "\n" not in str(exc) and str(exc)
        return None


@FAST
@given(data=st.binary(max_size=400))
def test_random_bytes_end_in_rows_or_a_user_error(tmp_path, data):
    for name in ("f.jsonl", "f.json", "f.yaml"):
        p = tmp_path / name
        p.write_bytes(data)
        _read_or_user_error(read_jsonl, p) if name.endswith("l") else None
        _read_or_user_error(read_json_or_yaml, p, "data.tools_file")


@FAST
@given(value=json_values)
def test_random_json_rows_round_trip_or_fail_cleanly(tmp_path, value):
    p = tmp_path / "r.jsonl"
    p.write_text(json.dumps(value, ensure_ascii=False) + "\n", encoding="utf-8", errors="surrogatepass")
    rows = _read_or_user_error(read_jsonl, p)
    if rows is not None:
        write_json(tmp_path / "back.json", rows)  # lone surrogates included: written back, never a crash


@FAST
@given(depth=st.integers(1, 3000), opener=st.sampled_from(["[", "{\"a\":", "[{\"b\":"]), closed=st.booleans())
def test_random_nesting_is_a_verdict_and_a_clean_error(tmp_path, depth, opener, closed):
    closer = {"[": "]", "{\"a\":": "}", "[{\"b\":": "}]"}[opener]
    text = opener * depth + ("1" + closer * depth if closed else "")
    v = validate_output(text, SCHEMA)
    assert isinstance(v, Verdict) and not v.passed
    p = tmp_path / "deep.jsonl"
    p.write_text('{"output": ' + text + "}\n")
    rows = _read_or_user_error(read_jsonl, p)
    assert rows is None or depth < MAX_DEPTH


@FAST
@given(output=st.one_of(st.text(max_size=300), json_values.map(json.dumps)), schema=json_values,
       fmt=st.sampled_from(["json", "react"]))
def test_random_outputs_and_schemas_end_in_a_verdict(output, schema, fmt):
    checker = SchemaChecker()
    for s in (SCHEMA, schema):
        if s is schema and is_valid_schema(s):
            continue  # an invalid schema is refused at load time, naming file:line
        v = validate_output(output, s, fmt, checker)
        assert isinstance(v, Verdict) and (v.passed or v.category)
