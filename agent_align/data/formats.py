"""Rendering calls as model outputs: ``json`` (the raw call) or ``react`` (Thought, then Action).
A request that needs several calls is answered with a JSON list of calls, in both formats."""

from __future__ import annotations

import json
import random

from agent_align.tools.values import words

THOUGHTS = [
    "The user wants to {w}. I will use the {name} tool.",
    "This request needs the {name} tool to {w}.",
    "I should call {name} with the values from the request.",
    "To {w} I need {name}; the arguments come from the request.",
]

PARALLEL_THOUGHTS = [
    "The user asks for {n} things. I will call {names} in one list.",
    "This request needs {n} calls: {names}.",
    "I should call {names}, one call per part of the request.",
]

SYSTEM_PROMPTS = {
    "json": "You are a tool-calling assistant. Reply with exactly one JSON object "
            '{"tool": NAME, "parameters": {...}} that calls one of the offered tools. When the request '
            "needs several calls, reply with a JSON list of these objects, one per call.",
    "react": "You are a tool-calling agent. Think, then act: reply with 'Thought:' and your reasoning, then "
             "'Action:' and a ```json block holding {\"tool\": NAME, \"parameters\": {...}}, or a JSON list of "
             "these objects when the request needs several calls.",
}


def call_json(call: dict | list) -> str:
    return json.dumps(call, ensure_ascii=False)


def render_output(call_or_text: dict | list | str, fmt: str, tool_name: str | list[str], rng: random.Random,
                  prose: bool = False) -> str:
    """A call dict (or a list of calls) becomes its JSON; raw text (malformed JSON) stays as is. ``prose``
    text (unstructured negatives) has no Action block in either format. ``tool_name``: a list of names
    for a parallel answer."""
    body = call_or_text if isinstance(call_or_text, str) else call_json(call_or_text)
    if fmt == "json" or prose:
        return body
    if isinstance(tool_name, list):
        names = list(dict.fromkeys(tool_name))
        thought = rng.choice(PARALLEL_THOUGHTS).format(n=len(tool_name), names=" and ".join(names))
    else:
        thought = rng.choice(THOUGHTS).format(w=words(tool_name), name=tool_name)
    return f"Thought: {thought}\nAction:\n```json\n{body}\n```"
