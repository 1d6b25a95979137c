"""Decoding model answers into calls: every accepted syntax, and what is refused."""

from __future__ import annotations

import json

import pytest

from agent_align.bfcl.parse import as_json, parse_calls

CALL = [("weather.get", {"city": "Paris", "days": 3})]
TWO = [("a", {"x": 1}), ("b.c", {"y": [1, 2], "z": {"k": None}})]


@pytest.mark.parametrize("output,expected", [
    ('{"tool": "weather.get", "parameters": {"city": "Paris", "days": 3}}', CALL),
    ('```json\n{"tool": "weather.get", "parameters": {"city": "Paris", "days": 3}}\n```', CALL),
    ('[{"tool": "a", "parameters": {"x": 1}}, {"tool": "b.c", "parameters": {"y": [1, 2], "z": {"k": null}}}]', TWO),
    ('{"name": "weather.get", "arguments": {"city": "Paris", "days": 3}}', CALL),
    ('{"name": "weather.get", "arguments": "{\\"city\\": \\"Paris\\", \\"days\\": 3}"}', CALL),
    (json.dumps([{"id": "call_1", "type": "function",
                  "function": {"name": "weather.get", "arguments": '{"city": "Paris", "days": 3}'}}]), CALL),
    (json.dumps({"role": "assistant", "content": None, "tool_calls": [
        {"function": {"name": "a", "arguments": '{"x": 1}'}},
        {"function": {"name": "b.c", "arguments": {"y": [1, 2], "z": {"k": None}}}}]}), TWO),
    ("[weather.get(city='Paris', days=3)]", CALL),
    ("weather.get(city=\"Paris\", days=3)", CALL),
    ("[a(x=1), b.c(y=[1, 2], z={'k': None})]", TWO),
    ("a(x=1)\nb.c(y=(1, 2), z={'k': None})", TWO),  # one call a line; tuples become lists
    ("```python\n[a(x=-1.5e3, y=True, z='it''s')]\n```", [("a", {"x": -1500.0, "y": True, "z": "its"})]),
    ("[fit(x=data['sales'], model=my_model, cfg=np.float32)]",
     [("fit", {"x": "data['sales']", "model": "my_model", "cfg": "np.float32"})]),  # variables as BFCL spells them
    ([{"tool": "a", "parameters": {"x": 1}}], [("a", {"x": 1})]),  # already-decoded JSON in a prediction file
])
def test_accepted_syntaxes(output, expected):
    calls, why = parse_calls(output)
    assert why == "" and calls == expected


def test_react_format_reads_the_action_block():
    text = ('Thought: need weather.\nAction:\n```json\n'
            '{"tool": "weather.get", "parameters": {"city": "Paris", "days": 3}}\n```')
    assert parse_calls(text, "react") == (CALL, "")
    assert parse_calls('{"tool": "weather.get", "parameters": {}}', "react")[0] is None


@pytest.mark.parametrize("output,reason", [
    ("Sure! The weather in Paris is sunny.", "neither JSON nor Python"),
    ("[]", "empty list"),
    ('{"city": "Paris"}', "no 'tool' or 'name'"),
    ('{"name": "f", "arguments": "{not json"}', "not valid JSON"),
    ('{"name": "f", "arguments": [1]}', "not an object"),
    ("42", "not a call object"),
    ("f(1, 2)", "positional"),
    ("f(x=1 + 2)", "not a literal"),
    ("f(x=__import__('os').system('touch /tmp/bfcl_pwned'))", "not a literal"),
    ("f(**kw)", "kwargs"),
    ("f(x={1: 'a'})", "not a string"),
    ("f(x=1j)", "complex"),
    ("f(x=1e999)", "not a JSON number"),
    ("x = f(a=1)", "other Python statements"),
    ("[f(a=1), 3]", "not a function call"),
    ("(lambda: 1)(a=1)", "not a (dotted) function name"),
    ('{"tool": "f", "parameters": {"x": NaN}}', "invalid JSON"),
    ('{"tool": "f", "parameters": {"x": 1}', "invalid JSON"),
])
def test_refused_answers_give_a_reason(output, reason, tmp_path):
    calls, why = parse_calls(output)
    assert calls is None and reason in why


def test_python_answers_are_never_evaluated(tmp_path):
    target = tmp_path / "pwned"
    calls, why = parse_calls(f"[f(x=open({str(target)!r}, 'w').write('x'))]")
    assert calls is None and not target.exists()


def test_as_json_round_trips():
    assert parse_calls(as_json(TWO)) == (TWO, "")
