"""Step splitting per format, the safe calculator, the verifier scorer, the LM judge's cache and
its OpenAI-compatible backend, and Step-DPO / best-worst pair construction."""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import SimpleNamespace

import pytest

from agent_align.steps.calculator import CalcError, calculate, check_equations
from agent_align.steps.split import detect_format, split_steps, step_texts

REACT = ("Thought: I need the calculator.\nAction:\n```json\n{\"tool\": \"calculator\", \"parameters\": "
         "{\"expression\": \"2+3\"}}\n```\nObservation: 5\nThought: Done.\nFinal Answer: 5")
CALC_TOOL = {"type": "function", "function": {"name": "calculator", "description": "math", "parameters": {
    "type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}}}
SEARCH_TOOL = {"type": "function", "function": {"name": "web_search", "description": "search", "parameters": {
    "type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}}


def scorer_cfg(**kw):
    base = dict(name="verifier", unverifiable_score=1.0, backend="hf", model_path=None, base_url=None,
                api_model=None, api_key_env="TEST_JUDGE_KEY", batch_size=2, max_new_tokens=4, timeout_s=5.0,
                retries=0, cache_path=None)
    return SimpleNamespace(**{**base, **kw})


# -- splitting --------------------------------------------------------------------------------------
def test_react_steps_are_thoughts_and_actions_and_observations_belong_to_none():
    segs = split_steps(REACT, "react")
    assert [s.kind for s in segs] == ["step", "step", "observation", "step", "step"]
    assert "".join(s.text for s in segs) == REACT  # segments cover the text end to end
    texts = step_texts(REACT, "react")
    assert texts[0] == "Thought: I need the calculator." and texts[1].startswith("Action:\n```json")
    assert texts[3] == "Final Answer: 5" and not any("Observation" in t for t in texts)


def test_react_markers_inside_a_fenced_call_do_not_split():
    text = 'Thought: x\nAction:\n```json\n{"tool": "t", "parameters": {"q": "a\\nThought: b"}}\n```'
    assert len(step_texts(text, "react")) == 2


def test_free_text_splits_at_step_markers_else_lines():
    marked = "Let me see.\nStep 1: 2 + 3 = 5\nand more\nStep 2: 5 * 2 = 10\n"
    assert step_texts(marked, "text") == ["Let me see.\nStep 1: 2 + 3 = 5\nand more", "Step 2: 5 * 2 = 10"]
    assert step_texts("first\n\nsecond\nthird", "text") == ["first", "second", "third"]


def test_trajectory_steps_are_assistant_turns():
    msgs = [{"role": "assistant", "content": None, "tool_calls": [
        {"type": "function", "function": {"name": "calculator", "arguments": "{\"expression\": \"2+3\"}"}}]},
        {"role": "tool", "content": "5"}, {"role": "assistant", "content": "The answer is 5."}]
    segs = split_steps(msgs, "react")  # a message list is a trajectory whatever the format says
    assert [s.kind for s in segs] == ["step", "observation", "step"]
    assert json.loads(segs[0].text) == {"tool": "calculator", "parameters": {"expression": "2+3"}}
    assert detect_format(msgs) == "trajectory" and detect_format(REACT) == "react"
    assert detect_format("Step 1: x") == "text" and detect_format('{"tool": 1}') == "json"


def test_json_output_is_one_step_and_unknown_format_is_named():
    assert step_texts('{"tool": "x", "parameters": {}}', "json") == ['{"tool": "x", "parameters": {}}']
    with pytest.raises(ValueError, match="valid: react, json, text, trajectory"):
        split_steps("x", "yaml")


# -- calculator -------------------------------------------------------------------------------------
def test_safe_calculator_computes_arithmetic_and_refuses_everything_else():
    assert calculate("(12 + 7) / 3") == pytest.approx(19 / 3)
    assert calculate("2^10") == 1024 and calculate("-3 * -2") == 6
    for bad in ("__import__('os').system('true')", "9**9**9", "1/0", "x + 1", "[1] * 3", "lambda: 1", "1e400*1e400"):
        with pytest.raises(CalcError):
            calculate(bad)
    assert check_equations("Step 1: 25 * 40 = 1000, then 1000 - 7 = 990; x = 3") == (2, 1)


# -- verifier ---------------------------------------------------------------------------------------
def verifier():
    from agent_align.steps.scorers import VerifierScorer

    return VerifierScorer(scorer_cfg())


def test_verifier_scores_generated_rows_step_by_step():
    from agent_align.steps.scoring import score_rows
    from tests.conftest import compose

    from agent_align.data.generator import Generator

    # single-call rows: the step verifier reads one call per step, so it does not score parallel answers yet
    cfg = compose(["data.format=react", "data.parallel_fraction=0"])
    rows = list(Generator(cfg.data, 0).rows("train", 60))
    score_rows(rows, verifier(), "auto", default="react")
    assert all(r["chosen_scores"] == [1.0, 1.0] for r in rows)
    by_type = Counter((r["negative_type"], tuple(r["rejected_scores"])) for r in rows)
    assert all(s in ((1.0, 0.0), (0.0,)) for _, s in by_type)  # the thought is right, the action wrong
    assert all(s == (0.0,) for t, s in by_type if t == "unstructured")  # no call at all: wrong


def test_verifier_checks_calculator_results_equations_and_final_answers():
    v = verifier()
    row = {"prompt": "What is 2+3?", "tools": [CALC_TOOL, SEARCH_TOOL], "answer": "5"}
    assert v.score_completion(row, REACT, "react") == [1.0, 1.0, 1.0, 1.0]
    wrong = REACT.replace("2+3", "2*3").replace("Final Answer: 5", "Final Answer: 6")
    assert v.score_completion(row, wrong, "react") == [1.0, 0.0, 1.0, 0.0]
    with_gold = {**row, "gold_calls": [{"tool": "calculator", "parameters": {"expression": "2+3"}}]}
    assert v.score_completion(with_gold, "Thought: I will use web_search.\nFinal Answer: 5", "react") == [0.0, 1.0]
    assert v.score_completion(with_gold, "Thought: I will use calculator.\nFinal Answer: 5", "react") == [1.0, 1.0]
    text = "Step 1: 2 + 3 = 6\nStep 2: so the answer is 6"
    assert v.score_completion({"answer": "5"}, text, "text") == [0.0, 0.0]
    assert v.score_completion({"answer": "5"}, "Step 1: 2 + 3 = 5\nStep 2: answer 5", "text") == [1.0, 1.0]


def test_verifier_accepts_a_call_whose_observation_matches_the_gold_answer():
    v = verifier()
    row = {"tools": [SEARCH_TOOL], "answer": "Paris"}
    traj = [{"role": "assistant", "content": '{"tool": "web_search", "parameters": {"query": "capital of France"}}'},
            {"role": "tool", "content": "Paris is the capital of France."},
            {"role": "assistant", "content": "It is Paris."}]
    assert v.score_completion(row, traj, "trajectory") == [1.0, 1.0]
    bad = [dict(traj[0]), {"role": "tool", "content": "no results"}, {"role": "assistant", "content": "Lyon"}]
    assert v.score_completion(row, bad, "trajectory") == [0.0, 0.0]


# -- LM judge: parsing, batching, cache, HTTP backend ------------------------------------------------
def test_lm_judge_batches_and_caches_on_disk(tmp_path):
    from agent_align.steps.judge import LMJudgeScorer, parse_judgement

    assert [parse_judgement(x) for x in ("1", "0.25", "Yes.", "incorrect", "hmm")] == [1.0, 0.25, 1.0, 0.0, None]
    calls = []

    def backend(prompts):
        calls.append(len(prompts))
        return ["1" if "2+3" in p.split("Step to grade:")[1] else "0" for p in prompts]
    cfg = scorer_cfg(name="lm", cache_path=str(tmp_path / "c.sqlite"), batch_size=2)
    items = [{"row": {"prompt": "add"}, "completion": "Step 1: 2+3\nStep 2: 2*3\nStep 3: 2+3", "fmt": "text"}]
    first = LMJudgeScorer(cfg, backend=backend).score(items)
    assert first == [[1.0, 0.0, 1.0]] and calls == [2, 1]  # 3 distinct prompts in batches of 2
    again = LMJudgeScorer(cfg, backend=lambda p: pytest.fail("cache miss"))
    assert again.score(items) == first and again.stats["cache_hits"] == 3


class _Handler(BaseHTTPRequestHandler):
    seen: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Handler.seen.append((self.path, self.headers.get("Authorization"), body["model"]))
        reply = json.dumps({"choices": [{"message": {"content": "1"}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *a):
        pass


def test_openai_compatible_backend_reads_the_key_from_the_environment(tmp_path, monkeypatch):
    from agent_align.steps.judge import LMJudgeScorer

    server = HTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("TEST_JUDGE_KEY", "sk-test")
        cfg = scorer_cfg(name="lm", backend="openai", base_url=f"http://127.0.0.1:{server.server_port}/v1",
                         api_model="judge-model", cache_path=str(tmp_path / "c.sqlite"))
        out = LMJudgeScorer(cfg).score([{"row": {"prompt": "q"}, "completion": "a\nb", "fmt": "text"}])
    finally:
        server.shutdown()
    assert out == [[1.0, 1.0]]
    assert _Handler.seen[0] == ("/v1/chat/completions", "Bearer sk-test", "judge-model")


# -- pairs -------------------------------------------------------------------------------------------
def test_step_dpo_pair_puts_the_correct_prefix_in_the_prompt():
    from agent_align.steps.pairs import build_step_dpo_pairs

    row = {"id": "r1", "prompt": "What is 2+3?", "chosen": "Step 1: 2 + 3 = 5\nStep 2: answer 5",
           "rejected": "Step 1: 2 + 3 = 5\nStep 2: 5 * 1 = 6\nStep 3: answer 6",
           "chosen_scores": [1.0, 1.0], "rejected_scores": [1.0, 0.0, 0.0]}
    stats = Counter()
    [pair] = build_step_dpo_pairs([row], scorer=None, fmt="text", stats=stats)
    assert pair["assistant_prefix"] == "Step 1: 2 + 3 = 5\n"
    assert pair["rejected"] == "Step 2: 5 * 1 = 6\n" and pair["chosen"] == "Step 2: answer 5"
    assert pair["prompt"] == row["prompt"] and pair["step_index"] == 1 and "rejected_scores" not in pair
    assert pair["chosen_ends_answer"] and not pair["rejected_ends_answer"]
    rest = build_step_dpo_pairs([{**row, "chosen": "Step 1: 2 + 3 = 5\nStep 2: so 5\nStep 3: answer 5",
                                  "chosen_scores": [1.0, 1.0, 1.0]}], None, fmt="text", chosen="rest")[0]
    assert rest["chosen"] == "Step 2: so 5\nStep 3: answer 5"
    none = build_step_dpo_pairs([{**row, "rejected_scores": [1.0, 1.0, 1.0]}], None, fmt="text", stats=stats)
    assert none == [] and stats["skipped_rejected_all_correct"] == 1


def test_step_dpo_pairs_from_scored_react_rows_and_on_policy_continuations():
    from agent_align.steps.pairs import build_step_dpo_pairs

    gold = '{"tool": "calculator", "parameters": {"expression": "2+3"}}'
    row = {"id": "r", "prompt": "add 2 and 3", "tools": [CALC_TOOL], "schema": None,
           "chosen": f"Thought: use calculator.\nAction:\n```json\n{gold}\n```",
           "rejected": "Thought: use calculator.\nAction:\n```json\n{\"tool\": \"calculator\"}\n```"}
    row.pop("schema")
    [pair] = build_step_dpo_pairs([dict(row)], verifier())
    assert pair["assistant_prefix"] == "Thought: use calculator.\n"
    assert pair["chosen"].startswith("Action:") and gold in pair["chosen"] and pair["rejected"].startswith("Action:")
    cont = {"text": "Action:\n```json\n{\"tool\": \"calculator\", \"parameters\": {\"expression\": \"3+2\"}}\n```",
            "scores": [1.0]}
    [pair] = build_step_dpo_pairs([{**row, "continuations": [cont]}], verifier())
    assert pair["chosen"] == cont["text"] and "continuations" not in pair
    from tests.conftest import compose

    [again] = build_step_dpo_pairs([dict(row)], compose(["data.format=react"]))  # the run config builds the scorer
    assert again["assistant_prefix"] == "Thought: use calculator.\n" and again["rejected"].startswith("Action:")


def test_best_worst_pair_prefers_correct_samples_and_falls_back_to_gold():
    from agent_align.steps.pairs import best_worst_pair

    row = {"prompt": "p", "chosen": "gold", "chosen_scores": [1.0]}
    pair = best_worst_pair(row, ["a", "b", "c"], [[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]], threshold=0.5)
    assert (pair["chosen"], pair["rejected"], pair["chosen_source"]) == ("b", "c", "sample")
    pair = best_worst_pair(row, ["a", "c"], [[1.0, 0.0], [0.0, 0.0]], threshold=0.5)
    assert pair["chosen"] == "gold" and pair["chosen_source"] == "gold"
    assert best_worst_pair(row, ["a", "c"], [[1.0, 0.0], [0.0, 0.0]], threshold=0.5, use_gold=False) is None
    assert best_worst_pair(row, ["a", "b"], [[1.0], [1.0]], threshold=0.5) is None  # nothing to reject


def test_step_dpo_example_ends_the_prompt_with_the_correct_prefix():
    from agent_align.steps.pairs import step_dpo_example
    from agent_align.train.encode import Encoder
    from tests.test_steps_trainer import tiny_lm

    _, tok = tiny_lm()
    enc = Encoder(tok, 256, 200)
    chat = {"messages": [{"role": "user", "content": "Q: add 2 and 3"}], "tools": []}
    row = {"assistant_prefix": "Thought: use the calculator tool\n", "chosen": "Action: 2+3", "rejected": "Action: 2*3"}
    ex = step_dpo_example(enc, chat, row)
    assert tok.decode(ex["prompt_ids"]).endswith("<|assistant|>Thought: use the calculator tool\n")
    assert tok.decode(ex["chosen_ids"]) == "Action: 2+3<|end|>" and tok.decode(ex["rejected_ids"]) == "Action: 2*3<|end|>"
    plain = step_dpo_example(enc, chat, {**row, "assistant_prefix": ""})
    assert plain["prompt_ids"] == enc.prompt_ids(chat)
    middle = step_dpo_example(enc, chat, {"assistant_prefix": "", "chosen": "Thought: use the calculator tool\n",
                                          "rejected": "Thought: use the search tool\n", "chosen_ends_answer": False,
                                          "rejected_ends_answer": False})
    assert tok.decode(middle["chosen_ids"]) == "Thought: use the calculator tool\n"  # no end of turn mid-answer
    assert tok.decode(middle["rejected_ids"]) == "Thought: use the search tool\n"
