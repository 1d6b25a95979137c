"""Natural-language requests for a tool call: the tool's own templates, or generic ones."""

from __future__ import annotations

import functools
import random
import string

from agent_align.tools.library import Tool
from agent_align.tools.values import render_value, words

# For tools without templates (user files, procedural tools). {tool} is the tool's name in words,
# {args} the rendered arguments; at least five phrasings so the model can't key on one.
GENERIC_TEMPLATES = [
    "Please {tool} with {args}.",
    "I need to {tool}: {args}.",
    "Can you {tool}? Use {args}.",
    "{Tool} for me, {args}.",
    "Go ahead and {tool} where {args}.",
    "Could you {tool} using {args}?",
]
GENERIC_NO_ARGS = ["Please {tool}.", "I need to {tool}.", "Can you {tool}?", "{Tool} for me.", "Go ahead and {tool}."]
ARG_STYLES = ["{k} {v}", "{k} set to {v}", "{k} = {v}", "{k}: {v}"]


@functools.lru_cache(maxsize=4096)
def _slots(template: str) -> frozenset[str]:
    return frozenset(f[1] for f in string.Formatter().parse(template) if f[1])


def render_request(tool: Tool, args: dict, rng: random.Random) -> str:
    props = tool.properties
    rendered = {k: render_value(v, props.get(k, {})) for k, v in args.items()}
    usable = [t for t in tool.templates if _slots(t) <= set(rendered)]
    if usable:
        template = rng.choice(usable)
        text = template.format(**rendered)
        extra = [k for k in args if k not in _slots(template)]
        if extra:
            style = rng.choice(ARG_STYLES)
            phrases = [tool.optional_phrases[k].format(**rendered) if k in tool.optional_phrases
                       else style.format(k=words(k), v=rendered[k]) for k in extra]
            end = text[-1] if text[-1] in ".?!" else ""
            text = text[: len(text) - len(end)] + " " + ", ".join(phrases) + end
        return text
    tool_words = words(tool.name)
    if not args:
        t = rng.choice(GENERIC_NO_ARGS)
        return t.format(tool=tool_words, Tool=tool_words.capitalize())
    style = rng.choice(ARG_STYLES)
    arg_text = ", ".join(style.format(k=words(k), v=rendered[k]) for k in args)
    t = rng.choice(GENERIC_TEMPLATES)
    return t.format(tool=tool_words, Tool=tool_words.capitalize(), args=arg_text)
