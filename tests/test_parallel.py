"""Parallel calls: the answer schema, order-insensitive scoring with missing/extra calls, the generator's
parallel prompts and their negatives, and the evaluate stage's `parallel` split."""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter
from types import SimpleNamespace

import pytest
from jsonschema import Draft202012Validator

from agent_align.data.generator import Generator
from agent_align.data.negatives import EXPECTED_CATEGORY, PARALLEL_TYPES
from agent_align.tools.library import Tool, call_schema
from agent_align.validation import CATEGORIES, PRECEDENCE, validate_output
from agent_align.validation.parallel import expected_calls, parallel_schema

WEATHER = Tool("get_weather", "", {"type": "object", "properties": {
    "city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]})
TASK = Tool("create_task", "", {"type": "object", "properties": {
    "title": {"type": "string"}, "priority": {"type": "integer"}}, "required": ["title"]})
SCHEMA = parallel_schema([call_schema(WEATHER), call_schema(WEATHER), call_schema(TASK)])
CALLS = [{"tool": "get_weather", "parameters": {"city": "Oslo"}},
         {"tool": "get_weather", "parameters": {"city": "Lima", "unit": "celsius"}},
         {"tool": "create_task", "parameters": {"title": "Pack", "priority": 2}}]


def verdict(answer, fmt: str = "json"):
    text = answer if isinstance(answer, str) else json.dumps(answer)
    if fmt == "react":
        text = f"Thought: three calls.\nAction:\n```json\n{text}\n```"
    return validate_output(text, SCHEMA, fmt)


def test_the_answer_schema_is_plain_json_schema_and_round_trips():
    Draft202012Validator.check_schema(SCHEMA)
    assert [n for n, _ in expected_calls(SCHEMA)] == ["get_weather", "get_weather", "create_task"]
    assert expected_calls(call_schema(WEATHER)) is None  # single-call schemas take the old path
    assert expected_calls({"type": "array", "items": {"type": "string"}}) is None


@pytest.mark.parametrize("fmt", ["json", "react"])
def test_every_order_passes(fmt):
    for perm in itertools.permutations(CALLS):
        assert verdict(list(perm), fmt).passed, perm


@pytest.mark.parametrize("answer,category", [
    (CALLS[:2], "missing_call"),
    (CALLS[0], "missing_call"),  # a bare object: one call of three
    (CALLS + [{"tool": "create_task", "parameters": {"title": "More"}}], "extra_call"),
    (CALLS + [{"tool": "send_email", "parameters": {}}], "extra_call"),
    (CALLS[:2] + [{"tool": "book_hotel", "parameters": {"title": "Pack"}}], "wrong_tool"),
    ([CALLS[0], CALLS[0] | {"tool": "create_task"}, CALLS[2]], "wrong_tool"),  # a repeat in place of another call
    (CALLS[:2] + [{"parameters": {"title": "Pack"}}], "missing_required"),  # no tool key: as a single call
    (CALLS[:2] + [{"tool": "create_task", "parameters": {}}], "missing_required"),
    ([CALLS[0], CALLS[1] | {"parameters": {"city": "Lima", "days": 3}}, CALLS[2]], "hallucinated_param"),
    (CALLS[:2] + [{"tool": "create_task", "parameters": {"title": "Pack", "priority": "2"}}], "type_mismatch"),
    ([CALLS[0] | {"parameters": {"city": "Oslo", "unit": "kelvin"}}] + CALLS[1:], "enum_violation"),
    (CALLS[:2] + ["create_task"], "json_error"),
    ("[" + json.dumps(CALLS)[1:-1] + ",]", "json_error"),
    ("I will check the weather.", "json_error"),
])
def test_each_failure_has_its_category(answer, category):
    v = verdict(answer)
    assert (v.passed, v.category) == (False, category), v


def test_parallel_precedence():
    """Structure before arguments: a wrong tool, then a missing call, then an extra call, then argument errors."""
    assert PRECEDENCE["json_error"] < PRECEDENCE["wrong_tool"] < PRECEDENCE["missing_call"] \
        < PRECEDENCE["extra_call"] < PRECEDENCE["missing_required"]
    bad_args = {"tool": "get_weather", "parameters": {"unit": "kelvin"}}
    assert verdict([bad_args, CALLS[2]]).category == "missing_call"
    assert verdict([bad_args] + CALLS).category == "extra_call"
    assert verdict([{"tool": "nope", "parameters": {}}, CALLS[0]]).category == "wrong_tool"  # and one missing
    v = verdict([CALLS[0], bad_args, CALLS[2]])
    assert v.category == "missing_required" and "call #1 get_weather" in v.detail


def test_pass_fail_agrees_with_jsonschema_on_generated_rows(cfg_factory):
    """Differential: for chosen, rejected and shuffled answers of generated parallel rows, our verdict
    passes exactly when jsonschema accepts the answer as the schema's array."""
    gen = Generator(cfg_factory("data.procedural_tools=50").data, 0)
    rng = random.Random(0)
    checked = Counter()
    for i in range(150):
        for r in gen.make_rows("parallel", i) + [x for x in gen.make_rows("train", i) if "calls" in x]:
            ref = Draft202012Validator(r["schema"])
            answers = [r["chosen"], r["rejected"]]
            calls = json.loads(r["chosen"])
            rng.shuffle(calls)
            answers.append(json.dumps(calls))
            for text in answers:
                try:
                    obj = json.loads(text)
                except ValueError:
                    continue  # json_error on both sides
                got = validate_output(text, r["schema"])
                assert got.passed == ref.is_valid(obj), (text, got)
                checked[got.passed] += 1
    assert checked[True] > 100 and checked[False] > 100


def test_single_call_rows_are_unchanged_by_parallel_prompts(cfg_factory):
    """The parallel choice has a random stream of its own, and single-call rows never draw the parallel
    negative types: with parallel prompts on, every single-call row is the row it was without them."""
    off = Generator(cfg_factory("data.parallel_fraction=0", "data.negative_weights.missing_call=0",
                                "data.negative_weights.extra_call=0", "data.negative_weights.swapped_args=0").data, 0)
    on = Generator(cfg_factory("data.parallel_fraction=0.5").data, 0)
    n_single = 0
    for i in range(120):
        if on.is_parallel("train", i):
            assert not off.make_rows("train", i)[0].get("calls")
        else:
            assert on.make_rows("train", i) == off.make_rows("train", i)
            n_single += 1
    assert 30 < n_single < 90


def test_parallel_rows_are_deterministic_by_seed(cfg_factory):
    cfg = cfg_factory("data.procedural_tools=20")
    a = [r for i in range(40) for r in Generator(cfg.data, 0).make_rows("parallel", i)]
    b = [r for i in range(40) for r in Generator(cfg.data, 0).make_rows("parallel", i)]
    c = [r for i in range(40) for r in Generator(cfg.data, 1).make_rows("parallel", i)]
    assert a == b and a != c


@pytest.mark.parametrize("fmt", ["json", "react"])
def test_parallel_negatives_fail_with_their_labels(cfg_factory, fmt):
    cfg = cfg_factory(f"data.format={fmt}", "data.negatives_per_prompt=3", "data.procedural_tools=20")
    gen = Generator(cfg.data, 0)
    rows = [r for i in range(200) for r in gen.make_rows("train", i) if "calls" in r]
    types = Counter(r["negative_type"] for r in rows)
    assert set(types) == set(EXPECTED_CATEGORY), types  # the parallel types and every single-call type
    assert min(types[t] for t in PARALLEL_TYPES) >= 5
    for r in rows:
        assert 2 <= len(r["calls"]) <= 3 and r["tool"] == r["calls"][0]
        offered = {t["function"]["name"] for t in r["tools"]}
        assert set(r["calls"]) <= offered
        assert validate_output(r["chosen"], r["schema"], fmt).passed
        v = validate_output(r["rejected"], r["schema"], fmt)
        assert not v.passed and v.category == EXPECTED_CATEGORY[r["negative_type"]], (r["negative_type"], v)
        if r["negative_type"] == "swapped_args":  # same tools, same values, bound to the other tool
            chosen, rejected = json.loads(r["chosen"].split("```json\n")[-1].rstrip("`\n")), \
                json.loads(r["rejected"].split("```json\n")[-1].rstrip("`\n"))
            assert [c["tool"] for c in chosen] == [c["tool"] for c in rejected]
            assert sorted(map(json.dumps, (c["parameters"] for c in chosen))) == \
                sorted(map(json.dumps, (c["parameters"] for c in rejected)))


def test_parallel_eval_split_uses_seen_tools_and_keeps_every_value(cfg_factory):
    cfg = cfg_factory()
    gen = Generator(cfg.data, 0)
    rows = [r for i in range(60) for r in gen.make_rows("parallel", i)]
    assert len(rows) == 60 and {r["split"] for r in rows} == {"parallel"}
    heldout = set(cfg.data.heldout_tools)
    assert not any(set(r["calls"]) & heldout for r in rows)
    shapes = Counter((len(r["calls"]), len(set(r["calls"])) == 1) for r in rows)
    assert {n for n, _ in shapes} == {2, 3} and {same for _, same in shapes} == {True, False}, shapes
    for r in rows:
        for call in json.loads(r["chosen"]):
            for v in call["parameters"].values():
                if isinstance(v, str) and len(v) > 3:
                    assert v in r["prompt"], (v, r["prompt"])


def test_system_prompts_tell_the_model_about_lists():
    from agent_align.data.formats import SYSTEM_PROMPTS

    assert all("JSON list" in p for p in SYSTEM_PROMPTS.values())


def test_evaluate_reports_the_parallel_split_and_gives_it_more_tokens(cfg_factory, monkeypatch):
    from agent_align.generation import batched
    from agent_align.stages import evaluate

    cfg = cfg_factory("evaluate.max_new_tokens=40")
    gen = Generator(cfg.data, 0)
    rows = [r for i in range(6) for r in gen.make_rows("eval", i)] + \
        [r for i in range(4) for r in gen.make_rows("parallel", i)]
    budgets = {}

    def fake_generate_ids(model, tok, ids, max_new_tokens, **kw):  # one limit, or one per prompt (one queue)
        for b in [max_new_tokens] * len(ids) if isinstance(max_new_tokens, int) else max_new_tokens:
            budgets[b] = budgets.get(b, 0) + 1
        return [[[i[0]]] for i in ids]

    monkeypatch.setattr(batched, "generate_ids", fake_generate_ids)  # generate_by_budget's decoder
    texts = [r["chosen"] for r in rows]  # a perfect model: "token" k decodes to row k's chosen answer
    row_index = iter(range(len(rows)))
    enc = SimpleNamespace(prompt_ids=lambda chat: [next(row_index)])
    tok = SimpleNamespace(decode=lambda seq, skip_special_tokens: texts[seq[0]])
    outputs = evaluate.predict(cfg, None, tok, enc, rows, "test")
    assert outputs == texts
    want = Counter(40 * len(r.get("calls", [1])) for r in rows)
    assert budgets == dict(want) and set(budgets) >= {40, 80}
    outputs[-1] = json.dumps(json.loads(rows[-1]["chosen"])[:1])  # one parallel answer misses a call
    summary, verdicts = evaluate.score(cfg, rows, outputs)
    assert set(summary["by_split"]) == {"seen", "unseen", "parallel"}
    par = summary["by_split"]["parallel"]
    assert par["n"] == 4 and par["passed"] == 3 and par["failures"]["missing_call"] == 1
    assert set(summary["failures"]) == set(CATEGORIES)
    assert sum(s["n"] for s in summary["by_tool"].values()) == 6  # parallel rows are not per tool


@pytest.mark.parametrize("key", ["data.parallel_fraction", "data.parallel_eval_share"])
def test_shares_outside_0_1_are_config_errors(key):
    from agent_align.checks import check_config
    from tests.conftest import compose

    with pytest.raises(Exception) as exc:
        check_config(compose([f"{key}=1.5"]))
    assert key in str(exc.value) and "[0, 1]" in str(exc.value)


def test_arity_mirrors_pair_each_one_call_rejection_of_a_list_request_with_a_wrapped_single_call(cfg_factory):
    """On-policy DPO: a parallel request whose sample made one call teaches "[" over "{"; its mirror, a
    one-call request whose rejected wraps the correct call in a list, teaches the converse."""
    from agent_align.train.on_policy import _as_list, with_arity_mirrors
    from agent_align.validation.validator import SchemaChecker

    cfg = cfg_factory()
    gen = Generator(cfg.data, 0)
    singles = [gen.make_rows("eval", i)[0] for i in range(6)]
    parallel = [gen.make_rows("parallel", i)[0] for i in range(3)]
    one_call = json.dumps(json.loads(parallel[0]["chosen"])[0])  # a list request answered with one bare call
    too_many = json.dumps(json.loads(parallel[1]["chosen"]) * 2)  # a list, wrong only in its count
    pairs = [dict(parallel[0], rejected=one_call, source="on_policy"),
             dict(parallel[1], rejected=too_many, source="on_policy"),
             dict(singles[0], rejected=singles[0]["rejected"], source="on_policy")]
    out = with_arity_mirrors(pairs, singles + parallel, "json", SchemaChecker(), random.Random(0))
    assert [p["source"] for p in out] == ["on_policy", "arity_mirror", "on_policy", "on_policy"]
    mirror = out[1]
    assert len(mirror.get("calls") or [None]) == 1 and json.loads(mirror["rejected"]) == [json.loads(mirror["chosen"])]
    v = validate_output(mirror["rejected"], mirror["schema"], "json")
    assert not v.passed and v.category == mirror["negative_type"] == "json_error"
    react = 'Thought: t\nAction:\n```json\n{"tool": "a", "parameters": {}}\n```'
    assert _as_list(react, "react") == 'Thought: t\nAction:\n```json\n[{"tool": "a", "parameters": {}}]\n```'
