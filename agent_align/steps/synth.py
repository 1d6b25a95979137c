"""Synthetic trajectories from a task specification (seed 004), then augmentation.

    # spec.yaml
    tools: [ {type: function, function: {name: get_weather, description: ..., parameters: {...}}} ]
    examples:
      - request: "What's the weather in Paris, in metric units?"
        calls: [ {tool: get_weather, parameters: {city: Paris, units: metric}} ]

Teachers: ``generator`` turns each example into a template (argument values found in the request
become slots) and fills it with new values sampled from the schema, plus generic requests built
from the tools alone; the gold calls are known, so the calls are right by construction.
``model`` asks a model (model.*, or trajectories.teacher_path) for the call of each request; the
quality filter drops what fails. Observations are computed for the calculator (safe calculator)
and a JSON acknowledgement for other tools. Augmentations: paraphrased requests, shuffled tool
order, distractor tools.
"""

from __future__ import annotations

import copy
import json
import random
from typing import Any

from agent_align.data.phrasing import render_request
from agent_align.errors import UserError
from agent_align.jsonl import read_json_or_yaml
from agent_align.steps.calculator import CalcError, calculate
from agent_align.tools.library import Tool, load_builtin_tools, load_tools_file
from agent_align.tools.values import NoSampler, render_value, sample_object, sample_value, words


def load_spec(path: str) -> tuple[list[Tool], list[dict]]:
    spec = read_json_or_yaml(path, "trajectories.spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("tools"), list) or not spec["tools"]:
        raise UserError(f"{path}: a task spec needs 'tools' (OpenAI function definitions) and 'examples'")
    tools = load_tools_file(path, "trajectories.spec")  # validates every definition, naming the tool
    names = {t.name for t in tools}
    examples = spec.get("examples") or []
    for i, ex in enumerate(examples):
        if not isinstance(ex, dict) or not isinstance(ex.get("request"), str) or not isinstance(ex.get("calls"), list):
            raise UserError(f"{path}: examples #{i} needs 'request' (text) and 'calls' (a list of {{tool, parameters}})")
        bad = [c.get("tool") for c in ex["calls"] if not isinstance(c, dict) or c.get("tool") not in names]
        if bad:
            raise UserError(f"{path}: examples #{i} calls unknown tool(s) {bad}; the spec's tools are {sorted(names)}")
    return tools, examples


def observation(call: dict) -> str:
    if call["tool"] == "calculator":
        try:
            value = calculate(str(call["parameters"].get("expression", "")))
            return json.dumps({"result": round(value, 6)})
        except CalcError as exc:
            return json.dumps({"error": str(exc)})
    return json.dumps({"status": "ok", "tool": call["tool"]})


def final_answer(calls: list[dict], observations: list[str], given: str | None) -> str:
    if given:
        return given
    last = json.loads(observations[-1]) if observations else {}
    if "result" in last:
        return f"The result is {last['result']}."
    return "Done: " + "; ".join(f"{words(c['tool'])} completed" for c in calls) + "."


def trajectory(tid: str, request: str, calls: list[dict], tools: list[Tool], answer: str | None = None) -> dict:
    msgs = [{"role": "user", "content": request}]
    obs = []
    for c in calls:
        msgs.append({"role": "assistant", "content": json.dumps(c, ensure_ascii=False)})
        obs.append(observation(c))
        msgs.append({"role": "tool", "content": obs[-1]})
    msgs.append({"role": "assistant", "content": final_answer(calls, obs, answer)})
    return {"id": tid, "messages": msgs, "tools": [t.openai() for t in tools], "source": "synthetic"}


def template_of(example: dict, tools: dict[str, Tool]) -> tuple[str, list[tuple[int, str]]]:
    """The request with argument values it mentions replaced by ``{c<i>_<name>}`` slots."""
    text, slots = example["request"], []
    for i, c in enumerate(example["calls"]):
        props = tools[c["tool"]].properties
        for name, value in (c.get("parameters") or {}).items():
            if isinstance(value, (str, int, float)) and not isinstance(value, bool):
                shown = render_value(value, props.get(name, {})).strip("'")
                if shown and shown in text:
                    text = text.replace(shown, "{" + f"c{i}_{name}" + "}", 1)
                    slots.append((i, name))
    return text, slots


def from_example(example: dict, tools: dict[str, Tool], rng: random.Random) -> tuple[str, list[dict]] | None:
    text, slots = template_of(example, tools)
    if not slots:
        return None
    calls = copy.deepcopy(example["calls"])
    fill = {}
    for i, name in slots:
        schema = tools[calls[i]["tool"]].properties.get(name, {})
        try:
            value = sample_value(schema, rng, name)
        except NoSampler:
            value = calls[i]["parameters"][name]
        calls[i]["parameters"][name] = value
        fill[f"c{i}_{name}"] = render_value(value, schema).strip("'")
    return text.format(**fill), calls


def synthesize(tools: list[Tool], examples: list[dict], n: int, seed: int, teacher=None) -> list[dict]:
    """``n`` synthetic trajectories: the examples themselves, variations of them, and generic
    requests per tool. ``teacher(requests, tools) -> calls`` replaces the gold calls when given."""
    rng = random.Random(f"{seed}-synth")
    by_name = {t.name: t for t in tools}
    out = [trajectory(f"spec-ex{i}", ex["request"], ex["calls"], tools, ex.get("answer")) for i, ex in enumerate(examples)]
    attempts, seen = 0, {ex["request"] for ex in examples}
    while len(out) < n and attempts < 20 * n:
        attempts += 1
        if examples and rng.random() < 0.5:
            made = from_example(rng.choice(examples), by_name, rng)
            if made is None:
                continue
            request, calls = made
        else:
            tool = rng.choice(tools)
            try:
                args = sample_object(tool.parameters, rng, optional_p=0.4)
            except NoSampler:
                continue
            request, calls = render_request(tool, args, rng), [{"tool": tool.name, "parameters": args}]
        if request in seen:  # a repeat teaches nothing; the quality filter would drop it anyway
            continue
        seen.add(request)
        out.append(trajectory(f"spec-syn{len(out)}", request, calls, tools))
    if teacher is not None:
        made = teacher([t["messages"][0]["content"] for t in out], tools)
        # a request the teacher could not answer keeps an empty call, which the quality filter drops
        out = [trajectory(t["id"], t["messages"][0]["content"], [c or {"tool": None, "parameters": {}}], tools)
               for t, c in zip(out, made)]
    return out[:n] if n else out


def augment(trajs: list[dict], kinds: list[str], n_distractors: int, seed: int) -> list[dict]:
    """Augmented copies (the originals are kept): paraphrase, shuffle_tools, distractors."""
    rng = random.Random(f"{seed}-augment")
    library = load_builtin_tools()
    out = []
    for t in trajs:
        calls = [json.loads(m["content"]) for m in t["messages"][1:-1] if m["role"] == "assistant"]
        if "paraphrase" in kinds and len(calls) == 1 and isinstance(calls[0].get("parameters"), dict):
            fn = next((d["function"] for d in t["tools"] if d["function"]["name"] == calls[0]["tool"]), None)
            if fn is not None:
                plain = Tool(fn["name"], fn.get("description", ""), fn["parameters"])  # no templates: generic phrasing
                new = copy.deepcopy(t)
                new["messages"][0]["content"] = render_request(plain, calls[0]["parameters"], rng)
                new["id"], new["family"] = t["id"] + "-para", t["id"]
                out.append(new)
        if "shuffle_tools" in kinds and len(t["tools"]) > 1:
            new = copy.deepcopy(t)
            while [d["function"]["name"] for d in new["tools"]] == [d["function"]["name"] for d in t["tools"]]:
                rng.shuffle(new["tools"])
            new["id"], new["family"] = t["id"] + "-shuf", t["id"]
            out.append(new)
        if "distractors" in kinds and n_distractors > 0:
            have = {d["function"]["name"] for d in t["tools"]}
            pool = [x for x in library if x.name not in have]
            if pool:
                new = copy.deepcopy(t)
                extra = [x.openai() for x in rng.sample(pool, min(n_distractors, len(pool)))]
                new["tools"] = new["tools"] + extra
                rng.shuffle(new["tools"])
                new["id"], new["family"] = t["id"] + "-dist", t["id"]
                out.append(new)
    return trajs + out


def model_teacher(cfg, ctx):
    """``teacher(requests, tools) -> [call or None]`` from a model (greedy), in data.format."""
    from agent_align.stages.sample import draw
    from agent_align.steps.scorers import find_call

    def teach(requests: list[str], tools: list[Tool]) -> list[Any]:
        rows = [{"prompt": r, "tools": [t.openai() for t in tools]} for r in requests]
        ctx.cache.pop("policy", None)
        outs = draw(cfg, ctx, cfg.trajectories.teacher_path, rows, k=1, do_sample=False, desc="teacher")
        return [find_call(o[0]) for o in outs]
    return teach
