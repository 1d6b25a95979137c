"""Verified preference triplets: a request, the correct call, and hard negatives.

Fully deterministic for a seed: each prompt draws from its own ``Random(f"{seed}-{split}-{i}")``,
so a row does not depend on how many came before it. Every chosen is checked to pass and every
rejected to fail with exactly its labelled category; rows that don't are dropped and counted.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Iterator

from omegaconf import DictConfig, OmegaConf

from agent_align.data.formats import render_output
from agent_align.data.negatives import EXPECTED_CATEGORY, NEGATIVES
from agent_align.data.phrasing import render_request
from agent_align.errors import config_error
from agent_align.tools.library import Tool, call_schema, load_tools
from agent_align.tools import procedural
from agent_align.tools.procedural import procedural_tools
from agent_align.tools.values import NoSampler, sample_object
from agent_align.validation.validator import SchemaChecker, validate_output

log = logging.getLogger(__name__)


@dataclass
class ToolPools:
    seen: list[Tool]
    unseen: list[Tool]
    procedural: list[Tool] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # tool -> why it cannot be sampled

    @property
    def all(self) -> list[Tool]:
        return self.seen + self.unseen + self.procedural


def build_pools(data_cfg, seed: int) -> ToolPools:
    tools = load_tools(data_cfg.tools_file, data_cfg.include_builtin_tools)
    if data_cfg.tools:
        known = {t.name for t in tools}
        unknown = [n for n in data_cfg.tools if n not in known]
        if unknown:
            raise config_error("data.tools", list(data_cfg.tools), f"{unknown} not in the tool library; valid: {sorted(known)}")
        tools = [t for t in tools if t.name in set(data_cfg.tools)]
    names = {t.name for t in tools}
    unknown = [h for h in data_cfg.heldout_tools if h not in names]
    if unknown:
        raise config_error("data.heldout_tools", list(data_cfg.heldout_tools),
                           f"{unknown} are not in the tool library; valid: {sorted(names)}")
    skipped = {}
    probe = random.Random(0)
    usable = []
    for t in tools:
        try:
            for _ in range(4):
                sample_object(t.parameters, probe, optional_p=1.0)
            usable.append(t)
        except NoSampler as exc:
            skipped[t.name] = str(exc)
    for name, why in skipped.items():
        log.warning("tool %s skipped by the generator: %s (add 'examples' to that parameter)", name, why)
    held = set(data_cfg.heldout_tools)
    seen = [t for t in usable if t.name not in held]
    unseen = [t for t in usable if t.name in held]
    if not seen:
        raise config_error("data.heldout_tools", list(data_cfg.heldout_tools), "holds out every tool; keep some seen")
    proc = procedural_tools(data_cfg.procedural_tools, seed, reserved=names) if data_cfg.procedural_tools else []
    return ToolPools(seen=seen, unseen=unseen, procedural=proc, skipped=skipped)


def _pick_negative_types(weights: dict[str, float], rng: random.Random) -> list[str]:
    """All positive-weight types in a weighted random order (sampling without replacement)."""
    items = [(k, w) for k, w in weights.items() if w > 0]
    order = sorted(items, key=lambda kw: rng.random() ** (1.0 / kw[1]), reverse=True)
    return [k for k, _ in order]


class Generator:
    def __init__(self, data_cfg, seed: int, pools: ToolPools | None = None):
        # a plain copy: attribute access on an OmegaConf node costs ~20us, which dominated row generation
        self.cfg = SimpleNamespace(**OmegaConf.to_container(data_cfg, resolve=True)) \
            if isinstance(data_cfg, DictConfig) else data_cfg
        self.seed = seed
        self.pools = pools or build_pools(data_cfg, seed)
        self.checker = SchemaChecker()
        self.schemas = {t.name: call_schema(t) for t in self.pools.all}
        self.stats: Counter = Counter()
        self.targeted = None  # data.targeted_negatives: failure modes to over-sample (agent_align.steps.targeted)
        if data_cfg.targeted_negatives:
            from agent_align.steps.targeted import load_targeted

            self.targeted = load_targeted(data_cfg.targeted_negatives)

    def _prompt(self, split: str, i: int) -> tuple[random.Random, Tool, list[Tool], str]:
        rng = random.Random(f"{self.seed}-{split}-{i}")
        p = self.pools
        if split == "train":
            if p.procedural and rng.random() < self.cfg.procedural_fraction:
                tool = rng.choice(p.procedural)
            else:
                tool = self.targeted.pick_tool(p.seen, rng) if self.targeted else rng.choice(p.seen)
            distract_pool = p.seen + p.procedural
            tag = "seen"
        else:
            tag = "unseen" if p.unseen and i % 2 == 1 else "seen"
            tool = rng.choice(p.unseen if tag == "unseen" else p.seen)
            distract_pool = p.seen + p.unseen
        k = rng.randint(0, min(self.cfg.distractor_tools, len(distract_pool) - 1))
        distractors = []
        while len(distractors) < k:
            d = rng.choice(distract_pool)
            if d.name != tool.name and d not in distractors:
                distractors.append(d)
        return rng, tool, distractors, tag

    def make_rows(self, split: str, i: int) -> list[dict]:
        """The verified rows (one per negative) of prompt ``i`` of ``split``."""
        rng, tool, distractors, tag = self._prompt(split, i)
        fmt = self.cfg.format
        if tool.origin == "procedural":  # random values and request styles (agent_align/tools/procedural.py)
            args = procedural.sample_args(tool, rng, self.cfg.optional_arg_p)
            prompt = procedural.render_request(tool, args, rng)
        else:
            args = sample_object(tool.parameters, rng, optional_p=self.cfg.optional_arg_p)
            prompt = render_request(tool, args, rng)
        schema = self.schemas[tool.name]
        if split == "train" and tool.origin != "procedural" and rng.random() < self.cfg.rename_fraction:
            tool, mapping = procedural.renamed(tool, rng)  # a natural request on a schema it must read
            args = {mapping[k]: v for k, v in args.items()}
            schema = call_schema(tool)
        offered = distractors + [tool]
        rng.shuffle(offered)
        call = {"tool": tool.name, "parameters": args}
        chosen = render_output(call, fmt, tool.name, rng)
        if not validate_output(chosen, schema, fmt, self.checker).passed:
            self.stats["dropped_chosen"] += 1
            return []
        rows = []
        want = self.cfg.negatives_per_prompt if split == "train" else 1  # eval: one row per prompt
        weights = dict(self.cfg.negative_weights)
        if self.targeted and split == "train":
            weights = self.targeted.negative_weights(weights)
        for neg_type in _pick_negative_types(weights, rng):
            if len(rows) == want:
                break
            bad = NEGATIVES.get(neg_type)(call, tool, distractors, rng)
            if bad is None:
                continue  # not applicable to this call: try the next type
            rejected = render_output(bad, fmt, tool.name, rng, prose=neg_type == "unstructured")
            verdict = validate_output(rejected, schema, fmt, self.checker)
            if verdict.passed or verdict.category != EXPECTED_CATEGORY[neg_type]:
                self.stats[f"dropped_{neg_type}"] += 1
                continue
            row = {"id": f"{split}-{i:06d}-{len(rows)}", "prompt": prompt, "chosen": chosen, "rejected": rejected,
                   "schema": schema, "tool": tool.name, "negative_type": neg_type,
                   "tools": [t.openai() for t in offered]}
            if split != "train":
                row["split"] = tag
            rows.append(row)
            self.stats[neg_type] += 1
        if not rows:
            self.stats["dropped_no_negative"] += 1
        return rows

    def rows(self, split: str, n_prompts: int) -> Iterator[dict]:
        for i in range(n_prompts):
            yield from self.make_rows(split, i)

