"""The command line: stages end to end, and bad input -> one line, exit code 2, nothing half-written."""

from __future__ import annotations

import json

import pytest

from agent_align.validation.categories import CATEGORIES
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("gen")
    res = run_cli(["stage=generate", f"run_dir={run_dir}", "data.n_train=60", "data.n_eval=30"])
    assert res.returncode == 0, res.stderr[-2000:]
    return run_dir


def test_generate_then_validate_data(generated):
    res = run_cli(["stage=validate_data", f"validate.path={generated}/data/train.jsonl", f"run_dir={generated}"])
    assert res.returncode == 0, res.stderr[-2000:]
    assert "60 rows, 60 valid" in res.stdout


def _one_line_error(res, *needles):
    assert res.returncode == 2, (res.returncode, res.stdout[-500:], res.stderr[-2000:])
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, res.stderr
    assert "Traceback" not in res.stderr
    for n in needles:
        assert n in errors[0], errors[0]


def test_score_stage_writes_score_and_verdicts(generated, tmp_path):
    rows = [json.loads(line) for line in open(generated / "data" / "eval.jsonl")]
    preds = tmp_path / "preds.jsonl"
    # half correct, half the labelled hard negative
    preds.write_text("".join(json.dumps({"id": r["id"], "output": r["chosen"] if i % 2 else r["rejected"]}) + "\n"
                             for i, r in enumerate(rows)))
    out = tmp_path / "run"
    res = run_cli(["stage=score", f"score.data={generated}/data/eval.jsonl", f"score.predictions={preds}", f"run_dir={out}"])
    assert res.returncode == 0, res.stderr[-2000:]
    score = json.loads((out / "score.json").read_text())
    n = len(rows)  # 30 single-call rows, then the parallel split
    assert n > 30 and score["n"] == n and score["passed"] == n // 2 and score["sspr"] == (n // 2) / n
    assert set(score["failures"]) == set(CATEGORIES) and sum(score["failures"].values()) == n - n // 2
    verdicts = [json.loads(line) for line in open(out / "verdicts.jsonl")]
    assert [v["id"] for v in verdicts] == [r["id"] for r in rows]
    assert "Failure Breakdown" in res.stdout


def test_malformed_jsonl_names_file_and_line(generated, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"output": "x"}\n{"output": \n')
    out = tmp_path / "run"
    res = run_cli(["stage=score", f"score.data={generated}/data/eval.jsonl", f"score.predictions={bad}", f"run_dir={out}"])
    _one_line_error(res, f"{bad}:2", "malformed JSON")
    assert not (out / "score.json").exists() and not (out / "verdicts.jsonl").exists()


@pytest.mark.parametrize("case", ["missing", "empty", "count", "ids", "schema"])
def test_bad_score_inputs(generated, tmp_path, case):
    data = generated / "data" / "eval.jsonl"
    preds = tmp_path / "preds.jsonl"
    rows = [json.loads(line) for line in open(data)]
    needles = []
    if case == "missing":
        preds = tmp_path / "nope.jsonl"
        needles = ["nope.jsonl", "file not found", "score.predictions"]
    elif case == "empty":
        preds.write_text("")
        needles = ["empty"]
    elif case == "count":
        preds.write_text("".join(json.dumps({"output": "x"}) + "\n" for _ in rows[:3]))
        needles = ["3 predictions for 34 rows"]  # 30 single-call rows + 4 parallel
    elif case == "ids":
        preds.write_text("".join(json.dumps({"id": f"other-{i}", "output": "x"}) + "\n" for i in range(30)))
        needles = ["ids do not match"]
    else:
        data = tmp_path / "data.jsonl"
        data.write_text(json.dumps({"id": "a", "schema": {"type": "objekt"}}) + "\n")
        preds.write_text(json.dumps({"id": "a", "output": "{}"}) + "\n")
        needles = [f"{data}:1", "invalid JSON Schema"]
    res = run_cli(["stage=score", f"score.data={data}", f"score.predictions={preds}", f"run_dir={tmp_path / 'run'}"])
    _one_line_error(res, *needles)


def test_validate_data_lists_bad_rows(generated, tmp_path):
    rows = [json.loads(line) for line in open(generated / "data" / "train.jsonl")][:5]
    rows[1]["rejected"] = rows[1]["chosen"]  # passes: not a negative
    rows[3]["negative_type"] = "enum_violation" if rows[3]["negative_type"] != "enum_violation" else "wrong_tool"
    del rows[4]["schema"]
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = run_cli(["stage=validate_data", f"validate.path={path}", f"run_dir={tmp_path}"])
    _one_line_error(res, "3 problem(s) in 5 rows")
    for line in (2, 4, 5):
        assert f"{path}:{line}:" in res.stderr


def test_config_errors_exit_nonzero_naming_the_key(tmp_path):
    res = run_cli(["data.formt=json", f"run_dir={tmp_path}"])
    assert res.returncode != 0 and "data.formt" in res.stderr
    res = run_cli(["stage=generate", "hardware.attn_implementation=flash_attention_2", f"run_dir={tmp_path}"])
    _one_line_error(res, "hardware.attn_implementation", "sdpa")
    res = run_cli(["stage=nope", f"run_dir={tmp_path}"])
    _one_line_error(res, "unknown stage", "generate")
