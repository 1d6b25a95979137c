"""Training rows from trajectories, in the shapes the ``sft`` and ``dpo`` stages read.

  SFT          {"messages": [...], "tools": [...]}                     (successful trajectories)
  SFT per step {"prompt": [history], "chosen": "reply", "tools": [...]} (the same, one trained turn per row)
  step pairs   {"prompt": [history], "chosen": [expert turn], "rejected": [agent turn], "tools": [...]}
  trajectory   {"prompt": [system, user], "chosen": [turns of a success], "rejected": [turns of a failure],
                "chosen_scores": [1|0 per assistant turn], "rejected_scores": [...], "continuations": [...], ...}

Assistant messages carry ``"train": true|false``; ``agent_align.env.masking`` turns that, and the
rule that tool observations are never trained on, into a loss mask. Trajectory pairs also carry the
environment's own per-turn scores (``turn_scores``) and, for Step-DPO, the policy's own correct turn
at the failure's first wrong turn (``on_policy_turn``), so ``loss=stepwise|step_dpo`` need no step
scorer. Extra keys (``sample_id``, categories, ...) are metadata for analysis.
"""

from __future__ import annotations

import copy
import itertools
import random
from collections import defaultdict

from agent_align.env.environment import GOOD
from agent_align.tools.library import Tool, call_schema
from agent_align.validation.extract import extract_call


def _step_ok(step: dict) -> bool:
    return step["category"] in GOOD and step["progress"]


def turn_scores(record: dict) -> list[float]:
    """One score per assistant turn of an episode, from the environment: 1 when the step's category is good
    and it made progress (the turns ``mask_suboptimal_traces`` trains on the chosen side), else 0."""
    return [1.0 if _step_ok(s) else 0.0 for s in record["steps"]]


def _turn_positions(messages: list[dict]) -> list[int]:
    return [i for i, m in enumerate(messages) if m["role"] == "assistant"]


def same_history(a: list[dict], b: list[dict]) -> bool:
    """The same turns and observations, whatever their ``train`` marks (the two sides of a pair mark them
    differently)."""
    return [(m["role"], m.get("content")) for m in a] == [(m["role"], m.get("content")) for m in b]


def on_policy_turn(failure: dict, successes: list[dict]) -> dict | None:
    """Step-DPO's chosen turn from the policy itself (agent_align.steps.pairs reads it as a continuation):
    the next turn of the first success whose history equals the failure's up to its first wrong turn.
    The same turns give the same observations (the environment is deterministic), so that turn was taken
    in the very state the wrong one was. The turn must be the agent's own (not an expert's) and good.
    None when the failure has no wrong turn or no success shares its state."""
    k = next((i for i, s in enumerate(failure["steps"]) if not _step_ok(s)), None)
    if k is None:
        return None
    cut = _turn_positions(failure["messages"])[k]
    for s in successes:
        turns = _turn_positions(s["messages"])
        if len(turns) > k and turns[k] == cut and s["steps"][k]["actor"] == "agent" and _step_ok(s["steps"][k]) \
                and same_history(s["messages"][:cut], failure["messages"][:cut]):
            return {"text": [{"role": "assistant", "content": s["messages"][cut]["content"]}], "scores": [1.0],
                    "step_index": k, "source": "on_policy", "sample_id": s["sample_id"]}
    return None


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


ATTACHED = ("anchor", "mirror", "step_anchor")  # rows that follow the pair they were added for


def _state_pair(source: dict, history: list[dict], chosen: str, rejected: str, fmt: str, **meta) -> dict:
    """A step pair at ``history`` (a state of ``source``'s task, whose tools it carries): one assistant turn a side,
    the chosen call's schema, and ``meta`` (sample_id, step, taken_by, categories)."""
    return {**{k: source[k] for k in ("tools", "task_id", "scenario", "tool_availability")},
            "schema": _chosen_schema(source["tools"], chosen, fmt),
            "prompt": [{"role": m["role"], "content": m["content"]} for m in history],
            "chosen": [{"role": "assistant", "content": chosen}], "rejected": [{"role": "assistant", "content": rejected}],
            "granularity": "step", **meta}


def _final_state(record: dict) -> tuple[list[dict], dict, dict] | None:
    """(history, correct FINAL turn, the last successful call before it) of a successful episode."""
    turns = _turn_positions(record["messages"])
    if not record["success"] or record["steps"][-1]["category"] != "correct_final":
        return None
    calls = [turns[k] for k, s in enumerate(record["steps"][:-1]) if s["category"] == "correct"]
    if not calls:
        return None
    msgs = record["messages"]
    return msgs[:turns[-1]], msgs[turns[-1]], msgs[calls[-1]]


def with_final_anchors(records: list[dict], rows: list[dict], fmt: str = "json") -> list[dict]:
    """``rows`` (step pairs) with an anchor pair right after each one whose rejected turn is a premature
    FINAL (``wrong_final`` where the expert would have called a tool): in a successful episode of the same
    task, at the state where its correct FINAL was given, chosen = that FINAL, rejected = repeating its
    last successful call (what the environment scores ``redundant``). Without them DPO learns the shortcut
    "FINAL is bad" from the premature FINALs and the policy stops answering (measured in
    docs/agent_env.md); the anchors keep the lesson to "not yet". Interleaved, so that ``dpo.max_pairs``
    (the first pairs of the file) keeps the balance."""
    finals = defaultdict(list)
    for r in records:
        state = _final_state(r)
        if state is not None:
            finals[r["task_id"]].append((r, state))
    out, used = [], defaultdict(int)
    for row in rows:
        out.append(row)
        options = finals.get(row["task_id"])
        if row["rejected_category"] != "wrong_final" or row["chosen_category"] == "correct_final" or not options:
            continue
        r, (history, final, before) = options[used[row["task_id"]] % len(options)]
        used[row["task_id"]] += 1
        out.append(_state_pair(row, history, final["content"], before["content"], fmt, sample_id=r["sample_id"],
                               step=len(r["steps"]) - 1, taken_by="anchor", chosen_category="correct_final",
                               rejected_category="redundant"))
    return out


def _tool(content: str, fmt: str) -> str | None:
    call, _ = extract_call(content, fmt)
    return call.get("tool") if isinstance(call, dict) else None


def _right_calls(record: dict, fmt: str) -> list[tuple[int, str, list[dict], dict]]:
    """(step, tool, history, turn) for every turn of an episode that was right and made progress."""
    msgs, turns = record["messages"], _turn_positions(record["messages"])
    return [(k, _tool(msgs[turns[k]]["content"], fmt), msgs[:turns[k]], msgs[turns[k]])
            for k, step in enumerate(record["steps"]) if _step_ok(step)]


def _answer(content: str, fmt: str):
    call, _ = extract_call(content, fmt)
    return (call.get("parameters") or {}).get("answer") if isinstance(call, dict) else None


def with_mirrors(records: list[dict], rows: list[dict], fmt: str = "json") -> list[dict]:
    """``rows`` (step pairs) with a mirror pair right after each one whose chosen turn (step k) calls tool A
    where the rejected one called tool B. A pair says "A, not B, here"; a 135M policy learns the tool name
    as a bias toward A in every task (measured in docs/agent_env.md: pairs favouring ``retrieve_documents``
    first in the document tasks flipped the meeting-floor tasks, which need ``get_calendar`` first, from
    6/12 to 0/12; chosen refusals made it refuse answerable tasks). The mirror says "B, not A, there", from
    a successful episode (the policy's own, or the expert's from ``agent.pair_runs``) of another task whose
    step k was a right B call, so the two pairs differ in the task and what is left to learn is which task
    wants which tool:

    - chosen = that B call; rejected = the episode's own A call (made earlier: ``redundant``, a repeat; or
      later: ``premature``);
    - when A is FINAL (a refusal, or an answer), rejected = the pair's chosen FINAL, which is wrong there
      (the mirror's task is answerable and its answer differs).

    When no other task has such a step, the mirror comes from a success of the same task at any step where
    B was right, rejected = repeating an earlier call (A's if any); premature FINALs (B = FINAL) get the
    final anchor this way. Pairs with neither get none. Interleaved, so ``dpo.max_pairs`` keeps the balance."""
    by_step, by_task = defaultdict(list), defaultdict(list)
    for r in records:
        if r["success"]:
            right = _right_calls(r, fmt)
            for k, tool, history, turn in right:
                entry = (r, k, history, turn, [(j, t, m) for j, t, _, m in right if j != k and t != "FINAL"])
                by_step[(k, tool)].append(entry)
                by_task[(r["task_id"], tool)].append(entry)
    out, used = [], defaultdict(int)
    for row in rows:
        out.append(row)
        chosen = row["chosen"][0]
        a, b = _tool(chosen["content"], fmt), _tool(row["rejected"][0]["content"], fmt)
        if a is None or b is None or a == b:
            continue
        options = []
        for r, k, history, turn, calls in by_step.get((row["step"], b), []):
            if r["task_id"] == row["task_id"]:
                continue
            if a == "FINAL":
                if r["task"]["answerable"] and _answer(chosen["content"], fmt) != r["task"]["answer"]:
                    options.append((r, history, turn, chosen, "wrong_final"))
            else:
                own = sorted((abs(j - k), j < k, m) for j, t, m in calls if t == a)
                if own:
                    options.append((r, history, turn, own[0][2], "redundant" if own[0][1] else "premature"))
        key = (row["step"], a, b)  # successive pairs of one kind take successive episodes
        if not options:
            key = (row["task_id"], b)
            for r, k, history, turn, calls in by_task.get(key, []):
                earlier = [(t, m) for j, t, m in calls if j < k and t != b]
                if earlier:
                    repeat = next((m for t, m in reversed(earlier) if t == a), earlier[-1][1])
                    options.append((r, history, turn, repeat, "redundant"))
        if not options:
            continue
        r, history, turn, rejected, why = options[used[key] % len(options)]
        used[key] += 1
        out.append(_state_pair(r, history, turn["content"], rejected["content"], fmt, sample_id=r["sample_id"],
                               step=len(_turn_positions(history)), taken_by="mirror",
                               chosen_category="correct_final" if b == "FINAL" else "correct", rejected_category=why))
    return out


def with_step_anchors(records: list[dict], rows: list[dict], per_pair: float, seed, fmt: str = "json") -> list[dict]:
    """``rows`` (step pairs, with their mirrors) with ``per_pair`` step anchors after each pair on average: a right
    turn of a successful episode as both sides of a pair (``taken_by="step_anchor"``). Chosen and rejected are the
    same tokens under the same mask, so the DPO margin is exactly zero whatever the policy and its gradient cancels;
    what trains is the NLL term of ``loss=rpo`` on that turn. That is SFT on the expert's (or the policy's own)
    right steps mixed into DPO: a pair "A, not B" moves the logits of every task that looks alike (a 135M policy
    flips whole task families, docs/agent_env.md), and the anchors, drawn from every train task in a seeded
    order, pull the families the pairs say nothing about back to their right turns. Interleaved like mirrors,
    so ``dpo.max_pairs`` keeps the proportion."""
    pool = [(r, k, history, turn) for r in records if r["success"] for k, _, history, turn in _right_calls(r, fmt)]
    if not pool or per_pair <= 0:
        return rows
    random.Random(f"anchors-{seed}").shuffle(pool)
    out, credit, used = [], 0.0, 0
    for i, row in enumerate(rows):
        out.append(row)
        if i + 1 < len(rows) and rows[i + 1].get("taken_by") in ATTACHED:
            continue  # after the pair's mirror, so the two stay together
        credit += per_pair
        while credit >= 1:
            credit -= 1
            r, k, history, turn = pool[used % len(pool)]
            used += 1
            category = r["steps"][k]["category"]
            out.append(_state_pair(r, history, turn["content"], turn["content"], fmt, sample_id=r["sample_id"], step=k,
                                   taken_by="step_anchor", chosen_category=category, rejected_category=category))
    return out


def shuffled(rows: list[dict], seed) -> list[dict]:
    """``rows`` in a seeded random order, each anchor or mirror kept right after its pair. The dpo stage's
    ``dpo.max_pairs`` takes the first pairs of a file; in episode order those would be the first tasks'."""
    units: list[list[dict]] = []
    for r in rows:
        if r.get("taken_by") in ATTACHED and units:
            units[-1].append(r)
        else:
            units.append([r])
    random.Random(f"pairs-{seed}").shuffle(units)
    return [r for unit in units for r in unit]


def trajectory_pairs(records: list[dict], mask_suboptimal: bool, max_per_task: int,
                     others: list[dict] = ()) -> list[dict]:
    """Success vs failure of the same task (same prompt and tools: several samples or agents). With
    ``mask_suboptimal``, the chosen side trains only on steps that made progress and the rejected side
    only on steps that did not, so a shared good step is neither pushed up nor down; pairs whose
    rejected side has nothing left to train on are dropped.

    ``others`` (other runs' episodes, ``agent.pair_runs``) pair like ``records`` but never supply the
    on-policy turn: only ``records`` are the policy's own samples. Each row carries ``chosen_scores`` /
    ``rejected_scores`` (``turn_scores``) and, when one exists, ``continuations``: ``[on_policy_turn]``."""
    own = {id(r) for r in records}
    groups = defaultdict(list)
    for r in [*records, *others]:
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
            row = {"prompt": copy.deepcopy(w["messages"][:2]), "chosen": chosen, "rejected": rejected,
                   "tools": w["tools"], "granularity": "trajectory", "task_id": task_id,
                   "chosen_sample_id": w["sample_id"], "rejected_sample_id": l["sample_id"],
                   "mask_suboptimal_traces": mask_suboptimal, "scenario": w["scenario"],
                   "tool_availability": w["tool_availability"],
                   "chosen_scores": turn_scores(w), "rejected_scores": turn_scores(l)}
            turn = on_policy_turn(l, [s for s in [w, *wins] if id(s) in own])  # this pair's own success first
            if turn is not None:
                row["continuations"] = [turn]
            rows.append(row)
            made += 1
    return rows
