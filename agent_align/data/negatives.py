"""Hard negatives: rejected outputs that break the call in one labelled way.

Each maker takes the correct call and returns a rejected call (a dict, rendered in the row's
format), raw text (``json_error``/``unstructured``), or None when the mutation does not apply to
this call (no enum to violate, no required parameter to drop...). The generator checks every
result with the validator and drops the ones that do not fail with exactly their label.

A request that needs several calls has its own types (``PARALLEL_TYPES``: a call left out, one too
many, two calls' arguments exchanged), which take the list of calls and the list of called tools and
return None for a single call; ``parallel_negative`` applies any other type to one call of the list.
"""

from __future__ import annotations

import copy
import json
import random
from typing import Any, Callable

from agent_align.registry import Registry
from agent_align.tools import procedural
from agent_align.tools.library import Tool
from agent_align.tools.values import sample_object, words

NEGATIVES: Registry[Callable] = Registry("negative type", "data.negative_weights")
# What each negative type must be classified as by the validator.
EXPECTED_CATEGORY = {"type_mismatch": "type_mismatch", "enum_violation": "enum_violation",
                     "hallucinated_param": "hallucinated_param", "missing_required": "missing_required",
                     "wrong_tool": "wrong_tool", "json_error": "json_error", "unstructured": "json_error",
                     "missing_call": "missing_call", "extra_call": "extra_call", "swapped_args": "missing_required"}
PARALLEL_TYPES = ("missing_call", "extra_call", "swapped_args")  # only for requests that need several calls

ENUM_NEAR_MISSES = {"high": "urgent", "low": "minor", "medium": "normal", "normal": "regular", "daily": "everyday",
                    "weekly": "every_week", "monthly": "every_month", "none": "never", "economy": "coach",
                    "business": "business_class", "first": "first_class", "metric": "celsius", "imperial": "fahrenheit",
                    "single": "twin", "double": "king", "suite": "penthouse", "express": "fast", "standard": "regular",
                    "en": "english", "de": "german", "fr": "french", "es": "spanish", "it": "italian", "ja": "japanese"}
HALLUCINATED = [("verbose", True), ("timeout", 30), ("format", "json"), ("user_id", 42), ("class", "economy"),
                ("currency", "USD"), ("notes", "asap"), ("sort_by", "date"), ("priority", "high"), ("limit", 10),
                ("confirm", True), ("locale", "en-US"), ("max_results", 5), ("async", False)]


def _params(call: dict) -> dict:
    return call["parameters"]


def _walk(value: Any, schema: dict, path: tuple = ()):
    """(path, value, schema) for every argument value, nested ones included, shallow first."""
    out = []
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for k, v in value.items():
            out.append((path + (k,), v, props.get(k, {})))
        for k, v in value.items():
            out.extend(_walk(v, props.get(k, {}), path + (k,)))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out.extend([(path + (i,), v, schema.get("items", {}))] + _walk(v, schema.get("items", {}), path + (i,)))
    return out


def _set(obj: Any, path: tuple, value: Any) -> None:
    for p in path[:-1]:
        obj = obj[p]
    obj[path[-1]] = value


@NEGATIVES.register("type_mismatch")
def type_mismatch(call: dict, tool: Tool, distractors: list[Tool], rng: random.Random):
    """``"limit": "10"`` for ``10``: the commonest real-model slip."""
    candidates = []
    for path, v, sch in _walk(_params(call), tool.parameters):
        if isinstance(v, bool):
            candidates.append((path, rng.choice(["true", "yes"]) if v else rng.choice(["false", "no"])))
        elif isinstance(v, (int, float)):
            candidates.append((path, str(v)))
        elif isinstance(v, list) and v and all(isinstance(x, str) for x in v):
            candidates.append((path, ", ".join(v)))
        elif isinstance(v, str) and "enum" not in sch and v.strip().lstrip("-").replace(".", "", 1).isdigit():
            candidates.append((path, float(v) if "." in v else int(v)))
    if not candidates:
        return None
    path, bad = rng.choice(candidates)
    out = copy.deepcopy(call)
    _set(_params(out), path, bad)
    return out


@NEGATIVES.register("enum_violation")
def enum_violation(call: dict, tool: Tool, distractors: list[Tool], rng: random.Random):
    """A plausible value outside the enum (``"urgent"`` for low/medium/high)."""
    candidates = [(p, v, s) for p, v, s in _walk(_params(call), tool.parameters) if "enum" in s and isinstance(v, str)]
    if not candidates:
        return None
    path, v, sch = rng.choice(candidates)
    options = [ENUM_NEAR_MISSES.get(v, v + "_plus"), v.upper() if v != v.upper() else v.lower(), v.capitalize()]
    options = [o for o in options if o not in sch["enum"]]
    if not options:
        return None
    out = copy.deepcopy(call)
    _set(_params(out), path, rng.choice(options))
    return out


@NEGATIVES.register("hallucinated_param")
def hallucinated_param(call: dict, tool: Tool, distractors: list[Tool], rng: random.Random):
    """A reasonable-sounding parameter the schema does not have."""
    free = [(k, v) for k, v in HALLUCINATED if k not in tool.properties]
    k, v = rng.choice(free)
    out = copy.deepcopy(call)
    _params(out)[k] = v
    return out


@NEGATIVES.register("missing_required")
def missing_required(call: dict, tool: Tool, distractors: list[Tool], rng: random.Random):
    """A required parameter left out."""
    present = [k for k in tool.required if k in _params(call)]
    if not present:
        return None
    out = copy.deepcopy(call)
    del _params(out)[rng.choice(present)]
    return out


@NEGATIVES.register("wrong_tool")
def wrong_tool(call: dict, tool: Tool, distractors: list[Tool], rng: random.Random):
    """Another offered tool's name, or a near-miss of the right one."""
    if distractors and rng.random() < 0.7:
        name = rng.choice(distractors).name
    else:
        parts = tool.name.split("_")
        options = [tool.name + "s", "_".join(reversed(parts)) if len(parts) > 1 else tool.name + "_tool",
                   tool.name.replace("_", ""), "get_" + tool.name if not tool.name.startswith("get_") else tool.name[4:]]
        name = rng.choice([o for o in options if o and o != tool.name])
    out = copy.deepcopy(call)
    out["tool"] = name
    return out


@NEGATIVES.register("json_error")
def json_error(call: dict, tool: Tool, distractors: list[Tool], rng: random.Random) -> str:
    """Almost-JSON: single quotes, a trailing comma, a lost brace, unquoted keys, Python literals."""
    text = json.dumps(call)
    kind = rng.randrange(5)
    if kind == 0:
        return text.replace('"', "'")
    if kind == 1:
        return text[:-2] + ",}}" if text.endswith("}}") else text[:-1] + ",}"
    if kind == 2:
        return text[:-1]
    if kind == 3:
        return text.replace('"tool"', "tool", 1).replace('"parameters"', "parameters", 1)
    return repr(call)  # Python dict syntax: True/False/None and single quotes


UNSTRUCTURED = [
    "Sure! I'll {tool} for you right away.",
    "I'm sorry, but I can't access external tools or services.",
    "As an AI language model, I cannot {tool}.",
    "To {tool}, you could use the {name} tool with the right parameters.",
    "Done. I have taken care of it.",
    "I would need more information before I can {tool}.",
]


@NEGATIVES.register("unstructured")
def unstructured(call: dict, tool: Tool, distractors: list[Tool], rng: random.Random) -> str:
    """A direct answer, a refusal, or prose with no call at all."""
    return rng.choice(UNSTRUCTURED).format(tool=words(tool.name), name=tool.name)


def sample_args(tool: Tool, rng: random.Random, optional_p: float = 0.4) -> dict:
    """Plausible arguments for ``tool``, as the generator samples them."""
    if tool.origin == "procedural":
        return procedural.sample_args(tool, rng, optional_p)
    return sample_object(tool.parameters, rng, optional_p=optional_p)


@NEGATIVES.register("missing_call")
def missing_call(call: dict | list, tool, distractors: list[Tool], rng: random.Random):
    """A parallel answer with one call left out; with one call left, often that call alone (no list)."""
    if not isinstance(call, list):
        return None
    out = copy.deepcopy(call)
    del out[rng.randrange(len(out))]
    return out[0] if len(out) == 1 and rng.random() < 0.5 else out


@NEGATIVES.register("extra_call")
def extra_call(call: dict | list, tool, distractors: list[Tool], rng: random.Random):
    """One call too many: another offered tool, or a requested tool once more, with plausible arguments."""
    if not isinstance(call, list):
        return None
    extra = rng.choice(distractors) if distractors and rng.random() < 0.5 else rng.choice(tool)
    out = copy.deepcopy(call)
    out.insert(rng.randrange(len(out) + 1), {"tool": extra.name, "parameters": sample_args(extra, rng)})
    return out


@NEGATIVES.register("swapped_args")
def swapped_args(call: dict | list, tool, distractors: list[Tool], rng: random.Random):
    """Two calls of different tools with their arguments exchanged, so each call misses a required
    parameter of its own tool (labelled missing_required, the category the validator gives it)."""
    if not isinstance(call, list):
        return None
    required = {t.name: set(t.required) for t in tool}

    def misses(i: int, j: int) -> bool:  # call i given call j's arguments lacks one of i's required parameters
        return bool(required[call[i]["tool"]] - set(_params(call[j])))

    pairs = [(i, j) for i in range(len(call)) for j in range(i + 1, len(call))
             if call[i]["tool"] != call[j]["tool"] and (misses(i, j) or misses(j, i))]
    if not pairs:
        return None
    i, j = rng.choice(pairs)
    out = copy.deepcopy(call)
    out[i]["parameters"], out[j]["parameters"] = out[j]["parameters"], out[i]["parameters"]
    return out


def parallel_negative(neg_type: str, calls: list[dict], tools: list[Tool], distractors: list[Tool],
                      rng: random.Random):
    """A rejected answer for a request needing ``calls`` (``tools[k]`` is the tool of ``calls[k]``): the
    parallel types change the list; any other type breaks one call of it (json_error: that call's text
    inside the list; unstructured: prose instead of the whole list)."""
    maker = NEGATIVES.get(neg_type)
    if neg_type in PARALLEL_TYPES:
        return maker(calls, tools, distractors, rng)
    j = rng.randrange(len(calls))
    bad = maker(calls[j], tools[j], distractors, rng)
    if bad is None or neg_type == "unstructured":
        return bad
    if isinstance(bad, str):
        parts = [json.dumps(c, ensure_ascii=False) for c in calls]
        parts[j] = bad
        return "[" + ", ".join(parts) + "]"
    out = copy.deepcopy(calls)
    out[j] = bad
    return out
