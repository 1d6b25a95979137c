"""Perturbed copies of eval rows: does the model still call correctly when the prompt shifts?

- ``typos``: letters swapped in words outside quoted values (values must still be copied exactly);
- ``reorder``: offered tools shuffled and each tool's parameters listed in another order;
- ``paraphrase``: the request re-written with the generic phrasings instead of the tool's own;
- ``distractors``: three more distractor tools offered.
"""

from __future__ import annotations

import copy
import json
import random
import re

from agent_align.data.phrasing import render_request
from agent_align.registry import Registry
from agent_align.tools.library import Tool, load_builtin_tools

PERTURBATIONS: Registry = Registry("robustness set", "evaluate.robustness")
_QUOTED = re.compile(r"('[^']*')")


def _tool_of(row: dict) -> Tool:
    for t in row["tools"]:
        if t["function"]["name"] == row["tool"]:
            f = t["function"]
            return Tool(name=f["name"], description=f.get("description", ""), parameters=f["parameters"])
    raise KeyError(row["tool"])


def _call_args(row: dict) -> dict | None:
    text = row["chosen"]
    m = re.search(r"```json\n(.*?)\n```", text, re.DOTALL)
    try:
        return json.loads(m.group(1) if m else text)["parameters"]
    except (ValueError, KeyError, TypeError):
        return None


@PERTURBATIONS.register("typos")
def typos(row: dict, rng: random.Random) -> dict:
    parts = _QUOTED.split(row["prompt"])
    for i in range(0, len(parts), 2):  # even parts are outside quotes
        words = parts[i].split(" ")
        for j, w in enumerate(words):
            if len(w) > 4 and w.isalpha() and rng.random() < 0.3:
                k = rng.randrange(len(w) - 1)
                words[j] = w[:k] + w[k + 1] + w[k] + w[k + 2:]
        parts[i] = " ".join(words)
    return {**row, "prompt": "".join(parts)}


@PERTURBATIONS.register("reorder")
def reorder(row: dict, rng: random.Random) -> dict:
    tools = copy.deepcopy(row["tools"])
    rng.shuffle(tools)
    for t in tools:
        props = t["function"]["parameters"].get("properties", {})
        keys = list(props)
        rng.shuffle(keys)
        t["function"]["parameters"]["properties"] = {k: props[k] for k in keys}
    return {**row, "tools": tools}


@PERTURBATIONS.register("paraphrase")
def paraphrase(row: dict, rng: random.Random) -> dict:
    args = _call_args(row)
    if args is None:
        return row
    tool = _tool_of(row)  # no templates: the generic phrasings are used
    return {**row, "prompt": render_request(tool, args, rng)}


@PERTURBATIONS.register("distractors")
def distractors(row: dict, rng: random.Random) -> dict:
    offered = {t["function"]["name"] for t in row["tools"]}
    pool = [t for t in load_builtin_tools() if t.name not in offered]
    extra = [t.openai() for t in rng.sample(pool, min(3, len(pool)))]
    tools = row["tools"] + extra
    rng.shuffle(tools)
    return {**row, "tools": tools}


def perturb(rows: list[dict], name: str, seed: int) -> list[dict]:
    fn = PERTURBATIONS.get(name)
    return [fn(r, random.Random(f"{seed}-{name}-{i}")) for i, r in enumerate(rows)]
