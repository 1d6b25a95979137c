"""BFCL in the pipeline: the data's default home (the bfcl-eval package), irrelevance categories, the
training system prompt on every BFCL prompt, evaluate_bfcl's files and report, the table and the plot."""

from __future__ import annotations

import importlib.util
import json
from types import SimpleNamespace

import pytest

from agent_align.bfcl import loader
from agent_align.bfcl.checker import check_ast, check_strict, reference_calls
from agent_align.bfcl.loader import load_bfcl
from agent_align.bfcl.parse import as_json, parse_calls
from agent_align.bfcl.report import bfcl_table, plot_bfcl
from agent_align.bfcl.stages import evaluate_bfcl, model_generate, with_system
from agent_align.data.formats import SYSTEM_PROMPTS
from agent_align.errors import UserError
from agent_align.stages.context import RunContext
from agent_align.validation.validator import SchemaChecker
from tests.conftest import SHARED, compose
from tests.test_bfcl_rules import fn

BFCL = SHARED / "bfcl"
needs_data = pytest.mark.skipif(not (BFCL / "possible_answer").is_dir(),
                                reason=f"BFCL data missing at {BFCL} (CI clones ../shared beside the repo)")
FOUR = ["simple_python", "multiple", "parallel", "parallel_multiple"]


def test_pipeline_config_defaults():
    ev = compose([]).evaluate
    assert ev.bfcl is True and ev.bfcl_limit == 50 and list(ev.bfcl_categories) == FOUR
    assert ev.bfcl_max_new_tokens >= 176  # the longest reference answer of those 200 questions: 175 tokens


@pytest.mark.skipif(importlib.util.find_spec("bfcl_eval") is None,
                    reason=f"bfcl-eval not installed ({loader.INSTALL}; CI installs it)")
def test_unset_bfcl_dir_reads_the_installed_package():
    d = loader.default_bfcl_dir()
    assert d.name == "data" and d.parent.name == "bfcl_eval" and (d / "possible_answer").is_dir()
    items = load_bfcl(SimpleNamespace(bfcl_dir=None, categories=FOUR + ["irrelevance"]), limit=3)
    assert {c: len(v) for c, v in items.items()} == {c: 3 for c in FOUR + ["irrelevance"]}


def test_missing_package_is_one_line_with_the_install_command(monkeypatch):
    monkeypatch.setattr(loader.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError) as exc:
        load_bfcl(SimpleNamespace(bfcl_dir=None, categories=["simple_python"]))
    msg = str(exc.value)
    assert "pip install --no-deps bfcl-eval==2026.3.23" in msg and "data.bfcl_dir" in msg and "\n" not in msg


def write_irrelevance(root, category: str, rows: list[dict]) -> None:
    """A question file only: irrelevance categories have no possible_answer/."""
    root.mkdir(parents=True, exist_ok=True)
    (root / f"BFCL_v4_{category}.json").write_text("\n".join(json.dumps(r) for r in rows))


@pytest.fixture
def irrelevance(tmp_path):
    area = fn("determine_body_mass_index", {"weight": {"type": "float"}, "height": {"type": "float"}},
              ["weight", "height"])
    write_irrelevance(tmp_path, "irrelevance", [
        {"id": f"irrelevance_{i}", "question": [[{"role": "user", "content": "Area of a triangle, base 10?"}]],
         "function": [area]} for i in range(3)])
    write_irrelevance(tmp_path, "live_irrelevance", [
        {"id": "live_irrelevance_0-0-0", "function": [],  # some live rows offer no function at all
         "question": [[{"role": "system", "content": "You are a travel bot."}, {"role": "user", "content": "Hi"}]]}])
    return tmp_path


def test_irrelevance_passes_only_without_a_call(irrelevance):
    items = load_bfcl(SimpleNamespace(bfcl_dir=str(irrelevance), categories=["irrelevance", "live_irrelevance"]))
    it = items["irrelevance"][0]
    assert it.kind == "irrelevance" and it.answers == [] and items["live_irrelevance"][0].tools == []
    checker = SchemaChecker()
    for text, passed in [("The area is 25 square meters.", True), ("", True), ("[]", True),
                         ("I cannot compute that with the offered tools.", True),
                         ('{"tool": "determine_body_mass_index", "parameters": {"weight": 70, "height": 1.8}}', False),
                         ("determine_body_mass_index(weight=70)", False),  # invalid, but a call all the same
                         ('[{"tool": "math.area", "parameters": {}}]', False)]:
        calls, why = parse_calls(text)
        ast, strict = check_ast(it, calls, why), check_strict(it, calls, checker, why)
        assert (ast.passed, strict.passed) == (passed, passed), text
        if not passed:
            assert (ast.error, strict.category) == ("irrelevance_call", "extra_call")


def test_ast_categories_still_need_their_answers(tmp_path):
    write_irrelevance(tmp_path, "simple_python", [{"id": "simple_python_0", "function": [fn("f", {}, [])],
                                                   "question": [[{"role": "user", "content": "x"}]]}])
    with pytest.raises(UserError, match="no possible answers for category 'simple_python'"):
        load_bfcl(SimpleNamespace(bfcl_dir=str(tmp_path), categories=["simple_python"]))


def test_with_system_adds_the_training_prompt_unless_the_question_has_one():
    prompts = [{"id": "a", "tools": [], "messages": [{"role": "user", "content": "q"}]},
               {"id": "b", "tools": [], "messages": [{"role": "system", "content": "own"},
                                                     {"role": "user", "content": "q"}]}]
    a, b = with_system(prompts, "SYS")
    assert a["messages"] == [{"role": "system", "content": "SYS"}, {"role": "user", "content": "q"}]
    assert b["messages"] == prompts[1]["messages"] and prompts[0]["messages"][0]["role"] == "user"  # not mutated


class CharTokenizer:
    """One token per character; the chat template writes each message as ROLE: CONTENT lines."""

    def apply_chat_template(self, messages, tools=None, add_generation_prompt=True, tokenize=False):
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + f"tools: {len(tools or [])}\n"

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[ord(c) for c in t] for t in texts]}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


def test_model_prompts_carry_the_system_prompt_and_a_prompt_cap(monkeypatch, tmp_path):
    import agent_align.generation as generation

    seen = {}

    def fake_generate_ids(model, tok, ids, max_new_tokens, **kw):
        seen.update(ids=ids, max_new_tokens=max_new_tokens, stop=kw.get("stop_at_call"))
        return [[i] for i in ids]  # echo the prompt back as the answer

    monkeypatch.setattr(generation, "generate_ids", fake_generate_ids)
    cfg = compose([f"run_dir={tmp_path}", "data.format=react", "evaluate.bfcl_max_prompt_length=400",
                   "evaluate.bfcl_max_new_tokens=150"])
    info = {}
    generate = model_generate(cfg, None, CharTokenizer(), "bfcl test", info)
    long = "x" * 600
    texts = generate([{"id": "q1", "tools": [{}], "messages": [{"role": "user", "content": "area?"}]},
                      {"id": "q2", "tools": [], "messages": [{"role": "user", "content": long}]}])
    assert texts[0] == f"system: {SYSTEM_PROMPTS['react']}\nuser: area?\ntools: 1\n"
    assert len(texts[1]) == 400 and texts[1] == (long + "\ntools: 0\n")[-400:]  # the end is kept
    assert seen["max_new_tokens"] == 150 and seen["stop"] == "react"
    assert info["truncated_prompts"] == 1 and info["prompt_tokens_max"] > 600
    cfg.data.system_prompt = "Custom prompt."
    custom = model_generate(cfg, None, CharTokenizer(), "t")([{"id": "q", "tools": [], "messages": [
        {"role": "user", "content": "u"}]}])
    assert custom[0].startswith("system: Custom prompt.")


@needs_data
def test_evaluate_bfcl_writes_its_files_and_reports_by_category(tmp_path):
    cfg = compose([f"run_dir={tmp_path}", f"data.bfcl_dir={BFCL}", "evaluate.bfcl_limit=4"])
    items = load_bfcl(SimpleNamespace(bfcl_dir=str(BFCL), categories=FOUR), limit=4)
    by_id = {it.id: it for its in items.values() for it in its}
    asked = []

    def generate(prompts):  # right on even questions, prose on odd ones
        asked.extend(p["id"] for p in prompts)
        return [as_json(reference_calls(by_id[p["id"]])) if int(p["id"].rsplit("_", 1)[1]) % 2 == 0
                else "I am not sure." for p in prompts]

    report = evaluate_bfcl(cfg, RunContext(run_dir=tmp_path), None, None, "baseline", generate=generate)
    assert sorted(asked) == sorted(by_id)
    assert report["label"] == "baseline" and list(report["categories"]) == FOUR
    for s in report["categories"].values():
        assert (s["n"], s["passed"], s["ast_accuracy"], s["sspr"]) == (4, 2, 0.5, 0.5)
        assert s["errors"]["decoder_failed"] == 2 and s["strict_failures"]["json_error"] == 2
    assert report["overall"]["n"] == 16 and report["overall"]["ast_accuracy"] == 0.5
    assert json.loads((tmp_path / "bfcl_baseline.json").read_text()) == report
    preds = [json.loads(x) for x in (tmp_path / "bfcl_predictions_baseline.jsonl").read_text().splitlines()]
    verdicts = [json.loads(x) for x in (tmp_path / "bfcl_verdicts_baseline.jsonl").read_text().splitlines()]
    assert [p["id"] for p in preds] == [v["id"] for v in verdicts] and len(preds) == 16
    assert sum(v["ast_passed"] for v in verdicts) == 8
    other = tmp_path / "rank1"
    evaluate_bfcl(cfg, RunContext(run_dir=other, rank=1, world_size=2), None, None, "aligned", generate=generate)
    assert not other.exists() or not list(other.iterdir())


def test_evaluate_bfcl_scores_irrelevance(irrelevance, tmp_path):
    cfg = compose([f"run_dir={tmp_path}", f"data.bfcl_dir={irrelevance}", "evaluate.bfcl_categories=[irrelevance]"])
    answers = iter(["No tool fits.", '{"tool": "determine_body_mass_index", "parameters": {}}', ""])
    report = evaluate_bfcl(cfg, RunContext(run_dir=tmp_path), None, None, "base",
                           generate=lambda ps: [next(answers) for _ in ps])
    s = report["categories"]["irrelevance"]
    assert (s["n"], s["passed"]) == (3, 2) and s["errors"]["irrelevance_call"] == 1
    assert s["strict_failures"]["extra_call"] == 1


def test_unknown_category_names_the_pipeline_key(tmp_path):
    cfg = compose([f"run_dir={tmp_path}", f"data.bfcl_dir={tmp_path}", "evaluate.bfcl_categories=[]"])
    with pytest.raises(UserError, match="evaluate.bfcl_categories"):
        evaluate_bfcl(cfg, RunContext(run_dir=tmp_path), None, None, "base", generate=lambda ps: [])


def _result(acc: dict[str, float], n: int = 50) -> dict:
    cats = {c: {"n": n, "passed": round(a * n), "ast_accuracy": a, "sspr": min(1.0, a + 0.1)} for c, a in acc.items()}
    total = sum(s["passed"] for s in cats.values())
    overall = {"n": n * len(cats), "passed": total, "ast_accuracy": total / (n * len(cats)), "sspr": 0.5}
    return {"categories": cats, "overall": overall}


def test_table_and_plot_compare_models(tmp_path):
    by_model = {"base": _result({"simple_python": 0.0, "parallel": 0.0}),
                "baseline": _result({"simple_python": 0.4, "parallel": 0.1}),
                "aligned": _result({"simple_python": 0.6, "parallel": 0.3})}
    table = bfcl_table(by_model)
    lines = table.strip().splitlines()
    assert lines[0] == "| category | n | base AST / SSPR | baseline AST / SSPR | aligned AST / SSPR |"
    assert lines[2] == "| simple_python | 50 | 0.0% / 10.0% | 40.0% / 50.0% | 60.0% / 70.0% |"
    assert lines[-1].startswith("| **overall** | 100 | 0.0% / 50.0% | 25.0% / 50.0% | 45.0% / 50.0% |")
    name = plot_bfcl(by_model, tmp_path / "plots" / "bfcl.png")
    png = tmp_path / "plots" / name
    assert name == "bfcl.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
