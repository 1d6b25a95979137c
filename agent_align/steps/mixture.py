"""SFT data mixtures of positive, negative (NAT-tagged) and synthetic (procedural-tool) samples (seed 004).

    python -m agent_align data.negatives=nat mixture.negative=0.25 mixture.synthetic=0.25   # positive = the rest
    python -m agent_align -m +experiment=mixture_study        # the sweep behind experiments/mixture_study.md

* positive: verified (request, correct call) rows on the real tool library (built-in tools and
  ``data.tools_file``);
* negative: the generator's failed outputs behind the NAT negative tag (``data.negatives=nat``);
* synthetic: verified rows on procedurally generated tools (random names, parameters and types,
  ``data.procedural_tools``), the synthetic data that makes a small model read the offered schema.

Shares are fractions of ``mixture.total`` rows (0: as many as there are distinct requests, so
every mix trains the same number of steps). Left null, ``mixture.positive`` is the remainder
``1 - negative - synthetic``; set explicitly, the three are weights normalised to sum 1. With
data.negatives=nat positive and synthetic rows carry the positive tag. Rows are drawn
deterministically for the seed; a share that asks for more rows than exist repeats them.
"""

from __future__ import annotations

import logging
import random
from collections import Counter

from agent_align.errors import UserError, config_error
from agent_align.steps.nat import nat_sft_rows, tag_prompt

log = logging.getLogger(__name__)
KINDS = ("positive", "negative", "synthetic")


def active(cfg) -> bool:
    m = cfg.mixture
    return any(getattr(m, k) is not None for k in KINDS)


def shares(mixture_cfg) -> dict[str, float]:
    """The normalised share of each kind (see the module docstring for a null ``positive``)."""
    neg, syn = float(mixture_cfg.negative or 0.0), float(mixture_cfg.synthetic or 0.0)
    if mixture_cfg.positive is None:
        if neg + syn > 1.0 + 1e-9:
            raise config_error("mixture.negative", mixture_cfg.negative, f"negative + synthetic = {neg + syn:g} > 1 leaves "
                               "no room for positives; lower them or set mixture.positive to use weights")
        raw = {"positive": max(0.0, 1.0 - neg - syn), "negative": neg, "synthetic": syn}
    else:
        raw = {"positive": float(mixture_cfg.positive), "negative": neg, "synthetic": syn}
    total = sum(raw.values())
    return {k: v / total for k, v in raw.items()}


def counts(cfg, n_available: int) -> dict[str, int]:
    total = cfg.mixture.total or n_available
    share = shares(cfg.mixture)
    out = {k: int(round(total * v)) for k, v in share.items()}
    largest = max(share, key=share.get)
    out[largest] += total - sum(out.values())  # rounding remainder
    return out


def real_tool_names(cfg) -> set[str]:
    """Names of the non-procedural tools of ``data.*``: rows on any other tool are synthetic. (The
    procedural names depend on the seed, the real library does not, so rows generated elsewhere
    split the same way.)"""
    from agent_align.data.generator import build_pools

    pools = build_pools(cfg.data, cfg.seed)
    return {t.name for t in pools.seen + pools.unseen}


def _draw(pool: list[dict], n: int, rng: random.Random) -> list[dict]:
    if not pool or n <= 0:
        return []
    reps, rest = divmod(n, len(pool))
    return [r for _ in range(reps) for r in rng.sample(pool, len(pool))] + rng.sample(pool, rest)


def sft_rows(rows: list[dict], cfg) -> list[dict]:
    """SFT rows ``{"id", "prompt", "completion", "tools", "kind"}`` for the configured mixture (or
    NAT's rows when no mixture is set)."""
    from agent_align.train.encode import unique_prompts

    nat = cfg.data.negatives == "nat"
    if not active(cfg):
        return nat_sft_rows(rows, cfg) if nat else [
            {"id": r.get("id"), "prompt": r["prompt"], "completion": r["chosen"], "tools": r.get("tools"),
             "kind": "positive"} for r in unique_prompts(rows)]
    rng = random.Random(f"{cfg.seed}-mixture")
    requests = unique_prompts(rows)
    real = real_tool_names(cfg)
    pools = {"positive": [r for r in requests if r.get("tool") in real],
             "synthetic": [r for r in requests if r.get("tool") not in real]}
    if nat:
        pools["negative"] = [r for r in nat_sft_rows(rows, cfg) if r["nat_tag"] == "negative"]
    want = counts(cfg, len(requests))
    for kind, n in want.items():
        if n and not pools.get(kind):
            why = {"positive": "every training request uses a procedural tool; lower data.procedural_fraction",
                   "synthetic": "no training request uses a procedural tool; raise data.procedural_fraction",
                   "negative": "no training row has a rejected output"}[kind]
            raise UserError(f"mixture.{kind}: the mix asks for {n} {kind} rows (share {shares(cfg.mixture)[kind]:.2f}), "
                            f"but {why} (or set mixture.{kind}=0)")

    def positive_row(r, kind):
        prompt = tag_prompt(r["prompt"], cfg.nat.positive_tag, cfg.nat.placement) if nat else r["prompt"]
        return {"id": f"{r.get('id')}-{kind[:3]}", "prompt": prompt, "completion": r["chosen"],
                "tools": r.get("tools"), "kind": kind}
    out = [positive_row(r, "positive") for r in _draw(pools["positive"], want["positive"], rng)]
    out += [{**r, "kind": "negative"} for r in _draw(pools.get("negative", []), want["negative"], rng)]
    out += [positive_row(r, "synthetic") for r in _draw(pools["synthetic"], want["synthetic"], rng)]
    rng.shuffle(out)
    log.info("SFT mixture: %s rows drawn from %s distinct", dict(Counter(r["kind"] for r in out)),
             {k: len(v) for k, v in pools.items()})
    return out
