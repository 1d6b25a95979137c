"""SFT data mixtures of positive, negative (NAT-tagged) and synthetic samples (seed 004).

    python -m agent_align data.negatives=nat mixture.positive=0.6 mixture.negative=0.2 mixture.synthetic=0.2
    python -m agent_align -m +experiment=mixture_study        # the sweep behind experiments/mixture_study.md

Positive rows are the verified (request, correct call) rows; negative rows are the generator's
failed outputs with the NAT negative tag; synthetic rows are augmented positives (the request
paraphrased, the offered tools reordered, or distractor tools added: agent_align.data.robustness).
With data.negatives=nat every positive and synthetic row carries the positive tag. Rows are drawn
deterministically for the seed; a share that asks for more rows than exist repeats them.
"""

from __future__ import annotations

import random

from agent_align.steps.nat import nat_sft_rows, tag_prompt

AUGMENTATIONS = ("paraphrase", "reorder", "distractors")


def active(cfg) -> bool:
    m = cfg.mixture
    return any(v is not None for v in (m.positive, m.negative, m.synthetic))


def counts(cfg, n_available: int) -> dict[str, int]:
    m = cfg.mixture
    shares = {"positive": m.positive or 0.0, "negative": m.negative or 0.0, "synthetic": m.synthetic or 0.0}
    total = m.total or n_available
    s = sum(shares.values())
    out = {k: int(round(total * v / s)) for k, v in shares.items()}
    out["positive"] += total - sum(out.values())  # rounding remainder
    return out


def _draw(pool: list[dict], n: int, rng: random.Random) -> list[dict]:
    if not pool or n <= 0:
        return []
    reps, rest = divmod(n, len(pool))
    return [r for _ in range(reps) for r in rng.sample(pool, len(pool))] + rng.sample(pool, rest)


def sft_rows(rows: list[dict], cfg) -> list[dict]:
    """SFT rows ``{"id", "prompt", "completion", "tools", "kind"}`` for the configured mixture (or
    NAT's rows when no mixture is set)."""
    from agent_align.data.robustness import perturb
    from agent_align.train.encode import unique_prompts

    nat = cfg.data.negatives == "nat"
    if not active(cfg):
        return nat_sft_rows(rows, cfg) if nat else [
            {"id": r.get("id"), "prompt": r["prompt"], "completion": r["chosen"], "tools": r.get("tools"),
             "kind": "positive"} for r in unique_prompts(rows)]
    rng = random.Random(f"{cfg.seed}-mixture")
    positives = unique_prompts(rows)
    want = counts(cfg, len(positives))
    out = []

    def positive_row(r, kind):
        prompt = tag_prompt(r["prompt"], cfg.nat.positive_tag, cfg.nat.placement) if nat else r["prompt"]
        return {"id": f"{r.get('id')}-{kind[:3]}", "prompt": prompt, "completion": r["chosen"],
                "tools": r.get("tools"), "kind": kind}
    out += [positive_row(r, "positive") for r in _draw(positives, want["positive"], rng)]
    if want["negative"]:
        negs = [r for r in nat_sft_rows(rows, cfg) if r["nat_tag"] == "negative"]
        out += [{**r, "kind": "negative"} for r in _draw(negs, want["negative"], rng)]
    if want["synthetic"]:
        base = _draw(positives, want["synthetic"], rng)
        for i, name in enumerate(AUGMENTATIONS):
            part = [r for j, r in enumerate(base) if j % len(AUGMENTATIONS) == i]
            out += [positive_row(r, "synthetic") for r in perturb(part, name, cfg.seed + i)]
    rng.shuffle(out)
    return out
