"""The agentic MDP: one tool call per step, a ``FINAL`` call ends the episode, ``env.horizon`` truncates.

    with OrgEnv(cfg.env) as org:                      # world, index, toolset (+ REST server in rest mode)
        env = org.episode(fmt="json")
        chat = env.reset(task)                        # {"messages": [system, user], "tools": [...]}
        obs, reward, terminated, truncated, info = env.step('{"tool": "get_employee", "parameters": {"name": "Mei Sato"}}')

The FINAL action is a call like any other: ``{"tool": "FINAL", "parameters": {"answer": "..."}}``.
Every step gets one category (``STEP_CATEGORIES``) and its reward; an invalid, forbidden or failing
call returns an error observation (``ERROR <category>[/<validator category>]: ...``) and the episode
goes on. The environment also tracks which ground-truth steps the history already covers, which is
what the replaying expert needs to pick up from any state.
"""

from __future__ import annotations

import copy
import json
import random
import re
from typing import Callable

from agent_align.data.formats import call_json, render_output
from agent_align.env.backends import RestServer, build_index
from agent_align.env.tasks import load_tasks
from agent_align.env.toolset import CANNOT_ANSWER, FINAL, Toolset, parse_policy, violates
from agent_align.env.world import ApiError, build_world
from agent_align.validation.extract import extract_call
from agent_align.validation.validator import Verdict

STEP_CATEGORIES = ("correct", "invalid_call", "tool_error", "policy_violation", "redundant", "wrong_final",
                   "correct_final")
REWARDS = {"correct": 0.1, "invalid_call": -0.5, "tool_error": -0.2, "policy_violation": -0.5, "redundant": -0.1,
           "wrong_final": -1.0, "correct_final": 1.0}
GOOD = ("correct", "correct_final")
_NON_WORD = re.compile(r"[^0-9a-z]+")
_CANNOT = ("cannot answer", "can not answer", "unable to answer", "cannot be answered")

# Short on purpose: every token here is repeated in every step's prompt.
SYSTEM = {
    "json": 'Reply with one tool call {"tool": NAME, "parameters": {...}} per turn. End with the FINAL tool.',
    "react": "Reply with 'Thought:', then 'Action:' and a ```json block holding one tool call "
             '{"tool": NAME, "parameters": {...}}. End with the FINAL tool.',
}


def normalize(text: str) -> list[str]:
    return [w for w in _NON_WORD.split(str(text).lower()) if w and w not in ("a", "an", "the")]


def is_cannot_answer(text: str) -> bool:
    norm = " ".join(normalize(text))
    return any(c in norm for c in _CANNOT)


def match_judge(task: dict, answer: str) -> tuple[bool, str]:
    """Normalised match: the gold answer's words appear, in order and contiguous, in the answer; for a task
    the tools cannot answer, the answer must say so."""
    if not task["answerable"]:
        return is_cannot_answer(answer), "expects a cannot-answer FINAL"
    if is_cannot_answer(answer):
        return False, "answered cannot-answer, but the tools can answer it"
    gold, pred = normalize(task["answer"]), normalize(answer)
    ok = bool(gold) and any(pred[i:i + len(gold)] == gold for i in range(len(pred) - len(gold) + 1))
    return ok, f"gold {task['answer']!r}"


def canonical(call: dict) -> str:
    return json.dumps(call, sort_keys=True, ensure_ascii=False)


def _norm_args(args) -> dict:
    return {k: str(v).strip().lower() for k, v in args.items()} if isinstance(args, dict) else {}


class OrgEnv:
    """What all episodes of a run share: the world, the retrieval index, the toolset, the REST server."""

    def __init__(self, env_cfg):
        self.cfg = env_cfg
        self.world = build_world(env_cfg.world_seed)
        self.index = build_index(env_cfg, self.world)
        self.server = None
        base = env_cfg.rest_base_url
        if env_cfg.subdomain_mode == "rest" and not base:
            self.server = RestServer(self.world).start()
            base = self.server.base_url
        self.toolset = Toolset(env_cfg.subdomain_mode, self.world, self.index, env_cfg.top_k, base,
                               env_cfg.http_timeout_s)
        self._tasks = None

    @property
    def tasks(self) -> list[dict]:
        if self._tasks is None:
            self._tasks = load_tasks(self.cfg, self.world)
        return self._tasks

    def episode(self, fmt: str = "json", judge: Callable | None = None) -> "ToolEnv":
        return ToolEnv(self.toolset, horizon=self.cfg.horizon, fmt=fmt, judge=judge or match_judge,
                       max_chars=self.cfg.observation_max_chars)

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ToolEnv:
    """One episode's state over a shared toolset (gym-style ``reset``/``step``)."""

    def __init__(self, toolset: Toolset, horizon: int, fmt: str = "json", judge: Callable = match_judge,
                 max_chars: int = 600):
        self.toolset, self.horizon, self.fmt, self.judge, self.max_chars = toolset, horizon, fmt, judge, max_chars

    def reset(self, task: dict, sample_index: int = 0) -> dict:
        self.task, self.sample_index = task, sample_index
        self.rules = parse_policy(task["tool_usage"], list(self.toolset.index.collections), f"task {task['task_id']}")
        self.tools = self.toolset.offered(task["tool_availability"])
        self.offered = [t.name for t in self.tools]
        system = SYSTEM[self.fmt] + (f" Tool usage policy: {task['tool_usage']}" if task["tool_usage"] else "")
        self.messages = [{"role": "system", "content": system}, {"role": "user", "content": task["question"]}]
        self.steps: list[dict] = []
        self.selected: set[str] = set()
        self.seen: dict[str, str] = {}  # canonical call -> its observation
        self.gt = [s for s in task["trajectory"] if s["kind"] != "final"]
        self.covered = [False] * len(self.gt)
        self.terminated = self.truncated = self.success = False
        self.final_answer = self.truncated_reason = None
        return self.chat()

    def chat(self) -> dict:
        return {"messages": copy.deepcopy(self.messages), "tools": [t.openai() for t in self.tools]}

    @property
    def done(self) -> bool:
        return self.terminated or self.truncated

    def _clip(self, text: str) -> str:
        return text if len(text) <= self.max_chars else text[:self.max_chars - 1] + "…"

    def evaluate(self, action: str) -> dict:
        """What ``step(action)`` would do, without changing the episode (tools are read-only)."""
        out = {"call": None, "category": None, "validator_category": None, "detail": "", "terminated": False,
               "success": False, "covers": [], "selected": set(self.selected), "target": None}
        call, why = extract_call(action, self.fmt)
        verdict = Verdict(False, "json_error", why) if call is None else self.toolset.check(call, self.offered)
        if not verdict.passed:
            out.update(category="invalid_call", validator_category=verdict.category, detail=verdict.detail,
                       observation=f"ERROR invalid_call/{verdict.category}: {verdict.detail}")
            return out
        out["call"] = call
        target = out["target"] = self.toolset.target(call)
        if target[0] == "final":
            answer = call["parameters"]["answer"]
            ok, detail = self.judge(self.task, answer)
            out.update(category="correct_final" if ok else "wrong_final", detail=detail, terminated=True,
                       success=ok, observation="", answer=answer)
            return out
        collection = call["parameters"].get("collection") if target[0] == "rag" else None
        if violates(self.rules, target, collection):
            out.update(category="policy_violation", detail=self.task["tool_usage"],
                       observation=f"ERROR policy_violation: this call breaks the tool usage policy: "
                                   f"{self.task['tool_usage']}")
            return out
        key = canonical(call)
        if key in self.seen:
            out.update(category="redundant", detail="same call as an earlier step",
                       observation=self.seen[key] + " (repeated call: same result as before)")
            return out
        try:
            result, doc_ids = self.toolset.execute(call, out["selected"])
        except ApiError as exc:
            out.update(category="tool_error", detail=str(exc), observation=f"ERROR tool_error: {exc}")
            return out
        text = json.dumps(result, ensure_ascii=False, separators=(",", ":"))  # compact: fewer tokens per step
        out.update(category="correct", observation=self._clip(text), covers=self._covers(target, call, doc_ids))
        return out

    def _covers(self, target, call, doc_ids) -> list[int]:
        hits = []
        for i, s in enumerate(self.gt):
            if self.covered[i]:
                continue
            if s["kind"] == "rag" and target == ("rag", s["collection"]) and s["doc_id"] in (doc_ids or []):
                hits.append(i)
            elif s["kind"] == "api" and target == ("api", s["endpoint"]) and \
                    _norm_args(self.toolset.api_args(call)) == _norm_args(s["args"]):
                hits.append(i)
        return hits

    def step(self, action: str, actor: str = "agent"):
        if self.done:
            raise RuntimeError("step() on a finished episode; call reset(task) first")
        out = self.evaluate(action)
        category = out["category"]
        self.messages.append({"role": "assistant", "content": action})
        if not out["terminated"]:
            self.messages.append({"role": "tool", "content": out["observation"]})
        if category == "correct":
            self.seen[canonical(out["call"])] = out["observation"]
        self.selected = out["selected"]
        for i in out["covers"]:
            self.covered[i] = True
        self.terminated = out["terminated"]
        self.success = out["success"]
        if self.terminated:
            self.final_answer = out["answer"]
        reward = REWARDS[category]
        record = {"t": len(self.steps), "actor": actor, "action": action, "call": out["call"], "category": category,
                  "validator_category": out["validator_category"], "reward": reward, "detail": out["detail"],
                  "observation": out["observation"], "progress": bool(out["covers"]) or category == "correct_final"}
        self.steps.append(record)
        if not self.terminated and len(self.steps) >= self.horizon:
            self.truncate("horizon")
        info = {k: record[k] for k in ("category", "validator_category", "detail", "progress")}
        return out["observation"], reward, self.terminated, self.truncated, info

    def truncate(self, reason: str) -> None:
        """End the episode without a FINAL: the horizon is reached, or the context no longer fits the model."""
        self.truncated, self.truncated_reason = True, reason

    # --- the ground-truth expert's view of the state ---------------------------------------------------
    def expert_call(self) -> dict:
        """The next ground-truth call from the current state: the first step the history has not covered
        (in this mode's tool syntax), else FINAL with the gold answer."""
        for i, s in enumerate(self.gt):
            if not self.covered[i]:
                return self.toolset.concrete(s, self.selected)
        return self.toolset.concrete(self.task["trajectory"][-1], self.selected)

    def render(self, call: dict, seed: int = 0) -> str:
        """A call as the model's reply text in this env's output format."""
        if self.fmt == "json":
            return call_json(call)
        return render_output(call, "react", call["tool"], random.Random(seed))


__all__ = ["OrgEnv", "ToolEnv", "STEP_CATEGORIES", "REWARDS", "GOOD", "match_judge", "is_cannot_answer",
           "CANNOT_ANSWER", "FINAL"]
