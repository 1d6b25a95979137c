"""Pull the call object out of a model's text, for the ``json`` and ``react`` output formats."""

from __future__ import annotations

import re
from typing import Any

from agent_align.jsonl import MAX_DEPTH, loads_strict, too_deep

# Longest model output that is parsed at all: a tool call is a few hundred characters, and the
# fence regexes cost up to quadratic time on adversarial text. Longer outputs are a json_error verdict.
MAX_OUTPUT_CHARS = 32_768

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


def extract_call(output: str, fmt: str = "json", allow_list: bool = False) -> tuple[Any | None, str]:
    """(call object, "") or (None, reason). A value that is not a JSON object is a failure, except a
    list when ``allow_list`` (a parallel answer: agent_align/validation/parallel.py)."""
    if not isinstance(output, str):
        return None, f"output is {type(output).__name__}, not text"
    if len(output) > MAX_OUTPUT_CHARS:
        return None, f"output is {len(output)} characters; at most {MAX_OUTPUT_CHARS} are parsed"
    text, why = extract_text(output, fmt)
    if text is None:
        return None, why
    if too_deep(text):
        return None, f"JSON nested deeper than {MAX_DEPTH} levels"
    try:
        obj = loads_strict(text)
    except ValueError as exc:
        return None, f"invalid JSON: {exc}"
    except RecursionError:  # unbalanced brackets escape too_deep; the parser still must not crash
        return None, f"JSON nested deeper than {MAX_DEPTH} levels"
    if not isinstance(obj, dict) and not (allow_list and isinstance(obj, list)):
        return None, f"JSON value is {type(obj).__name__}, not an object"
    return obj, ""
