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


# Requests that need several calls: the single requests joined, so every value stays in the text.
# Each part is a whole sentence; a part after a connective word starts lower-case.
JOINERS_2 = ["{0} Also, {1}", "{0} Then {1}", "{0} And {1}", "Two things. {0} {1}", "{0} After that, {1}",
             "1. {0}\n2. {1}"]
JOINERS_3 = ["{0} Also, {1} Finally, {2}", "{0} Then {1} And {2}", "Three things. {0} {1} {2}",
             "1. {0}\n2. {1}\n3. {2}", "{0} After that, {1} Also, {2}"]


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text[-1:] in ".?!" else text + "."


def _lower_first(text: str) -> str:
    if text.startswith(("I ", "I'")) or text[1:2].isupper():  # "I need ...", an acronym
        return text
    return text[0].lower() + text[1:]


def join_requests(parts: list[str], rng: random.Random) -> str:
    """One request asking for every part, e.g. "Get the weather in Oslo. Also, create a task ..."."""
    parts = [_sentence(p) for p in parts]
    template = rng.choice(JOINERS_2 if len(parts) == 2 else JOINERS_3)
    # after a connective word ("Also, create ..."), not after a full stop or a list number
    lower = [i > 0 and any(c.isalpha() for c in template.split("{%d}" % i)[0].rsplit("}", 1)[-1])
             for i in range(len(parts))]
    return template.format(*[_lower_first(p) if low else p for p, low in zip(parts, lower)])
