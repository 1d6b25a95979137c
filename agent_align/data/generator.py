"""Verified preference triplets: a request, the correct call, and hard negatives.

Fully deterministic for a seed: each prompt draws from its own ``Random(f"{seed}-{split}-{i}")``,
so a row does not depend on how many came before it. A ``data.parallel_fraction`` share of training
prompts, and the ``parallel`` eval split, need two or three calls answered as a JSON list. Every chosen is checked to pass and every
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
from agent_align.data.negatives import EXPECTED_CATEGORY, NEGATIVES, PARALLEL_TYPES, parallel_negative
from agent_align.data.phrasing import join_requests, render_request
from agent_align.errors import config_error
from agent_align.tools.library import Tool, call_schema, load_tools
from agent_align.tools import procedural, renaming
from agent_align.tools.procedural import procedural_tools
from agent_align.tools.values import NoSampler, sample_object
from agent_align.validation.parallel import parallel_schema
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

    def is_parallel(self, split: str, i: int) -> bool:
        """Whether prompt ``i`` needs several calls: every prompt of the ``parallel`` eval split, and a
        ``data.parallel_fraction`` share of training prompts, drawn from a stream of its own so that
        single-call rows are the same with or without parallel prompts."""
        if split == "parallel":
            return True
        frac = self.cfg.parallel_fraction
        return split == "train" and frac > 0 and random.Random(f"{self.seed}-{split}-{i}-parallel").random() < frac

    def rename(self, tool: Tool, rng: random.Random) -> tuple[Tool, dict[str, str]]:
        """``tool`` under new names (``data.rename_style``: synonyms that fit the request, or pseudo-words)."""
        return (renaming.renamed if self.cfg.rename_style == "synonym" else procedural.renamed)(tool, rng)

    def make_rows(self, split: str, i: int) -> list[dict]:
        """The verified rows (one per negative) of prompt ``i`` of ``split`` (train, eval or parallel)."""
        if self.is_parallel(split, i):
            return self._parallel_rows(split, i)
        rng, tool, distractors, tag = self._prompt(split, i)
        fmt = self.cfg.format
        if tool.origin == "procedural":  # random values and request styles (agent_align/tools/procedural.py)
            args = procedural.sample_args(tool, rng, self.cfg.optional_arg_p)
            prompt = procedural.render_request(tool, args, rng)
        else:
            args = sample_object(tool.parameters, rng, optional_p=self.cfg.optional_arg_p)
            prompt = render_request(tool, args, rng)
        schema = self.schemas[tool.name]
        if split == "train" and tool.origin == "builtin" and rng.random() < self.cfg.rename_fraction:
            tool, mapping = self.rename(tool, rng)  # a natural request on a schema it must read
            args = {mapping[k]: v for k, v in args.items()}
            schema = call_schema(tool)
        offered = distractors + [tool]
        rng.shuffle(offered)
        call = {"tool": tool.name, "parameters": args}
        chosen = render_output(call, fmt, tool.name, rng)
        if not validate_output(chosen, schema, fmt, self.checker).passed:
            self.stats["dropped_chosen"] += 1
            return []
        base = {"prompt": prompt, "chosen": chosen, "schema": schema, "tool": tool.name}
        return self._with_negatives(split, i, tag, rng, base, offered, tool.name,
                                    lambda t: NEGATIVES.get(t)(call, tool, distractors, rng), single=True)

    def _with_negatives(self, split: str, i: int, tag: str, rng: random.Random, base: dict, offered: list[Tool],
                        name: str | list[str], make_bad, single: bool) -> list[dict]:
        """One row per verified negative: ``make_bad(type)`` gives the rejected call(s) or text, or None
        when the type does not apply; a rejected output must fail with exactly its type's category."""
        fmt = self.cfg.format
        rows = []
        want = self.cfg.negatives_per_prompt if split == "train" else 1  # eval: one row per prompt
        weights = dict(self.cfg.negative_weights)
        if single:  # the parallel types never apply; leaving them out keeps the draws of single-call rows
            weights = {k: w for k, w in weights.items() if k not in PARALLEL_TYPES}
        if self.targeted and split == "train":
            weights = self.targeted.negative_weights(weights)
        for neg_type in _pick_negative_types(weights, rng):
            if len(rows) == want:
                break
            bad = make_bad(neg_type)
            if bad is None:
                continue  # not applicable to this call: try the next type
            rejected = render_output(bad, fmt, name, rng, prose=neg_type == "unstructured")
            verdict = validate_output(rejected, base["schema"], fmt, self.checker)
            if verdict.passed or verdict.category != EXPECTED_CATEGORY[neg_type]:
                self.stats[f"dropped_{neg_type}"] += 1
                continue
            row = {"id": f"{split}-{i:06d}-{len(rows)}", "prompt": base["prompt"], "chosen": base["chosen"],
                   "rejected": rejected, "schema": base["schema"], "tool": base["tool"], "negative_type": neg_type,
                   "tools": [t.openai() for t in offered]}
            if "calls" in base:
                row["calls"] = base["calls"]
            if split != "train":
                row["split"] = tag
            rows.append(row)
            self.stats[neg_type] += 1
        if not rows:
            self.stats["dropped_no_negative"] += 1
        return rows

    def _parallel_rows(self, split: str, i: int) -> list[dict]:
        """A request that needs 2 or 3 calls: one tool several times (as BFCL's ``parallel``) or
        different tools (``parallel_multiple``); answered with a JSON list, matched in any order.
        Training draws tools like single-call prompts (seen and procedural); the ``parallel`` eval split
        uses seen tools only, so it measures the list format and not held-out tools."""
        rng = random.Random(f"{self.seed}-{split}-{i}")
        p = self.pools
        train = split == "train"

        def pick() -> Tool:
            if train and p.procedural and rng.random() < self.cfg.procedural_fraction:
                return rng.choice(p.procedural)
            return rng.choice(p.seen)

        n = rng.choice((2, 2, 3))
        same = rng.random() < 0.4
        tools = [pick()] * n if same else []
        for attempt in range(50):
            if len(tools) == n:
                break
            t = pick()
            if t not in tools or attempt >= 40:  # a library of one or two tools: repeat one
                tools.append(t)
        calls, parts = [], []
        for t in tools:
            for _ in range(5):  # two calls of one tool must differ
                if t.origin == "procedural":
                    args = procedural.sample_args(t, rng, self.cfg.optional_arg_p)
                else:
                    args = sample_object(t.parameters, rng, optional_p=self.cfg.optional_arg_p)
                if {"tool": t.name, "parameters": args} not in calls:
                    break
            else:
                self.stats["dropped_parallel_duplicate"] += 1
                return []
            calls.append({"tool": t.name, "parameters": args})
            parts.append(procedural.render_request(t, args, rng) if t.origin == "procedural"
                         else render_request(t, args, rng))
        schemas, taken = self.schemas, {t.name for t in tools}
        if train and rng.random() < self.cfg.rename_fraction:  # as single-call prompts: each built-in renamed
            renamed = {t.name: self.rename(t, rng) for t in tools if t.origin == "builtin"}
            calls = [{"tool": renamed[c["tool"]][0].name,
                      "parameters": {renamed[c["tool"]][1][k]: v for k, v in c["parameters"].items()}}
                     if c["tool"] in renamed else c for c in calls]
            tools = [renamed[t.name][0] if t.name in renamed else t for t in tools]
            schemas = {**schemas, **{new.name: call_schema(new) for new, _ in renamed.values()}}
        called = [t for k, t in enumerate(tools) if t not in tools[:k]]
        pool = [t for t in (p.seen + p.procedural if train else p.seen) if t.name not in taken]
        distractors = rng.sample(pool, rng.randint(0, min(self.cfg.distractor_tools, len(pool))))
        offered = distractors + called
        rng.shuffle(offered)
        names = [t.name for t in tools]
        schema = parallel_schema([schemas[name] for name in names])
        chosen = render_output(calls, self.cfg.format, names, rng)
        if not validate_output(chosen, schema, self.cfg.format, self.checker).passed:
            self.stats["dropped_chosen"] += 1
            return []
        base = {"prompt": join_requests(parts, rng), "chosen": chosen, "schema": schema, "tool": names[0],
                "calls": names}
        return self._with_negatives(split, i, "parallel", rng, base, offered, names,
                                    lambda t: parallel_negative(t, calls, tools, distractors, rng), single=False)

    def rows(self, split: str, n_prompts: int) -> Iterator[dict]:
        for i in range(n_prompts):
            yield from self.make_rows(split, i)

