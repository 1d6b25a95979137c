"""Training rows from trajectories, in the shapes the ``sft`` and ``dpo`` stages read.

  SFT          {"messages": [...], "tools": [...]}                     (successful trajectories)
  SFT per step {"prompt": [history], "chosen": "reply", "tools": [...]} (the same, one trained turn per row)
  step pairs   {"prompt": [history], "chosen": [expert turn], "rejected": [agent turn], "tools": [...]}
  trajectory   {"prompt": [system, user], "chosen": [turns of a success], "rejected": [turns of a failure], ...}

Assistant messages carry ``"train": true|false``; ``agent_align.env.masking`` turns that, and the
rule that tool observations are never trained on, into a loss mask. Extra keys (``sample_id``,
categories, ...) are metadata for analysis.
"""

from __future__ import annotations

import copy
import itertools
from collections import defaultdict

from agent_align.env.environment import GOOD
from agent_align.tools.library import Tool, call_schema
from agent_align.validation.extract import extract_call


def _step_ok(step: dict) -> bool:
    return step["category"] in GOOD and step["progress"]


def annotated(messages: list[dict], steps: list[dict], keep) -> list[dict]:
    """A copy of ``messages`` whose k-th assistant turn has ``train = keep(steps[k])``."""
    out, k = copy.deepcopy(messages), 0
    for m in out:
        if m["role"] == "assistant":
            m["train"] = bool(keep(steps[k]))
            k += 1
    return out


def sft_rows(records: list[dict]) -> list[dict]:
    """Successful trajectories; turns that failed or made no progress are kept as context, not trained."""
    return [{"messages": annotated(r["messages"], r["steps"], _step_ok), "tools": r["tools"], "sample_id": r["sample_id"],
             "task_id": r["task_id"], "scenario": r["scenario"], "tool_availability": r["tool_availability"]}
            for r in records if r["success"]]


def sft_step_rows(records: list[dict]) -> list[dict]:
    """The same supervision one turn per row, ``{"prompt": history, "chosen": reply, "tools"}``: what a
    trainer that takes single-turn completions can use, with observations only ever in the prompt."""
    rows = []
    for r in sft_rows(records):
        for i, m in enumerate(r["messages"]):
            if m["role"] == "assistant" and m["train"]:
                rows.append({"prompt": [{"role": x["role"], "content": x["content"]} for x in r["messages"][:i]],
                             "chosen": m["content"], "tools": r["tools"], "sample_id": r["sample_id"]})
    return rows


def _chosen_schema(tools: list[dict], reply: str, fmt: str):
    """JSON Schema of the chosen call's tool (the dpo stage's rows carry the schema their chosen satisfies)."""
    call, _ = extract_call(reply, fmt)
    for t in tools:
        if call and t["function"]["name"] == call.get("tool"):
            f = t["function"]
            return call_schema(Tool(f["name"], f.get("description", ""), f["parameters"]))
    return None


def step_pairs(records: list[dict], fmt: str = "json") -> list[dict]:
    rows = []
    for r in records:
        for alt in r.get("alternate_traces", []):
            rows.append({"prompt": copy.deepcopy(r["messages"][:alt["prompt_messages"]]),
                         "schema": _chosen_schema(r["tools"], alt["chosen"], fmt),
                         "chosen": [{"role": "assistant", "content": alt["chosen"]}],
                         "rejected": [{"role": "assistant", "content": alt["rejected"]}],
                         "tools": r["tools"], "granularity": "step", "sample_id": r["sample_id"],
                         "task_id": r["task_id"], "step": alt["t"], "taken_by": alt["taken_by"],
                         "chosen_category": alt["chosen_category"], "rejected_category": alt["rejected_category"],
                         "scenario": r["scenario"], "tool_availability": r["tool_availability"]})
    return rows


def trajectory_pairs(records: list[dict], mask_suboptimal: bool, max_per_task: int) -> list[dict]:
    """Success vs failure of the same task (same prompt and tools: several samples or agents). With
    ``mask_suboptimal``, the chosen side trains only on steps that made progress and the rejected side
    only on steps that did not, so a shared good step is neither pushed up nor down; pairs whose
    rejected side has nothing left to train on are dropped."""
    groups = defaultdict(list)
    for r in records:
        groups[(r["task_id"], repr(r["messages"][:2]), repr(r["tools"]))].append(r)
    rows = []
    for (task_id, _, _), recs in groups.items():
        wins = [r for r in recs if r["success"]]
        losses = [r for r in recs if not r["success"]]
        made = 0
        for w, l in itertools.product(wins, losses):
            if made >= max_per_task:
                break
            chosen = annotated(w["messages"], w["steps"], _step_ok if mask_suboptimal else lambda s: True)[2:]
            rejected = annotated(l["messages"], l["steps"], (lambda s: not _step_ok(s)) if mask_suboptimal
                                 else lambda s: True)[2:]
            if not any(m.get("train") for m in rejected if m["role"] == "assistant"):
                continue
            rows.append({"prompt": copy.deepcopy(w["messages"][:2]), "chosen": chosen, "rejected": rejected,
                         "tools": w["tools"], "granularity": "trajectory", "task_id": task_id,
                         "chosen_sample_id": w["sample_id"], "rejected_sample_id": l["sample_id"],
                         "mask_suboptimal_traces": mask_suboptimal, "scenario": w["scenario"],
                         "tool_availability": w["tool_availability"]})
            made += 1
    return rows
