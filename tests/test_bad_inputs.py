"""Bad input of every kind: one `error:` line naming the key or file:line, exit code 2, no traceback,
nothing left in the run directory. Plus: SIGTERM cleans up like Ctrl-C and a `kill -9`'s temp files go on
resume. Untrusted schemas and model outputs (no `$ref` fetched, every output a verdict, property tests) are in
tests/test_untrusted_inputs.py.

Cases run in-process through the same `cli()` that `python -m agent_align` runs (Hydra included),
so the table stays fast; a few subprocess cases check the real entrypoint.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent_align.__main__ import cli
from agent_align.errors import UserError
from agent_align.jsonl import MAX_DEPTH
from agent_align.validation.validator import validate_output
from tests.conftest import REPO, run_cli

SCHEMA = {"type": "object", "properties": {"tool": {"const": "get_weather"}, "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": False}},
    "required": ["tool", "parameters"], "additionalProperties": False}
GOOD_CALL = json.dumps({"tool": "get_weather", "parameters": {"city": "Paris"}})
TOOL = {"type": "function", "function": {"name": "my_tool", "description": "d",
                                         "parameters": {"type": "object", "properties": {"x": {"type": "string"}}}}}
DEEP = "[" * 100_000


def jl(*rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


DATA = jl({"id": "a", "schema": SCHEMA}, {"id": "b", "schema": SCHEMA})
PREDS = jl({"id": "a", "output": GOOD_CALL}, {"id": "b", "output": "{}"})
TRIPLET = {"prompt": "weather in Paris?", "chosen": GOOD_CALL, "schema": SCHEMA, "negative_type": "missing_required",
           "rejected": json.dumps({"tool": "get_weather", "parameters": {}})}


def score(data=DATA, preds=PREDS, *extra):
    """stage=score on files written from these contents ({tmp} in an override is the test's dir)."""
    return {"files": {"data.jsonl": data, "preds.jsonl": preds},
            "args": ["stage=score", "score.data={tmp}/data.jsonl", "score.predictions={tmp}/preds.jsonl", *extra]}


def tools(content, name="tools.json", *extra, stage="generate"):
    return {"files": {name: content}, "args": [f"stage={stage}", f"data.tools_file={{tmp}}/{name}",
                                                "data.n_train=4", "data.n_eval=2", *extra]}


def args(*a, files=None):
    return {"files": files or {}, "args": list(a)}


# id -> (case, substrings the one error line must hold). {tmp} is the case's directory.
CASES = {
    # --- stage=score: the predictions file -----------------------------------------------------------
    "preds_missing": (args("stage=score", "score.data={tmp}/d.jsonl", "score.predictions={tmp}/nope.jsonl",
                           files={"d.jsonl": DATA}), ["nope.jsonl", "file not found", "score.predictions"]),
    "preds_is_dir": (args("stage=score", "score.data={tmp}/d.jsonl", "score.predictions={tmp}",
                          files={"d.jsonl": DATA}), ["is a directory"]),
    "preds_dev_null": (args("stage=score", "score.data={tmp}/d.jsonl", "score.predictions=/dev/null",
                            files={"d.jsonl": DATA}), ["/dev/null", "not a regular file"]),
    "preds_empty": (score(DATA, ""), ["preds.jsonl", "empty"]),
    "preds_blank_lines": (score(DATA, "\n  \n\n"), ["preds.jsonl", "empty"]),
    "preds_not_utf8": (score(DATA, b'{"id": "a", "output": "x"}\n{"id": "b", "output": "\xff\xfe"}\n'),
                       ["preds.jsonl:2", "not valid UTF-8"]),
    "preds_latin1": (score(DATA, '{"id": "a", "output": "caf\u00e9"}\n'.encode("latin-1")), ["preds.jsonl:1", "UTF-8"]),
    "preds_utf16": (score(DATA, PREDS.encode("utf-16")), ["preds.jsonl:1", "UTF-8"]),
    "preds_bom": (score(DATA, b"\xef\xbb\xbf" + PREDS.encode()), ["preds.jsonl:1", "byte-order mark"]),
    "preds_deep_row": (score(DATA, jl({"id": "a", "output": "x"}, '{"id": "b", "output": ' + DEEP)),
                       ["preds.jsonl:2", f"nested deeper than {MAX_DEPTH}"]),
    "preds_deep_balanced": (score(DATA, jl({"id": "a", "output": "x"}, '{"id": "b", "output": ' + "[" * 500 + "]" * 500 + "}")),
                            ["preds.jsonl:2", "nested deeper"]),
    "preds_malformed": (score(DATA, '{"id": "a", "output": "x"}\n{"id": "b", "output": \n'), ["preds.jsonl:2", "malformed JSON"]),
    "preds_nan": (score(DATA, jl({"id": "a", "output": "x"}, '{"id": "b", "output": NaN}')), ["preds.jsonl:2", "NaN"]),
    "preds_row_is_list": (score(DATA, jl({"id": "a", "output": "x"}, [1, 2])), ["preds.jsonl:2", "expected a JSON object"]),
    "preds_no_output_key": (score(DATA, jl({"id": "a", "output": "x"}, {"id": "b", "text": "x"})), ["preds.jsonl:2", "'output'"]),
    "preds_duplicate_id": (score(DATA, jl({"id": "a", "output": "x"}, {"id": "a", "output": "x"})), ["preds.jsonl:2", "duplicate id"]),
    "preds_unknown_ids": (score(DATA, jl({"id": "a", "output": "x"}, {"id": "zz", "output": "x"})), ["ids do not match"]),
    "preds_count": (score(jl({"schema": SCHEMA}, {"schema": SCHEMA}), jl({"output": "x"})), ["1 predictions for 2 rows"]),
    "preds_not_set": (args("stage=score", "score.data={tmp}/d.jsonl", files={"d.jsonl": DATA}), ["score.predictions"]),
    # --- stage=score: the data file and its schemas ----------------------------------------------------
    "data_missing": (args("stage=score", "score.data={tmp}/none.jsonl", "score.predictions={tmp}/p.jsonl",
                          files={"p.jsonl": PREDS}), ["none.jsonl", "file not found", "score.data"]),
    "data_ref_file": (score(jl({"id": "a", "schema": SCHEMA}, {"id": "b", "schema": {"$ref": "file:///etc/passwd"}})),
                      ["data.jsonl:2", "file:///etc/passwd", "nothing is fetched"]),
    "data_ref_http": (score(jl({"id": "a", "schema": {"type": "object", "properties": {
        "x": {"$ref": "http://127.0.0.1:9/schema.json"}}}}, {"id": "b", "schema": SCHEMA})), ["data.jsonl:1", "http://127.0.0.1:9"]),
    "data_ref_relative": (score(jl({"id": "a", "schema": {"$id": "file:///etc/", "$ref": "passwd"}}, {"id": "b", "schema": SCHEMA})),
                          ["data.jsonl:1", "'passwd'"]),
    "data_no_schema": (score(jl({"id": "a"}, {"id": "b", "schema": SCHEMA})), ["data.jsonl:1", "'schema'"]),
    "data_bad_schema": (score(jl({"id": "a", "schema": {"type": "objekt"}}, {"id": "b", "schema": SCHEMA})),
                        ["data.jsonl:1", "invalid JSON Schema"]),
    "data_bad_pattern": (score(jl({"id": "a", "schema": SCHEMA}, {"id": "b", "schema": {"type": "string", "pattern": "("}})),
                         ["data.jsonl:2", "invalid JSON Schema"]),
    "data_not_utf8": (score(b'{"id": "a", "schema": {"type": "object", "description": "\xc3\x28"}}\n', PREDS),
                      ["data.jsonl:1", "UTF-8"]),
    "data_deep_schema": (score(jl({"id": "a", "schema": SCHEMA}, '{"id": "b", "schema": ' + '{"items": ' * 200 + "{}" + "}" * 201)),
                         ["data.jsonl:2", "nested deeper"]),
    "score_format": (score(DATA, PREDS, "score.format=xml"), ["score.format", "xml", "json, react"]),
    # --- stage=validate_data ----------------------------------------------------------------------------
    "validate_missing": (args("stage=validate_data", "validate.path={tmp}/t.jsonl"), ["t.jsonl", "file not found", "validate.path"]),
    "validate_bad_rows": (args("stage=validate_data", "validate.path={tmp}/t.jsonl",
                               files={"t.jsonl": jl(TRIPLET, {**TRIPLET, "rejected": GOOD_CALL})}), ["1 problem(s) in 2 rows"]),
    "validate_deep": (args("stage=validate_data", "validate.path={tmp}/t.jsonl", files={"t.jsonl": jl(TRIPLET, DEEP)}),
                      ["t.jsonl:2", "nested deeper"]),
    "validate_not_utf8": (args("stage=validate_data", "validate.path={tmp}/t.jsonl", files={"t.jsonl": b"\x80\n"}),
                          ["t.jsonl:1", "UTF-8"]),
    # --- stage=generate: tools files ------------------------------------------------------------------
    "tools_duplicate_json": (tools('[\n' + json.dumps(TOOL) + ',\n' + json.dumps(TOOL) + '\n]'),
                             ["tools.json:3", "'my_tool' is defined twice", "tools.json:2"]),
    "tools_duplicate_yaml": (tools("- name: my_tool\n  description: a\n- name: other\n- name: my_tool\n", "tools.yaml"),
                             ["tools.yaml:4", "defined twice", "tools.yaml:1"]),
    "tools_shadow_builtin": (tools(json.dumps([{**TOOL, "function": {**TOOL["function"], "name": "get_weather"}}])),
                             ["tools.json:1", "get_weather", "data.override_builtin_tools=true"]),
    "tools_not_utf8": (tools(b'[{"name": "t\xff"}]'), ["tools.json:1", "UTF-8"]),
    "tools_bom": (tools(b"\xef\xbb\xbf" + json.dumps([TOOL]).encode()), ["tools.json:1", "byte-order mark"]),
    "tools_empty": (tools(""), ["tools.json", "empty"]),
    "tools_dir": (args("stage=generate", "data.tools_file={tmp}"), ["is a directory"]),
    "tools_missing": (args("stage=generate", "data.tools_file={tmp}/none.yaml"), ["none.yaml", "file not found", "data.tools_file"]),
    "tools_malformed_yaml": (tools("- name: a\n  description: [unclosed\n", "t.yaml"), ["t.yaml:", "malformed YAML"]),
    "tools_deep_yaml": (tools("a: " + "[" * 5000 + "]" * 5000 + "\n", "t.yaml"), ["t.yaml", "nested deeper"]),
    "tools_yaml_alias_bomb": (tools("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(8)), "t.yaml"),
        ["t.yaml", "more than"]),
    "tools_not_a_list": (tools('{"name": 3}'), ["tools.json", "tool"]),
    "tools_bad_name": (tools(json.dumps([{**TOOL, "function": {**TOOL["function"], "name": "bad name!"}}])), ["tools.json: tool #0", "'bad name!'"]),
    "tools_remote_ref": (tools(json.dumps([{**TOOL, "function": {**TOOL["function"], "parameters": {
        "type": "object", "properties": {"x": {"$ref": "https://example.com/x.json"}}}}}])), ["tools.json", "https://example.com/x.json"]),
    "tools_bad_schema": (tools(json.dumps([{**TOOL, "function": {**TOOL["function"], "parameters": {
        "type": "object", "properties": {"x": {"type": "strng"}}}}}])), ["tools.json", "invalid JSON Schema"]),
    # --- config: Hydra's errors and ours -----------------------------------------------------------------
    "key_typo": (args("stage=score", "data.formt=json"), ["'data.formt' is not known", "did you mean 'data.format'"]),
    "key_typo_plus": (args("stage=score", "+data.formt=json"), ["'data.formt' is not known", "'data.format'"]),
    "key_typo_nested": (args("stage=score", "hardware.distributed.bakend=ddp"), ["'hardware.distributed.bakend'", "backend"]),
    "key_top_level": (args("stage=score", "+sed=3"), ["'sed' is not known", "'seed'"]),
    "type_float": (args("stage=score", "sft.lr=fast"), ["'sft.lr'", "'fast'", "float"]),
    "type_int": (args("stage=score", "seed=abc"), ["'seed'", "'abc'"]),
    "type_list": (args("stage=score", "data.tools=notalist"), ["'data.tools'"]),
    "group_option": (args("stage=score", "model=nonexistent"), ["config group 'model'", "'nonexistent'", "tiny"]),
    "group_option_loss": (args("stage=score", "loss=foo"), ["config group 'loss'", "dpo"]),
    "group_experiment": (args("stage=score", "+experiment=nope"), ["config group 'experiment'", "'nope'"]),
    "override_syntax": (args("stage=score", "data.format=["), ["cannot parse override 'data.format=['"]),
    "override_syntax_quote": (args("stage=score", "data.system_prompt='unclosed"), ["cannot parse override"]),
    "enum_format": (args("stage=generate", "data.format=xml"), ["data.format", "xml", "react"]),
    "enum_resume": (args("stage=generate", "resume=sometimes"), ["resume", "never"]),
    "n_train_negative": (args("stage=generate", "data.n_train=-5"), ["data.n_train", "-5"]),
    "n_train_zero": (args("stage=generate", "data.n_train=0"), ["data.n_train", "0"]),
    "n_train_huge": (args("stage=generate", "data.n_train=1000000000000"), ["data.n_train", "1000000"]),
    "n_eval_zero": (args("stage=generate", "data.n_eval=0"), ["data.n_eval"]),
    "seed_negative": (args("stage=generate", "seed=-1"), ["'seed'", "-1"]),
    "fraction": (args("stage=generate", "data.procedural_fraction=2"), ["data.procedural_fraction"]),
    "negative_weight_key": (args("stage=generate", "data.negative_weights.bogus=1"), ["data.negative_weights.bogus"]),
    "eval_batch_negative": (args("stage=evaluate", "evaluate.batch_size=-1"), ["evaluate.batch_size", "-1"]),
    "eval_tokens_zero": (args("stage=evaluate", "evaluate.max_new_tokens=0"), ["evaluate.max_new_tokens"]),
    "sft_batch_zero": (args("stage=sft", "hardware.sft_batch_size=0"), ["hardware.sft_batch_size"]),
    "sft_lr_zero": (args("stage=sft", "sft.lr=0"), ["sft.lr"]),
    "dpo_rounds_zero": (args("stage=dpo", "dpo.rounds=0"), ["dpo.rounds"]),
    "dpo_top_p": (args("stage=dpo", "dpo.top_p=2"), ["dpo.top_p"]),
    "dpo_decision_sides": (args("stage=dpo", "dpo.decision_sides=chosen"), ["dpo.decision_sides", "'chosen'", "rejected"]),
    "beta_negative": (args("stage=dpo", "loss.beta=-1"), ["loss.beta"]),
    "prompt_longer_than_model": (args("stage=sft", "model.max_prompt_length=500"), ["model.max_prompt_length", "384"]),
    "unknown_stage": (args("stage=nope"), ["unknown stage", "generate"]),
    "t4_without_cuda": (args("stage=sft", "hardware=t4", "hardware.precision=fp16"), ["hardware.device", "hardware=t4", "CUDA"]),
    "run_dir_is_file": (args("stage=generate", "run_dir={tmp}/afile", files={"afile": "x"}), ["afile"]),
    "run_dir_under_file": (args("stage=generate", "run_dir={tmp}/afile/run", files={"afile": "x"}), ["afile/run"]),
    # --- stage=infer, sft, dpo, evaluate: checkpoints and their files -------------------------------------
    "infer_untrained": (args("stage=infer", "infer.prompt=hi"), ["no trained model", "infer.model_path="]),
    "infer_missing_ckpt": (args("stage=infer", "infer.model_path={tmp}/ckpt"), ["infer.model_path", "no such directory"]),
    "infer_ckpt_is_file": (args("stage=infer", "infer.model_path={tmp}/f", files={"f": "x"}), ["infer.model_path", "is a file"]),
    "infer_ckpt_no_config": (args("stage=infer", "infer.model_path={tmp}/ck", files={"ck/weights.bin": "x"}),
                             ["infer.model_path", "no config.json"]),
    "infer_ckpt_corrupt_config": (args("stage=infer", "infer.model_path={tmp}/ck", files={"ck/config.json": '{"model_type": '}),
                                  ["ck/config.json:1", "malformed JSON"]),
    "infer_unknown_tool": (args("stage=infer", "infer.tools=[nope]"), ["infer.tools", "nope"]),
    "infer_expect_tool": (args("stage=infer", "infer.expect_tool=nope"), ["infer.expect_tool", "nope"]),
    "model_path_missing": (args("stage=evaluate", "model.path={tmp}/nomodel"), ["model.path", "no such directory"]),
    "evaluate_model_path": (args("stage=evaluate", "evaluate.model_path=./no/such/dir"), ["evaluate.model_path"]),
    "sft_init_from": (args("stage=sft", "sft.init_from={tmp}/none"), ["sft.init_from"]),
    "sft_train_missing": (args("stage=sft", "data.train_path={tmp}/none.jsonl"), ["none.jsonl", "data.train_path"]),
    "sft_train_not_utf8": (args("stage=sft", "data.train_path={tmp}/t.jsonl", files={"t.jsonl": b"\xff\n"}), ["t.jsonl:1", "UTF-8"]),
    "sft_train_bad_row": (args("stage=sft", "data.train_path={tmp}/t.jsonl", files={"t.jsonl": jl({"prompt": "x"})}),
                          ["t.jsonl:1", "chosen"]),
    "dpo_policy_from": (args("stage=dpo", "dpo.policy_from={tmp}/none"), ["dpo.policy_from"]),
    "dpo_no_sft": (args("stage=dpo"), ["no SFT checkpoint", "dpo.policy_from"]),
}


def write_files(tmp: Path, files: dict) -> None:
    for name, content in files.items():
        p = tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content if isinstance(content, bytes) else content.encode())


def left_in(run_dir: Path) -> list[str]:
    """Files in the run dir besides Hydra's own record (.hydra/, the log)."""
    if not run_dir.is_dir():
        return []
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")
                  if p.is_file() and ".hydra" not in p.parts and p.suffix != ".log")


def assert_one_line_error(code: int, err: str, needles) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2, (code, err[-3000:])
    assert len(lines) == 1, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_gives_one_line_and_exit_2(name, tmp_path, capsys):
    case, needles = CASES[name]
    src = tmp_path / "in"
    src.mkdir()
    write_files(src, case["files"])
    run_dir = tmp_path / "run"
    argv = [a.replace("{tmp}", str(src)) for a in case["args"]]
    if not any(a.startswith("run_dir=") for a in argv):
        argv.append(f"run_dir={run_dir}")
    code = cli(["model=tiny", *argv])
    err = capsys.readouterr().err
    assert_one_line_error(code, err, [n.replace("{tmp}", str(src)) for n in needles])
    assert left_in(run_dir) == []
    assert not list(src.rglob(".*.tmp"))


def test_the_table_covers_every_stage_and_sixty_cases():
    stages = {a.split("=", 1)[1] for case, _ in CASES.values() for a in case["args"] if a.startswith("stage=")}
    assert {"score", "generate", "validate_data", "evaluate", "infer", "sft", "dpo"} <= stages
    assert len(CASES) >= 60


# --- the real entrypoint: Hydra's errors in a subprocess ----------------------------------------------

@pytest.mark.parametrize("argv,needles", [
    (["data.formt=json"], ["'data.formt' is not known", "'data.format'"]),
    (["model=nonexistent"], ["config group 'model'", "tiny"]),
    (["-m", "model=tiny", "stage=generate", "data.n_train=2,3", "loss.formt=1"], ["'loss.formt'"]),
])
def test_hydra_errors_one_line_from_the_command_line(tmp_path, argv, needles):
    res = run_cli([*argv, f"run_dir={tmp_path}/run", f"hydra.sweep.dir={tmp_path}/sweep"], timeout=120)
    line = assert_one_line_error(res.returncode, res.stderr, needles)
    assert "base_model" not in line and "+data.formt" not in line
    assert not (tmp_path / "run").exists() and not (tmp_path / "sweep").exists()


def test_unknown_group_option_lists_no_schema_names(capsys):
    cli(["loss=foo"])
    line = capsys.readouterr().err.strip()
    assert "base_loss" not in line and "ipo" in line and "rpo" in line


def test_multirun_still_runs(tmp_path):
    code = cli(["-m", "stage=generate", "data.n_train=3,4", "data.n_eval=2", f"hydra.sweep.dir={tmp_path}"])
    assert code == 0
    assert len(list(tmp_path.glob("*/data/train.jsonl"))) == 2


def test_debug_true_shows_the_traceback(tmp_path):
    with pytest.raises(UserError):
        cli(["stage=generate", "data.n_train=0", f"run_dir={tmp_path}", "debug=true"])


# --- signals, leftovers, finished markers -------------------------------------------------------------

def test_sigterm_cleans_up_like_ctrl_c(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "agent_align", "stage=generate", "data.n_train=1000000",
                             "data.n_eval=2", f"run_dir={tmp_path}"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list((tmp_path / "data").glob(".train.jsonl.*.tmp")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert list((tmp_path / "data").glob(".train.jsonl.*.tmp")), "generation never started"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "terminated (SIGTERM)" in err and "Traceback" not in err
    assert left_in(tmp_path) == [] and not list(tmp_path.rglob("*.tmp"))


def test_temp_files_of_a_killed_run_are_removed_on_resume(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "data").mkdir()
    stale = [tmp_path / "data" / f".train.jsonl.{dead.pid}-abc123.tmp", tmp_path / "data" / ".eval.jsonl.x1y2z3.tmp",
             tmp_path / f".score.json.{dead.pid}-q.tmp"]
    for p in stale:
        p.write_text("half written")
    live = tmp_path / f".other.json.{os.getpid()}-live.tmp"  # a writer that is still running keeps its file
    live.write_text("in progress")
    assert cli(["stage=generate", "data.n_train=3", "data.n_eval=2", f"run_dir={tmp_path}"]) == 0
    assert not any(p.exists() for p in stale) and live.exists()
    assert (tmp_path / "data" / "train.jsonl").stat().st_size > 0


def test_a_stage_with_empty_outputs_is_not_marked_finished(tmp_path):
    from agent_align.stages.context import RunContext, finished, mark_finished

    ctx = RunContext(run_dir=tmp_path)
    empty, full = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    empty.write_text("")
    full.write_text("{}\n")
    with pytest.raises(UserError, match="produced no output"):
        mark_finished(ctx, "generate", {}, outputs=[empty, full])
    assert not (tmp_path / "stages" / "generate.json").exists() and not empty.exists()
    with pytest.raises(UserError):
        mark_finished(ctx, "generate", {}, outputs=[tmp_path / "missing.jsonl"])
    mark_finished(ctx, "generate", {"n": 1}, outputs=[full])

    class Cfg:
        resume = "auto"
    assert finished(Cfg, ctx, "generate") == {"n": 1}
    (tmp_path / "stages" / "generate.json").write_text("{half")
    assert finished(Cfg, ctx, "generate") is None  # a broken marker re-runs the stage


# --- tools: the override switch, and infer's verdict line ---------------------------------------------

def test_override_builtin_tools_lets_a_file_replace_a_builtin(tmp_path, capsys):
    path = tmp_path / "t.json"
    mine = {**TOOL, "function": {**TOOL["function"], "name": "get_weather"}}
    path.write_text(json.dumps([mine]))
    code = cli(["stage=generate", f"data.tools_file={path}", "data.override_builtin_tools=true", "data.n_train=3",
                "data.n_eval=2", f"run_dir={tmp_path}/run"])
    assert code == 0, capsys.readouterr().err
    from agent_align.tools.library import load_tools

    weather = [t for t in load_tools(str(path)) if t.name == "get_weather"]
    assert len(weather) == 1 and weather[0].origin == "file"


def test_infer_verdict_line_says_valid_call_unless_a_tool_is_expected():
    from agent_align.stages.infer import verdict_line

    ok = validate_output(GOOD_CALL, SCHEMA)
    bad = validate_output('{"tool": "get_weather", "parameters": {}}', SCHEMA)
    assert verdict_line(GOOD_CALL, ok, None, "json") == "-> valid call to get_weather"
    assert verdict_line("{}", bad, None, "json").startswith("-> invalid call (missing_required")
    assert verdict_line(GOOD_CALL, ok, "get_weather", "json") == "-> PASS"
    assert verdict_line("{}", bad, "get_weather", "json").startswith("-> FAIL missing_required")
