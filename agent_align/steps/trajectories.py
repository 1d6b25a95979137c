"""Trajectory data management (seed 004): import, standardise and quality-check agent trajectories.

Our trajectory format is ``{"id", "messages", "tools", "source"}``: OpenAI-style messages where an
assistant turn that calls a tool holds the call as JSON text ``{"tool": NAME, "parameters": {...}}``
(one call per turn, as the agent environment executes them), ``tool`` messages hold observations,
and the last assistant turn is the final answer; ``tools`` are OpenAI function definitions.

Importers: OpenAI messages (assistant ``tool_calls`` + ``tool`` messages; parallel calls become
consecutive call turns, each followed by its result) and ShareGPT (``conversations`` with
``human``/``gpt``/``function_call``/``observation``/``system`` roles, ``tools`` as a JSON string).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter, defaultdict
from typing import Any

from agent_align.errors import UserError
from agent_align.steps.scorers import FINAL_TOOLS, find_call, normalize_call
from agent_align.tools.library import Tool, call_schema
from agent_align.validation.validator import SchemaChecker

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "function_call": "call", "observation": "tool", "function": "tool", "tool": "tool",
                  "system": "system"}


def _args(raw: Any) -> Any:
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except ValueError:
            return raw  # kept as text: the quality check reports it as an invalid call
    return raw


def _call_text(name: Any, arguments: Any) -> str:
    return json.dumps({"tool": name, "parameters": _args(arguments)}, ensure_ascii=False)


def _tools(raw: Any, where: str) -> list[dict]:
    if raw is None:
        return []
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raise UserError(f"{where}: 'tools' is a string that is not JSON") from None
    if not isinstance(raw, list):
        raise UserError(f"{where}: 'tools' must be a list of function definitions")
    return [t if t.get("type") == "function" and "function" in t else {"type": "function", "function": t} for t in raw]


def from_openai(row: dict, where: str) -> dict:
    msgs = []
    for m in row["messages"]:
        role = m.get("role")
        if role == "assistant" and m.get("tool_calls"):
            if m.get("content"):
                msgs.append({"role": "assistant", "content": m["content"]})
            for tc in m["tool_calls"]:
                fn = tc.get("function", tc)
                msgs.append({"role": "assistant", "content": _call_text(fn.get("name"), fn.get("arguments", {})),
                             "_call_id": tc.get("id")})
        elif role == "assistant" and m.get("function_call"):  # legacy OpenAI functions API
            fn = m["function_call"]
            msgs.append({"role": "assistant", "content": _call_text(fn.get("name"), fn.get("arguments", {}))})
        elif role in ("tool", "function"):
            msgs.append({"role": "tool", "content": str(m.get("content") or ""), "_call_id": m.get("tool_call_id")})
        elif role in ("system", "user", "assistant"):
            msgs.append({"role": role, "content": m.get("content") or ""})
        else:
            raise UserError(f"{where}: unknown message role {role!r} (OpenAI format: system/user/assistant/tool)")
    return {"messages": _pair_results(msgs), "tools": _tools(row.get("tools") or row.get("functions"), where)}


def _pair_results(msgs: list[dict]) -> list[dict]:
    """Parallel calls: put each tool result right after the call it answers (by tool_call_id)."""
    out, pending = [], {}
    for m in msgs:
        if m["role"] == "tool" and m.get("_call_id") in pending:
            i = pending.pop(m["_call_id"])
            out.insert(i + 1, m)
            pending = {k: (j + 1 if j > i else j) for k, j in pending.items()}
            continue
        if m["role"] == "assistant" and m.get("_call_id"):
            pending[m["_call_id"]] = len(out)
        out.append(m)
    return [{k: v for k, v in m.items() if not k.startswith("_")} for m in out]


def from_sharegpt(row: dict, where: str) -> dict:
    msgs = []
    for turn in row["conversations"]:
        role = SHAREGPT_ROLES.get(turn.get("from"))
        if role is None:
            raise UserError(f"{where}: unknown ShareGPT role {turn.get('from')!r}; valid: {sorted(SHAREGPT_ROLES)}")
        value = turn.get("value", "")
        if role == "call":
            call = _args(value)
            if isinstance(call, dict):
                call = normalize_call(call)
                msgs.append({"role": "assistant", "content": _call_text(call.get("tool"), call.get("parameters", {}))})
            else:
                msgs.append({"role": "assistant", "content": str(value)})
        else:
            msgs.append({"role": role, "content": str(value)})
    if row.get("system") and not any(m["role"] == "system" for m in msgs):
        msgs.insert(0, {"role": "system", "content": row["system"]})
    return {"messages": msgs, "tools": _tools(row.get("tools"), where)}


def detect(row: dict) -> str:
    if isinstance(row.get("conversations"), list):
        return "sharegpt"
    if isinstance(row.get("messages"), list):
        return "openai"
    return "unknown"


def standardise(rows: list[dict], source_format: str, source: str) -> tuple[list[dict], Counter]:
    """Rows in our format; rows of an unknown shape are counted, not imported."""
    out, skipped = [], Counter()
    for i, r in enumerate(rows):
        fmt = detect(r) if source_format == "auto" else source_format
        where = f"{source}:{r.get('_line', i + 1)}"
        if fmt == "openai" and isinstance(r.get("messages"), list):
            t = from_openai(r, where)
        elif fmt == "sharegpt" and isinstance(r.get("conversations"), list):
            t = from_sharegpt(r, where)
        else:
            skipped["unknown_format"] += 1
            continue
        t["id"] = str(r.get("id", f"{source.rsplit('/', 1)[-1]}-{i}"))
        t["source"] = source
        for k in ("answer", "success"):
            if k in r:
                t[k] = r[k]
        out.append(t)
    return out, skipped


# -- quality ---------------------------------------------------------------------------------------
def is_call_turn(msg: dict) -> dict | None:
    if msg.get("role") != "assistant":
        return None
    call = find_call(msg.get("content") or "")
    return call if call is not None and ("tool" in call) else None


def problems(t: dict, checker: SchemaChecker, max_messages: int, max_chars: int) -> str | None:
    """The first reason to drop a trajectory, or None."""
    msgs = t["messages"]
    if not any(m["role"] == "user" for m in msgs):
        return "no_user_request"
    if len(msgs) > max_messages:
        return "too_many_messages"
    if sum(len(m.get("content") or "") for m in msgs) > max_chars:
        return "too_long"
    schemas = {}
    for d in t["tools"]:
        fn = d["function"]
        schemas[fn["name"]] = call_schema(Tool(fn["name"], fn.get("description", ""),
                                               fn.get("parameters") or {"type": "object", "properties": {}}))
    for m in msgs:
        call = is_call_turn(m)
        if call is None or str(call.get("tool")).lower() in FINAL_TOOLS:
            continue
        if call.get("tool") not in schemas:
            return "invalid_call:unknown_tool"
        v = checker.check(call, schemas[call["tool"]])
        if not v.passed:
            return f"invalid_call:{v.category}"
    last = msgs[-1] if msgs else {}
    final_call = is_call_turn(last)
    if last.get("role") != "assistant" or not (last.get("content") or "").strip() or \
            (final_call is not None and str(final_call.get("tool")).lower() not in FINAL_TOOLS):
        return "no_final_answer"
    return None


def _text(t: dict) -> str:
    return " ".join(m.get("content") or "" for m in t["messages"] if m["role"] != "system")


def shingles(text: str, n: int = 3) -> set:
    w = re.findall(r"\w+", text.lower())
    return {" ".join(w[i:i + n]) for i in range(max(1, len(w) - n + 1))}


def quality_filter(trajs: list[dict], *, max_messages: int, max_chars: int, near_duplicate: float
                   ) -> tuple[list[dict], dict]:
    """(kept, report): drops invalid calls, missing final answers, over-long episodes, exact
    duplicates (same messages and tool list) and near-duplicates (Jaccard of word 3-grams >=
    ``near_duplicate`` against a kept trajectory of another ``family``; an inverted index on 3-grams
    keeps the comparison to candidates sharing one)."""
    checker = SchemaChecker()
    kept, dropped, examples = [], Counter(), defaultdict(list)
    hashes, sets, families, index = set(), [], [], defaultdict(set)
    for t in trajs:
        why = problems(t, checker, max_messages, max_chars)
        family = t.get("family", t["id"])  # augmented copies are near-duplicates of their original on purpose
        if why is None:
            key = hashlib.sha256(json.dumps([t["messages"], [d["function"]["name"] for d in t["tools"]]],
                                            sort_keys=True).encode()).hexdigest()
            if key in hashes:
                why = "duplicate"
            else:
                sh = shingles(_text(t))
                cands = set().union(*(index[s] for s in sh)) if sh else set()
                if any(families[j] != family and len(sh & sets[j]) / max(1, len(sh | sets[j])) >= near_duplicate
                       for j in cands):
                    why = "near_duplicate"
        if why is not None:
            dropped[why] += 1
            if len(examples[why]) < 5:
                examples[why].append(t["id"])
            continue
        hashes.add(key)
        for s in sh:
            index[s].add(len(sets))
        sets.append(sh)
        families.append(family)
        kept.append({k: v for k, v in t.items() if k != "family"})
    report = {"input": len(trajs), "kept": len(kept), "dropped": dict(dropped.most_common()),
              "examples": dict(examples)}
    return kept, report
