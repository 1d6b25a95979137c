"""Rendering calls as model outputs: ``json`` (the raw call) or ``react`` (Thought, then Action)."""

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

SYSTEM_PROMPTS = {
    "json": "You are a tool-calling assistant. Reply with exactly one JSON object "
            '{"tool": NAME, "parameters": {...}} that calls one of the offered tools.',
    "react": "You are a tool-calling agent. Think, then act: reply with 'Thought:' and your reasoning, then "
             "'Action:' and a ```json block holding {\"tool\": NAME, \"parameters\": {...}}.",
}


def call_json(call: dict) -> str:
    return json.dumps(call, ensure_ascii=False)


def render_output(call_or_text: dict | str, fmt: str, tool_name: str, rng: random.Random, prose: bool = False) -> str:
    """A call dict becomes its JSON; raw text (malformed JSON) stays as is. ``prose`` text
    (unstructured negatives) has no Action block in either format."""
    body = call_or_text if isinstance(call_or_text, str) else call_json(call_or_text)
    if fmt == "json" or prose:
        return body
    thought = rng.choice(THOUGHTS).format(w=words(tool_name), name=tool_name)
    return f"Thought: {thought}\nAction:\n```json\n{body}\n```"
