"""Targeted negatives: the failure modes ``stage=analyze`` found most often, over-sampled next round.

    python -m agent_align stage=analyze            # writes targeted_negatives.json
    python -m agent_align data.targeted_negatives=runs/x/targeted_negatives.json

The file is ``{"negative_types": {type: multiplier}, "tools": {tool: multiplier}}``. The generator
multiplies ``data.negative_weights`` by the type multipliers and draws training tools with the tool
multipliers as weights (1 for tools not listed).
"""

from __future__ import annotations

import random
from pathlib import Path

from agent_align.errors import file_error


class Targeted:
    def __init__(self, negative_types: dict[str, float], tools: dict[str, float]):
        self.negative_types = {k: float(v) for k, v in negative_types.items()}
        self.tools = {k: float(v) for k, v in tools.items()}

    def negative_weights(self, base: dict[str, float]) -> dict[str, float]:
        return {k: w * self.negative_types.get(k, 1.0) for k, w in base.items()}

    def pick_tool(self, pool: list, rng: random.Random):
        if not any(t.name in self.tools for t in pool):
            return rng.choice(pool)
        return rng.choices(pool, weights=[self.tools.get(t.name, 1.0) for t in pool], k=1)[0]


def load_targeted(path: str) -> Targeted:
    p = Path(path)
    key = "data.targeted_negatives"
    if not p.exists():
        raise file_error(p, None, "file not found", f"set {key}=PATH to a targeted_negatives.json from stage=analyze")
    from agent_align.jsonl import read_json_or_yaml

    data = read_json_or_yaml(p, key)  # UTF-8, depth and syntax checked, errors name file:line
    if not isinstance(data, dict) or not ({"negative_types", "tools"} & set(data)):
        raise file_error(p, None, "expected {\"negative_types\": {...}, \"tools\": {...}}", "write it with stage=analyze")
    from agent_align.data.negatives import NEGATIVES

    types = data.get("negative_types") or {}
    unknown = [t for t in types if t not in NEGATIVES]
    if unknown:
        raise file_error(p, None, f"unknown negative types {unknown}", f"valid: {', '.join(NEGATIVES)}")
    bad = {k: v for k, v in {**types, **(data.get("tools") or {})}.items()
           if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0}
    if bad:
        raise file_error(p, None, f"multipliers must be numbers >= 0, got {bad}")
    return Targeted(types, data.get("tools") or {})
