"""stage=agent: run episodes of the agentic environment and write trajectories, preference data and a summary.

    python -m agent_align stage=agent agent=expert agent.split=train              # expert (SFT) trajectories
    python -m agent_align stage=agent agent=informed agent.model_path=CKPT        # + step-level pairs
    python -m agent_align stage=agent agent.model_path=CKPT                       # evaluation, no expert
    python -m agent_align stage=agent ... agent.resume_from=runs/x/...            # keep finished episodes

Writes, in the run directory: trajectories/<sample_id>.json (steps + seed 003's metadata),
sft/trajectories.jsonl and sft/steps.jsonl (successful episodes), preferences/step_pairs.jsonl (agent.save_alternate_trace),
preferences/trajectory_pairs.jsonl (agent.trajectory_pairs) and agent_summary.json.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections import defaultdict
from pathlib import Path

from agent_align.env.config import expert_mode
from agent_align.env.environment import STEP_CATEGORIES, OrgEnv
from agent_align.env.preferences import (shuffled, sft_rows, sft_step_rows, step_pairs, trajectory_pairs,
                                         with_final_anchors, with_mirrors, with_step_anchors)
from agent_align.env.tasks import select_split
from agent_align.errors import config_error, file_error
from agent_align.jsonl import write_json, write_jsonl
from agent_align.progress import Progress
from agent_align.stages.context import RunContext

log = logging.getLogger(__name__)


def sample_ids(tasks: list[dict], num_samples: int) -> list[tuple[dict, int, str]]:
    return [(t, k, t["task_id"] if num_samples == 1 else f"{t['task_id']}-s{k}") for t in tasks for k in range(num_samples)]


def read_trajectories(run_dir: str | Path, key: str) -> dict[str, dict]:
    """sample_id -> record for every trajectory file of a run directory."""
    d = Path(run_dir) / "trajectories"
    if not d.is_dir():
        raise config_error(key, str(run_dir), f"no trajectories/ directory in it; point {key} at an agent run dir")
    out = {}
    for p in sorted(d.glob("*.json")):
        try:
            rec = json.loads(p.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise file_error(p, None, f"malformed trajectory ({exc})", "delete it to re-run that episode") from None
        out[rec["sample_id"]] = rec
    return out


def _rates(records: list[dict]) -> dict:
    n = len(records)
    return {"n": n, "success_rate": sum(r["success"] for r in records) / n if n else 0.0,
            "avg_steps": sum(r["total_time_steps"] for r in records) / n if n else 0.0}


def summarize(records: list[dict]) -> dict:
    steps = [s for r in records for s in r["steps"]]
    by = {"by_scenario": defaultdict(list), "by_tool_availability": defaultdict(list)}
    for r in records:
        by["by_scenario"][r["scenario"]].append(r)
        by["by_tool_availability"][r["tool_availability"]].append(r)
    cats = {c: 0 for c in STEP_CATEGORIES}
    for s in steps:
        cats[s["category"]] += 1
    trackers = [x for r in records for x in r["expert_assistance"]["tracker"]]
    return {**_rates(records),
            "valid_call_rate": sum(s["category"] != "invalid_call" for s in steps) / len(steps) if steps else 0.0,
            "policy_violations": sum(r["policy_violations"] for r in records),
            "by_scenario": {k: _rates(v) for k, v in sorted(by["by_scenario"].items())},
            "by_tool_availability": {k: _rates(v) for k, v in sorted(by["by_tool_availability"].items())},
            "step_categories": cats, "expert_step_fraction": sum(trackers) / len(trackers) if trackers else 0.0,
            "truncated": sum(r["truncated"] for r in records)}


def _finished(cfg, ctx: RunContext, wanted: set[str]) -> dict[str, dict]:
    """Episodes already done: from agent.resume_from (copied in) and, with resume=auto, this run dir."""
    done: dict[str, dict] = {}
    here = ctx.path("trajectories")
    if cfg.agent.resume_from:
        src = Path(cfg.agent.resume_from).resolve()
        for sid, rec in read_trajectories(src, "agent.resume_from").items():
            if sid in wanted:
                done[sid] = rec
                if src != ctx.run_dir:
                    here.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src / "trajectories" / f"{sid}.json", here / f"{sid}.json")
    if cfg.resume == "auto" and here.is_dir():
        done.update({sid: r for sid, r in read_trajectories(ctx.run_dir, "run_dir").items() if sid in wanted})
    return done


def run(cfg, ctx: RunContext) -> dict:
    from agent_align.agents import build_agent
    from agent_align.agents.llm import build_expert, build_judge
    from agent_align.agents.runner import Runner

    a = cfg.agent
    start = time.perf_counter()
    with OrgEnv(cfg.env) as org:
        samples = sample_ids(select_split(org.tasks, a.split, a.limit), a.num_samples)
        done = _finished(cfg, ctx, {sid for _, _, sid in samples})
        todo = [s for s in samples if s[2] not in done]
        log.info("%d episodes (%d tasks x %d samples): %d finished before, %d to run", len(samples),
                 len(samples) // a.num_samples, a.num_samples, len(done), len(todo))
        mode = expert_mode(a)
        new = []
        if todo:
            agent = build_agent(cfg, ctx) if mode != "ground_truth" else None  # the expert does every step
            expert = build_expert(cfg, ctx) if mode is not None else None
            runner = Runner(org, agent, expert, build_judge(cfg, ctx), a, fmt=cfg.data.format, seed=cfg.seed)
            with Progress(len(todo), f"episodes ({a.backend}, expert {mode})", unit="episode") as bar:
                for rec in runner.run(todo):
                    if ctx.is_main:  # written as each episode ends: an interrupted run resumes from here
                        write_json(ctx.path("trajectories", f"{rec['sample_id']}.json"), rec)
                    new.append(rec)
                    bar.update(1)
    run_seconds = time.perf_counter() - start
    order = {sid: i for i, (_, _, sid) in enumerate(samples)}
    records = sorted([*done.values(), *new], key=lambda r: order[r["sample_id"]])
    summary = summarize(records)
    summary.update(expert_mode=mode, backend=a.backend, split=a.split, subdomain_mode=cfg.env.subdomain_mode,
                   episodes_run=len(new), seconds=round(run_seconds, 3),
                   episodes_per_s=round(len(new) / run_seconds, 2) if new else None)
    if ctx.is_main:
        summary["sft_rows"] = write_jsonl(ctx.path("sft", "trajectories.jsonl"), sft_rows(records))
        summary["sft_step_rows"] = write_jsonl(ctx.path("sft", "steps.jsonl"), sft_step_rows(records))
        if a.save_alternate_trace:
            rows = step_pairs(records, cfg.data.format)
            others = [r for other in a.pair_runs for r in read_trajectories(other, "agent.pair_runs").values()] \
                if a.mirror_pairs or a.step_anchors else []
            if a.mirror_pairs:
                rows = with_mirrors([*records, *others], rows, cfg.data.format)
            elif a.final_anchors:
                rows = with_final_anchors(records, rows, cfg.data.format)
            if a.step_anchors:
                rows = with_step_anchors([*records, *others], rows, a.step_anchors, cfg.seed, cfg.data.format)
            summary["step_pairs"] = write_jsonl(ctx.path("preferences", "step_pairs.jsonl"), shuffled(rows, cfg.seed))
            summary["final_anchors"] = sum(r["taken_by"] == "anchor" for r in rows)
            summary["mirror_pairs"] = sum(r["taken_by"] == "mirror" for r in rows)
            summary["step_anchors"] = sum(r["taken_by"] == "step_anchor" for r in rows)
        if a.trajectory_pairs:
            others = [r for other in a.pair_runs for r in read_trajectories(other, "agent.pair_runs").values()]
            rows = trajectory_pairs(records, a.mask_suboptimal_traces, a.max_pairs_per_task, others)
            summary["trajectory_pairs"] = write_jsonl(ctx.path("preferences", "trajectory_pairs.jsonl"),
                                                       shuffled(rows, cfg.seed))
        write_json(ctx.path("agent_summary.json"), summary)
    log.info("success %.3f over %d episodes (avg %.2f steps, valid calls %.3f, %d policy violations); %s",
             summary["success_rate"], summary["n"], summary["avg_steps"], summary["valid_call_rate"],
             summary["policy_violations"], ctx.path("agent_summary.json"))
    return summary
