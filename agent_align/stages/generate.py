"""stage=generate: verified hard-negative preference triplets.

    python -m agent_align stage=generate data.n_train=2000 data.format=react

Writes data/train.jsonl and data/eval.jsonl in the run directory (byte-identical for a seed).
"""

from __future__ import annotations

import logging
import time

from tqdm import tqdm

from agent_align.data.generator import Generator
from agent_align.jsonl import write_jsonl
from agent_align.stages.context import RunContext

log = logging.getLogger(__name__)


def data_paths(cfg, ctx: RunContext):
    train = cfg.data.train_path or str(ctx.path("data", "train.jsonl"))
    eval_ = cfg.data.eval_path or str(ctx.path("data", "eval.jsonl"))
    return train, eval_


def run(cfg, ctx: RunContext) -> dict:
    train_path, eval_path = data_paths(cfg, ctx)
    start = time.perf_counter()
    gen = Generator(cfg.data, cfg.seed)
    bar = dict(unit="prompt", disable=None, mininterval=1.0)
    n_train = write_jsonl(train_path, tqdm(gen.rows("train", cfg.data.n_train), desc="train pairs", **bar))
    n_eval = write_jsonl(eval_path, tqdm(gen.rows("eval", cfg.data.n_eval), desc="eval prompts", **bar))
    seconds = time.perf_counter() - start
    stats = dict(sorted(gen.stats.items()))
    dropped = {k: v for k, v in stats.items() if k.startswith("dropped")}
    log.info("wrote %d train pairs to %s and %d eval rows to %s in %.1fs", n_train, train_path, n_eval, eval_path, seconds)
    log.info("negative types: %s", {k: v for k, v in stats.items() if not k.startswith("dropped")})
    log.info("dropped (failed verification or not applicable): %s", dropped or "none")
    return {"train_path": train_path, "eval_path": eval_path, "n_train": n_train, "n_eval": n_eval,
            "stats": stats, "seconds": seconds, "tools": {"seen": [t.name for t in gen.pools.seen],
                                                          "unseen": [t.name for t in gen.pools.unseen],
                                                          "procedural": len(gen.pools.procedural)}}
