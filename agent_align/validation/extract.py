"""Pull the call object out of a model's text, for the ``json`` and ``react`` output formats."""

from __future__ import annotations

import re
from typing import Any

from agent_align.jsonl import loads_strict

_WHOLE_FENCE = re.compile(r"^```[A-Za-z0-9_-]*[ \t]*\n(.*?)\n?```$", re.DOTALL)
_ACTION_FENCE = re.compile(r"Action:\s*```[A-Za-z0-9_-]*[ \t]*\n(.*?)```", re.DOTALL)


def extract_text(output: str, fmt: str) -> tuple[str | None, str]:
    """The text that must parse as the call, or (None, why) when the format has no call."""
    if fmt == "react":
        m = _ACTION_FENCE.search(output)
        if not m:
            return None, "no fenced ```json block after 'Action:'"
        return m.group(1).strip(), ""
    if fmt != "json":
        raise ValueError(f"unknown output format {fmt!r}; valid: json, react")
    text = output.strip()
    m = _WHOLE_FENCE.match(text)
    return (m.group(1).strip() if m else text), ""


def extract_call(output: str, fmt: str = "json") -> tuple[Any | None, str]:
    """(call object, "") or (None, reason). A value that is not a JSON object is a failure."""
    if not isinstance(output, str):
        return None, f"output is {type(output).__name__}, not text"
    text, why = extract_text(output, fmt)
    if text is None:
        return None, why
    try:
        obj = loads_strict(text)
    except ValueError as exc:
        return None, f"invalid JSON: {exc}"
    if not isinstance(obj, dict):
        return None, f"JSON value is {type(obj).__name__}, not an object"
    return obj, ""
