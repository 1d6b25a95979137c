"""Splitting a response into steps, by output format.

    from agent_align.steps.split import split_steps, step_texts
    step_texts("Thought: use calculator\\nAction:\\n```json\\n{...}\\n```", "react")  # -> [thought, action]

* ``react``: every ``Thought:`` block and every ``Action:`` block (with its fenced call) is a step;
  ``Observation:`` blocks are observations and belong to no step. ``Final Answer:`` is a step.
* ``json``: the call is one step.
* ``text`` (free-text reasoning): ``Step k:`` markers when present, else each non-empty line.
* ``trajectory``: the completion is a list of chat messages; each assistant turn is a step, tool
  (and user) messages are observations.

Segments of a text completion cover it end to end (separators stick to the segment before them),
so a trainer can give every completion token the weight of the step it falls in.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

FORMATS = ("react", "json", "text", "trajectory")
_REACT_MARK = re.compile(r"^[ \t]*(Thought|Action|Observation|Final Answer)[ \t]*:", re.MULTILINE)
_STEP_MARK = re.compile(r"^[ \t]*Step[ \t]*\d+[ \t]*[:.)]", re.MULTILINE | re.IGNORECASE)
_FENCE = re.compile(r"```.*?(?:```|\Z)", re.DOTALL)


@dataclass(frozen=True)
class Segment:
    text: str
    kind: str  # "step" | "observation"
    start: int  # char offset in a text completion; message index in a trajectory
    end: int


def _cut(text: str, starts: list[int], kinds: list[str]) -> list[Segment]:
    """Segments from boundary offsets; text before the first boundary joins the first segment."""
    if not starts:
        return [Segment(text, "step", 0, len(text))] if text.strip() else []
    starts = [0] + starts[1:]
    ends = starts[1:] + [len(text)]
    return [Segment(text[s:e], k, s, e) for s, e, k in zip(starts, ends, kinds)]


def _outside_fences(text: str, matches) -> list:
    fences = [m.span() for m in _FENCE.finditer(text)]
    return [m for m in matches if not any(a < m.start() < b for a, b in fences)]


def split_react(text: str) -> list[Segment]:
    marks = _outside_fences(text, _REACT_MARK.finditer(text))
    kinds = ["observation" if m.group(1) == "Observation" else "step" for m in marks]
    return _cut(text, [m.start() for m in marks], kinds)


def split_text(text: str) -> list[Segment]:
    marks = list(_STEP_MARK.finditer(text))
    if marks:
        return _cut(text, [m.start() for m in marks], ["step"] * len(marks))
    starts, pos = [], 0
    for line in text.splitlines(keepends=True):
        if line.strip():
            starts.append(pos)
        pos += len(line)
    return _cut(text, starts, ["step"] * len(starts))


def message_text(msg: dict) -> str:
    """An assistant turn as text: its content, then any OpenAI ``tool_calls`` as our call JSON."""
    parts = [msg.get("content") or ""]
    for tc in msg.get("tool_calls") or []:
        fn = tc.get("function", tc)
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except ValueError:
                pass
        parts.append(json.dumps({"tool": fn.get("name"), "parameters": args}, ensure_ascii=False))
    return "\n".join(p for p in parts if p)


def split_trajectory(messages: list[dict]) -> list[Segment]:
    return [Segment(message_text(m), "step" if m.get("role") == "assistant" else "observation", i, i + 1)
            for i, m in enumerate(messages)]


def split_steps(completion: Any, fmt: str) -> list[Segment]:
    """Every segment of ``completion`` (steps and observations), in order."""
    if isinstance(completion, list):  # conversational completion: a trajectory whatever fmt says
        return split_trajectory(completion)
    if fmt == "react":
        return split_react(completion)
    if fmt == "text":
        return split_text(completion)
    if fmt == "json":
        return [Segment(completion, "step", 0, len(completion))] if completion.strip() else []
    if fmt == "trajectory":
        raise ValueError("format 'trajectory' needs a list of messages, got text")
    raise ValueError(f"unknown step format {fmt!r}; valid: {', '.join(FORMATS)}")


def steps_only(completion: Any, fmt: str) -> list[Segment]:
    return [s for s in split_steps(completion, fmt) if s.kind == "step"]


def step_texts(completion: Any, fmt: str) -> list[str]:
    return [s.text.strip() for s in steps_only(completion, fmt)]


def detect_format(completion: Any, default: str = "json") -> str:
    """The step format of one completion: trajectory (messages), react (Thought/Action markers),
    text (Step k: markers or several lines), else ``default``."""
    if isinstance(completion, list):
        return "trajectory"
    if _REACT_MARK.search(completion):
        return "react"
    if _STEP_MARK.search(completion):
        return "text"
    return default
