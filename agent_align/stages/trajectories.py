"""stage=trajectories: import agent trajectories (OpenAI or ShareGPT format), synthesise more from a
task spec, quality-filter everything, and report what was dropped and why (seed 004).

    python -m agent_align stage=trajectories trajectories.inputs=[a.jsonl,b.json] trajectories.source_format=auto
    python -m agent_align stage=trajectories trajectories.spec=experiments/task_spec_example.yaml trajectories.n_synthetic=300

Checks: every call validates against its tool, the episode ends in a final answer, exact and
near-duplicates (trajectories.near_duplicate) dropped, length limits (max_messages, max_chars).
Writes trajectories/clean.jsonl ({"id", "messages", "tools", "source"}) and trajectories/report.json.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from agent_align.errors import UserError
from agent_align.jsonl import read_json_or_yaml, write_json, write_jsonl
from agent_align.stages.context import RunContext
from agent_align.steps import synth
from agent_align.steps.trajectories import quality_filter, standardise

log = logging.getLogger(__name__)


def read_rows(path: str) -> list[dict]:
    data = read_json_or_yaml(path, "trajectories.inputs")
    if isinstance(data, dict):
        data = data.get("data") or data.get("trajectories") or [data]
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a list of trajectories (JSON array or JSONL)")
    return data


def run(cfg, ctx: RunContext) -> dict:
    tc = cfg.trajectories
    if not tc.inputs and not tc.spec:
        raise UserError("config key 'trajectories.inputs' is empty and 'trajectories.spec' is null: give files "
                        "to import (trajectories.inputs=[a.jsonl]) or a task spec (trajectories.spec=spec.yaml)")
    trajs, skipped, per_source_in = [], Counter(), Counter()
    for path in tc.inputs:
        if not Path(path).exists():
            raise UserError(f"{path}: file not found (trajectories.inputs)")
        got, sk = standardise(read_rows(path), tc.source_format, path)
        trajs += got
        skipped.update(sk)
        per_source_in[path] += len(got)
    synthetic = 0
    if tc.spec:
        tools, examples = synth.load_spec(tc.spec)
        teacher = synth.model_teacher(cfg, ctx) if tc.teacher == "model" else None
        made = synth.synthesize(tools, examples, tc.n_synthetic, cfg.seed, teacher)
        made = synth.augment(made, list(tc.augment), tc.distractors, cfg.seed)
        synthetic = len(made)
        per_source_in["synthetic"] += synthetic
        trajs += made
    kept, report = quality_filter(trajs, max_messages=tc.max_messages, max_chars=tc.max_chars,
                                  near_duplicate=tc.near_duplicate)
    report["skipped_unknown_format"] = dict(skipped)
    report["input_by_source"] = dict(per_source_in)
    report["kept_by_source"] = dict(Counter("synthetic" if t["source"] == "synthetic" else t["source"] for t in kept))
    dest = tc.output or str(ctx.path("trajectories", "clean.jsonl"))
    report["output"] = dest
    if ctx.is_main:
        write_jsonl(dest, kept)
        write_json(Path(dest).with_name("report.json"), report)
    log.info("trajectories: %d in (%d synthetic), %d kept -> %s; dropped %s", report["input"], synthetic,
             report["kept"], dest, report["dropped"] or "none")
    return report
