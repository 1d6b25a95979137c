"""Policies that need no model: the ground-truth expert, and a random baseline agent."""

from __future__ import annotations

import random
import re

from agent_align.tools.values import sample_value

# Candidate argument values for the random agent: names, ids and dates it has seen in the episode.
_PHRASES = re.compile(r"[A-Z][a-z]+(?: [A-Z][a-z]+)+|[A-Z]{1,2}-\d+|\d{4}-\d{2}-\d{2}|[A-Z][a-z]+")


class GroundTruthExpert:
    """Replays the task's ground-truth trajectory from whatever state the episode is in: the next step
    the history has not covered yet, else FINAL with the gold answer (``ToolEnv.expert_call``)."""

    instant = True  # no model: the runner asks it one episode at a time (``Runner._stream``)

    def act(self, envs) -> list[str]:
        return [env.render(env.expert_call(), seed=len(env.steps)) for env in envs]


def expert_agent(cfg, ctx):
    return GroundTruthExpert()


class RandomAgent:
    """A lower bound: a random offered tool, string arguments drawn from phrases seen in the episode
    (so it sometimes hits a real name), and an unparseable reply one time in ten."""

    def __init__(self, seed: int):
        self.seed = seed

    def act(self, envs) -> list[str]:
        out = []
        for env in envs:
            rng = random.Random(f"{self.seed}-{env.task['task_id']}-{env.sample_index}-{len(env.steps)}")
            if rng.random() < 0.1:
                out.append("I think I should look this up.")
                continue
            tool = rng.choice(env.tools)
            seen = _PHRASES.findall(" ".join(m["content"] for m in env.messages[1:])) or ["unknown"]
            params = {}
            for name, schema in tool.properties.items():
                if schema.get("type") == "string" and "enum" not in schema:
                    params[name] = rng.choice(seen)
                elif schema.get("type") == "object":
                    params[name] = {rng.choice(["name", "sku", "order_id"]): rng.choice(seen)}
                else:
                    params[name] = sample_value(schema, rng, name)
            out.append(env.render({"tool": tool.name, "parameters": params}, seed=rng.randint(0, 9)))
        return out


def random_agent(cfg, ctx):
    return RandomAgent(cfg.seed)
