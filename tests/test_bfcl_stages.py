"""stage=score data=bfcl end to end, evaluate_bfcl with a fake model, and every user error as one line."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from agent_align.bfcl.checker import reference_calls
from agent_align.bfcl.loader import load_bfcl
from agent_align.bfcl.parse import as_json
from agent_align.bfcl.stages import evaluate_stage, score_bfcl
from agent_align.errors import UserError
from agent_align.stages.context import RunContext
from tests.conftest import SHARED, compose, run_cli
from tests.test_bfcl_checker import as_python
from tests.test_bfcl_rules import fn, write_bfcl

BFCL = SHARED / "bfcl"
needs_data = pytest.mark.skipif(not (BFCL / "possible_answer").is_dir(),
                                reason=f"BFCL data missing at {BFCL} (CI clones ../shared beside the repo)")


def cli(tmp_path, *args: str):
    """``python -m agent_align ARGS`` with Hydra's own log directory under tmp_path, not the repo's runs/."""
    return run_cli([*args, f"hydra.run.dir={tmp_path / 'hydra'}"])


def bfcl_cfg(tmp_path, *overrides: str):
    return compose(["data=bfcl", f"data.bfcl_dir={BFCL}", f"run_dir={tmp_path}", *overrides])


def write_predictions(path: Path, categories, render=as_json) -> Path:
    items = load_bfcl(SimpleNamespace(bfcl_dir=str(BFCL), categories=categories))
    path.write_text("".join(json.dumps({"id": it.id, "output": render(reference_calls(it))}) + "\n"
                            for its in items.values() for it in its))
    return path


def test_data_bfcl_config():
    cfg = compose(["data=bfcl"])
    assert cfg.data.name == "bfcl" and cfg.data.bfcl_dir is None
    assert list(cfg.data.categories) == ["simple_python", "multiple", "parallel", "parallel_multiple"]


@needs_data
def test_score_stage_end_to_end(tmp_path):
    preds = write_predictions(tmp_path / "preds.jsonl", ["simple_python", "multiple", "parallel", "parallel_multiple"])
    run = tmp_path / "run"
    start = time.perf_counter()
    proc = cli(tmp_path, "stage=score", "data=bfcl", f"data.bfcl_dir={BFCL}", f"score.predictions={preds}",
               f"run_dir={run}")
    print(f"stage=score on 1,000 BFCL rows: {time.perf_counter() - start:.1f}s wall (process start included)")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((run / "bfcl_score.json").read_text())
    assert list(report["categories"]) == ["simple_python", "multiple", "parallel", "parallel_multiple"]
    for s in report["categories"].values():
        assert s["ast_accuracy"] == 1.0 and set(s) == {"n", "passed", "ast_accuracy", "sspr", "errors", "strict_failures"}
        assert s["passed"] == s["n"]
    assert report["overall"]["n"] == 1000 and report["overall"]["ast_accuracy"] == 1.0
    assert report["overall"]["sspr"] == pytest.approx(0.998)  # two answers contradict their own schema
    verdicts = [json.loads(line) for line in (run / "bfcl_verdicts.jsonl").read_text().splitlines()]
    assert len(verdicts) == 1000 and all(v["ast_passed"] for v in verdicts)
    table = (run / "bfcl_score.md").read_text()
    assert "| simple_python | 400 | 100.0% | 100.0% |" in table and table.strip() in proc.stdout


@needs_data
def test_missing_bfcl_dir_exits_2_with_one_line(tmp_path):
    proc = cli(tmp_path, "stage=score", "data=bfcl", f"data.bfcl_dir={tmp_path / 'nope'}", "score.predictions=x.jsonl",
               f"run_dir={tmp_path}")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert str(tmp_path / "nope") in proc.stderr and "data.bfcl_dir=PATH" in proc.stderr


@needs_data
def test_mismatched_ids_exit_2_naming_the_file(tmp_path):
    preds = write_predictions(tmp_path / "preds.jsonl", ["simple_python"])
    lines = preds.read_text().splitlines()
    preds.write_text("\n".join(lines[1:] + ['{"id": "simple_python_9999", "output": "[]"}']) + "\n")
    proc = cli(tmp_path, "stage=score", "data=bfcl", f"data.bfcl_dir={BFCL}", "data.categories=[simple_python]",
               f"score.predictions={preds}", f"run_dir={tmp_path}")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert str(preds) in proc.stderr and "1 missing (first: ['simple_python_0'])" in proc.stderr
    assert "1 unknown (first: ['simple_python_9999'])" in proc.stderr
    assert not (tmp_path / "bfcl_score.json").exists()


@needs_data
def test_evaluate_with_a_fake_model_and_rescore_its_predictions(tmp_path):
    cfg = bfcl_cfg(tmp_path, "data.categories=[parallel,BFCL_v4_multiple.json]")
    items = load_bfcl(cfg.data)
    by_id = {it.id: it for its in items.values() for it in its}
    seen = []

    def generate(batch):
        seen.extend(batch)
        return [as_python(reference_calls(by_id[b["id"]])) for b in batch]

    report = evaluate_stage(cfg, RunContext(run_dir=tmp_path), generate)
    assert len(seen) == 400 and seen[0]["messages"][0]["role"] == "user"
    assert all(t["type"] == "function" and t["function"]["parameters"]["type"] == "object" for t in seen[0]["tools"])
    assert report["categories"]["parallel"]["ast_accuracy"] == 1.0 and report["overall"]["n"] == 400
    rescore = bfcl_cfg(tmp_path / "again", "data.categories=[parallel,multiple]",
                       f"score.predictions={tmp_path / 'bfcl_predictions.jsonl'}")
    assert score_bfcl(rescore, RunContext(run_dir=tmp_path / "again")) == report
    assert json.loads((tmp_path / "bfcl_score.json").read_text()) == report


@needs_data
def test_evaluate_limit_and_only_rank_0_writes(tmp_path):
    cfg = bfcl_cfg(tmp_path, "evaluate.limit=3", "data.categories=[multiple,parallel_multiple]")
    report = evaluate_stage(cfg, RunContext(run_dir=tmp_path, rank=1, world_size=2), lambda b: ["no call"] * len(b))
    assert {c: s["n"] for c, s in report["categories"].items()} == {c: 3 for c in cfg.data.categories}
    assert report["overall"]["errors"]["decoder_failed"] == 6 and report["overall"]["sspr"] == 0.0
    assert not list(tmp_path.iterdir())


def _one_row_dir(root: Path, category: str = "live_simple") -> Path:
    q = {"id": f"{category}_0", "question": [[{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]],
         "function": [fn("f", {"a": {"type": "integer"}}, ["a"])]}
    write_bfcl(root, category, [(q, {"id": q["id"], "ground_truth": [{"f": {"a": [1]}}]})])
    return root


def test_any_category_file_name_loads(tmp_path):
    root = _one_row_dir(tmp_path)
    for name in ("live_simple", "BFCL_v4_live_simple", "BFCL_v4_live_simple.json"):
        items = load_bfcl(SimpleNamespace(bfcl_dir=str(root), categories=[name]))
        assert list(items) == ["live_simple"] and items["live_simple"][0].kind == "simple"
        assert [m["role"] for m in items["live_simple"][0].messages] == ["system", "user"]


@pytest.mark.parametrize("breakage,message", [
    (lambda r: None, "no question file for category 'simple_python' (categories in"),
    (lambda r: (r / "possible_answer" / "BFCL_v4_live_simple.json").unlink(), "no possible answers for category"),
    (lambda r: (r / "BFCL_v4_live_simple.json").write_text('{"id": "live_simple_0", "question": [[\n'),
     "BFCL_v4_live_simple.json:1: malformed JSON"),
    (lambda r: (r / "possible_answer" / "BFCL_v4_live_simple.json").write_text('{"id": "other", "ground_truth": []}'),
     "no answer for question 'live_simple_0'"),
])
def test_loader_errors_are_one_line_with_the_fix(tmp_path, breakage, message):
    root = _one_row_dir(tmp_path)
    breakage(root)
    categories = ["simple_python"] if "simple_python" in message else ["live_simple"]
    with pytest.raises(UserError) as exc:
        load_bfcl(SimpleNamespace(bfcl_dir=str(root), categories=categories))
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_config_errors(tmp_path):
    root = _one_row_dir(tmp_path)
    for categories, message in (([], "name at least one category"), (["simple_java"], "Java/JavaScript"),
                                (["live_simple", "BFCL_v4_live_simple"], "listed twice")):
        with pytest.raises(UserError, match=message):
            load_bfcl(SimpleNamespace(bfcl_dir=str(root), categories=categories))


def test_prediction_file_errors(tmp_path):
    root = _one_row_dir(tmp_path)
    preds = tmp_path / "preds.jsonl"
    cfg = compose(["data=bfcl", f"data.bfcl_dir={root}", "data.categories=[live_simple]", f"run_dir={tmp_path}",
                   f"score.predictions={preds}"])
    for text, message in (('{"id": "live_simple_0"}\n', "preds.jsonl:1: row needs 'id' and 'output'"),
                          ('{"id": "live_simple_0", "output": "f(a=1)"}\n' * 2, "preds.jsonl:2: duplicate id")):
        preds.write_text(text)
        with pytest.raises(UserError, match=message):
            score_bfcl(cfg, RunContext(run_dir=tmp_path))
    preds.write_text('{"id": "live_simple_0", "output": "f(a=1)"}\n')
    report = score_bfcl(cfg, RunContext(run_dir=tmp_path))
    assert report["categories"]["live_simple"]["ast_accuracy"] == 1.0 and report["overall"]["sspr"] == 1.0
