"""Trajectory data management (import, standardise, quality filter, synthesis, augmentation). The
SFT data mixture is tested in tests/test_steps_mixture.py."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from agent_align.errors import UserError
from agent_align.jsonl import write_jsonl
from agent_align.stages.context import RunContext
from agent_align.steps.trajectories import from_openai, from_sharegpt, quality_filter, standardise
from tests.conftest import compose

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "units": {"type": "string", "enum": ["metric", "imperial"]}},
    "required": ["city"]}}}
CALC = {"type": "function", "function": {"name": "calculator", "description": "math", "parameters": {
    "type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}}}

OPENAI = {"id": "o1", "tools": [WEATHER], "messages": [
    {"role": "user", "content": "Weather in Paris and Oslo?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
        {"id": "c2", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "18C"}, {"role": "tool", "tool_call_id": "c2", "content": "9C"},
    {"role": "assistant", "content": "Paris 18C, Oslo 9C."}]}
SHAREGPT = {"id": "s1", "tools": json.dumps([CALC["function"]]), "system": "You are helpful.", "conversations": [
    {"from": "human", "value": "What is 6 * 7?"},
    {"from": "function_call", "value": json.dumps({"name": "calculator", "arguments": {"expression": "6 * 7"}})},
    {"from": "observation", "value": "42"}, {"from": "gpt", "value": "6 * 7 = 42."}]}


def test_openai_import_splits_parallel_calls_and_pairs_each_result():
    t = from_openai(OPENAI, "f:1")
    roles = [m["role"] for m in t["messages"]]
    assert roles == ["user", "assistant", "tool", "assistant", "tool", "assistant"]
    assert json.loads(t["messages"][1]["content"]) == {"tool": "get_weather", "parameters": {"city": "Paris"}}
    assert t["messages"][2]["content"] == "18C" and t["messages"][4]["content"] == "9C"
    assert t["tools"] == [WEATHER]


def test_sharegpt_import_maps_roles_and_parses_tools():
    t = from_sharegpt(SHAREGPT, "f:2")
    assert [m["role"] for m in t["messages"]] == ["system", "user", "assistant", "tool", "assistant"]
    assert json.loads(t["messages"][2]["content"]) == {"tool": "calculator", "parameters": {"expression": "6 * 7"}}
    assert t["tools"][0]["function"]["name"] == "calculator"
    with pytest.raises(UserError, match="unknown ShareGPT role 'bot'"):
        from_sharegpt({"conversations": [{"from": "bot", "value": "x"}]}, "f:3")


def test_quality_filter_drops_with_reasons():
    good, _ = standardise([OPENAI, SHAREGPT], "auto", "in.jsonl")
    bad_call = json.loads(json.dumps(OPENAI))
    bad_call["id"] = "bad"
    bad_call["messages"][1]["tool_calls"][0]["function"]["arguments"] = "{\"city\": 5}"
    no_final = {"id": "nf", "tools": [WEATHER], "messages": OPENAI["messages"][:4]}
    near = json.loads(json.dumps(OPENAI))
    near["id"], near["messages"][-1]["content"] = "near", "Paris 18C, Oslo 9C!"
    long_one = {"id": "long", "tools": [], "messages": [{"role": "user", "content": "x" * 500},
                                                         {"role": "assistant", "content": "ok"}]}
    rows, skipped = standardise([bad_call, no_final, near, long_one, {"weird": 1}], "auto", "in.jsonl")
    kept, report = quality_filter(good + [dict(good[0])] + rows, max_messages=10, max_chars=300, near_duplicate=0.8)
    assert [t["id"] for t in kept] == ["o1", "s1"] and skipped == {"unknown_format": 1}
    assert report["dropped"] == {"duplicate": 1, "invalid_call:type_mismatch": 1, "no_final_answer": 1,
                                 "near_duplicate": 1, "too_long": 1}
    assert report["examples"]["invalid_call:type_mismatch"] == ["bad"]


def write_spec(path):
    import yaml

    path.write_text(yaml.safe_dump({"tools": [WEATHER, CALC], "examples": [
        {"request": "What's the weather in Paris, in metric units?",
         "calls": [{"tool": "get_weather", "parameters": {"city": "Paris", "units": "metric"}}]},
        {"request": "Compute 12 * 4 please.", "calls": [{"tool": "calculator", "parameters": {"expression": "12 * 4"}}]}]}))


def test_synthesis_from_a_task_spec_fills_templates_and_passes_quality(tmp_path):
    from agent_align.steps import synth

    write_spec(tmp_path / "spec.yaml")
    tools, examples = synth.load_spec(str(tmp_path / "spec.yaml"))
    text, slots = synth.template_of(examples[0], {t.name: t for t in tools})
    assert text == "What's the weather in {c0_city}, in {c0_units} units?" and len(slots) == 2
    made = synth.synthesize(tools, examples, 40, seed=0)
    assert len(made) == 40 and made[1]["messages"][-1]["content"] == "The result is 48."  # safe calculator
    for t in made:
        call = json.loads(t["messages"][1]["content"])
        if call["tool"] == "get_weather" and t["messages"][0]["content"].startswith("What's the weather in"):
            assert call["parameters"]["city"] in t["messages"][0]["content"]
    aug = synth.augment(made, ["paraphrase", "shuffle_tools", "distractors"], 2, seed=0)
    kinds = Counter(t["id"].rsplit("-", 1)[-1] for t in aug if t["id"].rsplit("-", 1)[-1] in ("para", "shuf", "dist"))
    assert kinds["para"] == 40 and kinds["shuf"] == 40 and kinds["dist"] == 40
    assert all(len(t["tools"]) == 4 for t in aug if t["id"].endswith("-dist"))
    kept, report = quality_filter(aug, max_messages=24, max_chars=12000, near_duplicate=0.95)
    assert not any(k.startswith("invalid_call") or k == "no_final_answer" for k in report["dropped"])
    assert len(kept) > 100


def test_trajectories_stage_imports_synthesises_and_reports(tmp_path):
    from agent_align.stages.trajectories import run

    write_jsonl(tmp_path / "openai.jsonl", [OPENAI, OPENAI])
    (tmp_path / "share.json").write_text(json.dumps([SHAREGPT]))
    write_spec(tmp_path / "spec.yaml")
    cfg = compose([f"run_dir={tmp_path}", f"trajectories.inputs=[{tmp_path / 'openai.jsonl'},{tmp_path / 'share.json'}]",
                   f"trajectories.spec={tmp_path / 'spec.yaml'}", "trajectories.n_synthetic=10",
                   "trajectories.augment=[shuffle_tools]"])
    report = run(cfg, RunContext(tmp_path))
    assert report["input"] == 23 and report["dropped"]["duplicate"] == 1
    assert report["kept_by_source"][str(tmp_path / "share.json")] == 1 and report["kept_by_source"]["synthetic"] >= 10
    lines = (tmp_path / "trajectories" / "clean.jsonl").read_text().splitlines()
    assert len(lines) == report["kept"] and set(json.loads(lines[0])) >= {"id", "messages", "tools", "source"}
    assert json.loads((tmp_path / "trajectories" / "report.json").read_text())["kept"] == report["kept"]
    with pytest.raises(UserError, match="trajectories.inputs"):
        run(compose([f"run_dir={tmp_path}"]), RunContext(tmp_path))
