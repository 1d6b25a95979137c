"""BFCL scoring for ``stage=score`` (predictions made elsewhere), ``stage=evaluate`` (a model here) and
the pipeline (``evaluate_bfcl``: base, baseline and aligned models, ``evaluate.bfcl=true``).

    python -m agent_align stage=score data=bfcl data.bfcl_dir=PATH score.predictions=preds.jsonl

Writes, in the run directory: bfcl_score.json (``{"categories": {name: {"n", "passed", "ast_accuracy",
"sspr", "errors", "strict_failures"}}, "overall": {...}}``, overall = micro average over all rows),
bfcl_score.md (the printed table) and bfcl_verdicts.jsonl (one row per question, both scorers); the
pipeline writes bfcl_<label>.json, bfcl_predictions_<label>.jsonl and bfcl_verdicts_<label>.jsonl.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from typing import Any, Callable

from agent_align.bfcl.checker import AST_ERRORS, check_ast, check_strict
from agent_align.bfcl.loader import BfclItem, load_bfcl
from agent_align.bfcl.parse import parse_calls
from agent_align.errors import UserError, file_error
from agent_align.jsonl import atomic_open, read_jsonl, write_json, write_jsonl
from agent_align.stages.context import RunContext
from agent_align.validation.categories import CATEGORIES
from agent_align.validation.validator import SchemaChecker

log = logging.getLogger(__name__)
Generate = Callable[[list[dict]], list[str]]


def score_item(item: BfclItem, output: Any, fmt: str, checker: SchemaChecker) -> dict:
    """One verdict row: the decoded calls, then both scorers on them."""
    calls, why = parse_calls(output, fmt)
    ast = check_ast(item, calls, why)
    strict = check_strict(item, calls, checker, why)
    return {"id": item.id, "category": item.category, "calls": None if calls is None else len(calls),
            "ast_passed": ast.passed, "ast_error": ast.error, "ast_sub_error": ast.sub_error, "ast_detail": ast.detail,
            "strict_passed": strict.passed, "strict_category": strict.category, "strict_detail": strict.detail}


def summarize_rows(rows: list[dict]) -> dict:
    n = len(rows)
    errors = Counter(r["ast_error"] for r in rows if not r["ast_passed"])
    strict = Counter(r["strict_category"] for r in rows if not r["strict_passed"])
    return {"n": n, "passed": sum(r["ast_passed"] for r in rows),
            "ast_accuracy": sum(r["ast_passed"] for r in rows) / n if n else 0.0,
            "sspr": sum(r["strict_passed"] for r in rows) / n if n else 0.0,
            "errors": {e: errors.get(e, 0) for e in AST_ERRORS},
            "strict_failures": {c: strict.get(c, 0) for c in CATEGORIES}}


def score_items(items: dict[str, list[BfclItem]], outputs: dict[str, Any], fmt: str,
                checker: SchemaChecker | None = None) -> tuple[dict, list[dict]]:
    checker = checker or SchemaChecker()
    rows = {cat: [score_item(it, outputs[it.id], fmt, checker) for it in its] for cat, its in items.items()}
    every = [r for rs in rows.values() for r in rs]
    report = {"categories": {cat: summarize_rows(rs) for cat, rs in rows.items()}, "overall": summarize_rows(every)}
    return report, every


def _top(counts: dict, k: int = 3) -> str:
    top = sorted(((c, e) for e, c in counts.items() if c), reverse=True)[:k]
    return ", ".join(f"{e} {c}" for c, e in top) or "-"


def markdown_table(report: dict, title: str) -> str:
    lines = [f"### {title}", "",
             "| category | n | AST accuracy | SSPR (strict) | top AST errors | top strict failures |",
             "|---|---:|---:|---:|---|---|"]
    for name, s in [*report["categories"].items(), ("**overall**", report["overall"])]:
        lines.append(f"| {name} | {s['n']} | {100 * s['ast_accuracy']:.1f}% | {100 * s['sspr']:.1f}% | "
                     f"{_top(s['errors'])} | {_top(s['strict_failures'])} |")
    return "\n".join(lines) + "\n"


def write_report(ctx: RunContext, report: dict, verdicts: list[dict], title: str) -> str:
    table = markdown_table(report, title)
    if ctx.is_main:
        write_json(ctx.path("bfcl_score.json"), report)
        write_jsonl(ctx.path("bfcl_verdicts.jsonl"), verdicts)
        with atomic_open(ctx.path("bfcl_score.md")) as fh:
            fh.write(table)
    print(table, file=sys.stdout)
    return table


def read_predictions(path: str, items: dict[str, list[BfclItem]], categories: list) -> dict[str, Any]:
    """``{id: output}``; every question of the chosen categories exactly once, or a one-line error."""
    outputs: dict[str, Any] = {}
    for row in read_jsonl(path, "score.predictions"):
        if "id" not in row or "output" not in row:
            raise file_error(path, row["_line"], "row needs 'id' and 'output'",
                             'rows look like {"id": "simple_python_0", "output": "..."}')
        if row["id"] in outputs:
            raise file_error(path, row["_line"], f"duplicate id {row['id']!r}")
        outputs[row["id"]] = row["output"]
    wanted = [it.id for its in items.values() for it in its]
    missing = [i for i in wanted if i not in outputs]
    extra = sorted(set(outputs) - set(wanted), key=str)
    if missing or extra:
        raise UserError(f"{path}: ids do not match the BFCL questions of data.categories={list(categories)}: "
                        f"{len(missing)} missing (first: {missing[:3]}), {len(extra)} unknown (first: {extra[:3]}); "
                        "predict every question of those categories once, or change data.categories")
    return outputs


def score_bfcl(cfg, ctx: RunContext) -> dict:
    """stage=score data=bfcl: score a predictions file (rows ``{"id", "output"}``) with both scorers."""
    if not cfg.score.predictions:
        raise UserError("config key 'score.predictions' is not set: pass score.predictions=FILE "
                        '(JSONL rows {"id": "simple_python_0", "output": "..."})')
    checker = SchemaChecker()
    start = time.perf_counter()
    items = load_bfcl(cfg.data, checker)
    outputs = read_predictions(cfg.score.predictions, items, cfg.data.categories)
    report, verdicts = score_items(items, outputs, cfg.score.format or cfg.data.format, checker)
    log.info("loaded and scored %d BFCL rows in %.2fs", len(verdicts), time.perf_counter() - start)
    write_report(ctx, report, verdicts, f"BFCL: {cfg.score.predictions}")
    return report


def with_system(prompts: list[dict], system: str) -> list[dict]:
    """The chats a model answers: BFCL's messages after the system prompt the model was trained with,
    unless a question brings its own system turn (some live_* ones do)."""
    return [{"id": p["id"], "tools": p["tools"],
             "messages": p["messages"] if any(m["role"] == "system" for m in p["messages"])
             else [{"role": "system", "content": system}, *p["messages"]]} for p in prompts]


def model_generate(cfg, model, tok, desc: str, info: dict | None = None) -> Generate:
    """``generate`` for a model here: the training system prompt added (``with_system``), rendered with
    the model's chat template, at most ``evaluate.bfcl_max_prompt_length`` tokens kept (the end, as in
    training), greedy decoding of up to ``evaluate.bfcl_max_new_tokens``, a row ending once its call is complete
    or once no continuation could decode to a call (``call_end``, ``fail_fast="bfcl"``). ``info`` receives prompt-length
    statistics (``prompt_tokens_max``, ``truncated_prompts``)."""
    from agent_align.generation import call_stop, generate_ids, prompt_text
    from agent_align.hardware import resolve_precision
    from agent_align.train.encode import system_prompt

    cap = cfg.evaluate.bfcl_max_prompt_length

    def generate(prompts: list[dict]) -> list[str]:
        chats = with_system(prompts, system_prompt(cfg))
        ids = tok([prompt_text(tok, c) for c in chats], add_special_tokens=False)["input_ids"]
        if info is not None:
            info.update(prompt_tokens_max=max((len(i) for i in ids), default=0),
                        truncated_prompts=sum(len(i) > cap for i in ids))
        ids = [i[-cap:] for i in ids]
        out = generate_ids(model, tok, ids, max_new_tokens=cfg.evaluate.bfcl_max_new_tokens,
                           batch_size=cfg.evaluate.batch_size or cfg.hardware.eval_batch_size,
                           bf16=resolve_precision(cfg.hardware) == "bf16", desc=desc, stop_at_call=call_stop(cfg),
                           fail_fast="bfcl")  # prose that can decode to no call ends on its first token (call_end.py)
        return [tok.decode(seqs[0], skip_special_tokens=True) for seqs in out]
    return generate


def answer_and_score(cfg, ctx: RunContext, items: dict[str, list[BfclItem]], generate: Generate,
                     checker: SchemaChecker, predictions: str) -> tuple[dict, list[dict]]:
    """Answer every question, save the answers in the run directory as ``predictions`` (re-scorable
    with stage=score) and score them."""
    prompts = [it.prompt() for its in items.values() for it in its]
    start = time.perf_counter()
    texts = generate(prompts)
    if len(texts) != len(prompts):
        raise RuntimeError(f"generate returned {len(texts)} outputs for {len(prompts)} prompts")
    seconds = time.perf_counter() - start
    log.info("generated %d BFCL answers in %.1fs", len(texts), seconds)
    outputs = {p["id"]: t for p, t in zip(prompts, texts)}
    report, verdicts = score_items(items, outputs, cfg.data.format, checker)
    if ctx.is_main:
        write_jsonl(ctx.path(predictions), ({"id": i, "output": t} for i, t in outputs.items()))
    return report | {"generate_seconds": round(seconds, 2)}, verdicts


def evaluate_stage(cfg, ctx: RunContext, generate: Generate) -> dict:
    """stage=evaluate data=bfcl: ``generate`` answers every prompt (``{"id", "messages", "tools"}``
    -> text); the answers are saved as bfcl_predictions.jsonl (re-scorable with stage=score) and scored
    into bfcl_score.json. ``evaluate.limit`` > 0 keeps the first N questions of each category."""
    checker = SchemaChecker()
    items = load_bfcl(cfg.data, checker, limit=cfg.evaluate.limit)
    report, verdicts = answer_and_score(cfg, ctx, items, generate, checker, "bfcl_predictions.jsonl")
    report.pop("generate_seconds")  # bfcl_score.json holds scores only: stage=score rewrites it identically
    write_report(ctx, report, verdicts, f"BFCL: {cfg.evaluate.label}")
    return report


def evaluate_bfcl(cfg, ctx: RunContext, model, tok, label: str, generate: Generate | None = None) -> dict:
    """BFCL in the pipeline: the first ``evaluate.bfcl_limit`` questions of each of
    ``evaluate.bfcl_categories`` (data from ``data.bfcl_dir``, or the bfcl-eval package when unset),
    answered by ``model`` with its training system prompt. Writes bfcl_<label>.json (bfcl_score.json's
    shape, plus ``label``, ``generate_seconds``, ``prompt_tokens_max``, ``truncated_prompts``),
    bfcl_predictions_<label>.jsonl and bfcl_verdicts_<label>.jsonl; returns the report. ``generate``
    replaces the model (tests)."""
    checker = SchemaChecker()
    items = load_bfcl(cfg.data, checker, categories=list(cfg.evaluate.bfcl_categories),
                      key="evaluate.bfcl_categories", limit=cfg.evaluate.bfcl_limit)
    info: dict = {}
    generate = generate or model_generate(cfg, model, tok, f"bfcl {label}", info)
    report, verdicts = answer_and_score(cfg, ctx, items, generate, checker, f"bfcl_predictions_{label}.jsonl")
    report = {"label": label, **report, **info}
    if ctx.is_main:
        write_jsonl(ctx.path(f"bfcl_verdicts_{label}.jsonl"), verdicts)
        write_json(ctx.path(f"bfcl_{label}.json"), report)
    print(markdown_table(report, f"BFCL: {label}"), file=sys.stdout)
    return report
