"""stage=evaluate: batched greedy generation, then the validator: SSPR and the failure breakdown
overall, per tool, per split (seen, unseen, and parallel: requests needing several calls), and on
optional robustness sets.

    python -m agent_align stage=evaluate evaluate.model_path=runs/x/checkpoints/dpo evaluate.robustness=[typos,reorder]

Writes eval_<label>.json, predictions_<label>.jsonl and verdicts_<label>.jsonl in the run directory.
"""

from __future__ import annotations

import logging
from collections import defaultdict

from agent_align.data.robustness import perturb
from agent_align.generation import call_budgets, call_stop, generate_by_budget
from agent_align.hardware import resolve_precision
from agent_align.jsonl import read_jsonl, write_json, write_jsonl
from agent_align.stages.context import RunContext
from agent_align.stages.generate import data_paths
from agent_align.train.encode import chat_of, system_prompt
from agent_align.validation.validator import SchemaChecker, breakdown_table, summarize, validate_output

log = logging.getLogger(__name__)


def predict(cfg, model, tok, enc, rows: list[dict], desc: str) -> list[str]:
    system = system_prompt(cfg)
    if cfg.data.negatives == "nat":  # NAT: inference always uses the positive tag
        from agent_align.steps.nat import with_positive_tag

        rows = with_positive_tag(rows, cfg)
    ids = [enc.prompt_ids(chat_of(r, system)) for r in rows]
    batch = cfg.evaluate.batch_size or cfg.hardware.eval_batch_size
    out = generate_by_budget(model, tok, ids, call_budgets(rows, cfg.evaluate.max_new_tokens), batch_size=batch,
                             bf16=resolve_precision(cfg.hardware) == "bf16", desc=desc, stop_at_call=call_stop(cfg),
                             fail_fast="json")  # prose answers end on their first token (agent_align/call_end.py)
    texts = [tok.decode(seqs[0], skip_special_tokens=True) for seqs in out]
    return texts


def score(cfg, rows: list[dict], outputs: list[str]) -> tuple[dict, list]:
    checker = SchemaChecker()
    verdicts = [validate_output(o, r["schema"], cfg.data.format, checker) for r, o in zip(rows, outputs)]
    summary = summarize(verdicts)
    groups: dict[str, dict[str, list]] = {"by_split": defaultdict(list), "by_tool": defaultdict(list)}
    for r, v in zip(rows, verdicts):
        groups["by_split"][r.get("split", "seen")].append(v)
        if not r.get("calls"):  # rows needing several calls count in by_split.parallel, not per tool
            groups["by_tool"][r.get("tool", "?")].append(v)
    for key, g in groups.items():
        summary[key] = {name: summarize(vs) for name, vs in sorted(g.items())}
    return summary, verdicts


def evaluate_model(cfg, ctx: RunContext, model, tok, enc, label: str) -> dict:
    _, eval_path = data_paths(cfg, ctx)
    rows = read_jsonl(eval_path, "data.eval_path", required=("prompt", "schema"))
    if cfg.evaluate.limit:
        rows = rows[: cfg.evaluate.limit]
    outputs = predict(cfg, model, tok, enc, rows, f"eval {label}")
    summary, verdicts = score(cfg, rows, outputs)
    for name in cfg.evaluate.robustness:
        variant = perturb(rows, name, cfg.seed)
        summary.setdefault("robustness", {})[name] = score(cfg, variant, predict(cfg, model, tok, enc, variant,
                                                                                  f"eval {label} [{name}]"))[0]
    if ctx.is_main:
        write_jsonl(ctx.path(f"predictions_{label}.jsonl"), ({"id": r.get("id"), "output": o} for r, o in zip(rows, outputs)))
        write_jsonl(ctx.path(f"verdicts_{label}.jsonl"), (v.as_row(r.get("id")) | {"tool": r.get("tool"), "split": r.get("split")}
                                                          for r, v in zip(rows, verdicts)))
        write_json(ctx.path(f"eval_{label}.json"), summary)
    print(breakdown_table(f"{label.upper()} MODEL EVALUATION", summary))
    splits = ", ".join(f"{k} {v['sspr']:.3f}" for k, v in summary["by_split"].items())
    log.info("%s: SSPR %.3f (%s)", label, summary["sspr"], splits)
    return summary


def run(cfg, ctx: RunContext) -> dict:
    if cfg.data.name == "bfcl":  # the model's training system prompt added, as in every evaluation
        from agent_align.bfcl.stages import evaluate_stage, model_generate
        from agent_align.stages.sft import policy

        model, tok, _ = policy(cfg, ctx, cfg.evaluate.model_path, for_training=False)
        return evaluate_stage(cfg, ctx, model_generate(cfg, model, tok, "bfcl"))
    from agent_align.stages.sft import policy

    model, tok, enc = policy(cfg, ctx, cfg.evaluate.model_path, for_training=False)
    return evaluate_model(cfg, ctx, model, tok, enc, cfg.evaluate.label)
