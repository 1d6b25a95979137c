"""stage=generate: verified hard-negative preference triplets.

    python -m agent_align stage=generate data.n_train=2000 data.format=react

Writes data/train.jsonl and data/eval.jsonl in the run directory (byte-identical for a seed). The eval
file holds n_eval single-call prompts (split seen/unseen), then round(data.parallel_eval_share * n_eval)
prompts that need several calls (split parallel).
"""

from __future__ import annotations

import json
import logging
import time
from itertools import chain

from tqdm import tqdm

from agent_align.data.generator import Generator
from agent_align.jsonl import write_jsonl
from agent_align.stages.context import RunContext, finished, incomplete_outputs, mark_finished

log = logging.getLogger(__name__)


def data_paths(cfg, ctx: RunContext):
    train = cfg.data.train_path or str(ctx.path("data", "train.jsonl"))
    eval_ = cfg.data.eval_path or str(ctx.path("data", "eval.jsonl"))
    return train, eval_


def wait_for_rank0(ctx: RunContext, name: str, timeout: float = 3600.0) -> dict:
    marker = ctx.path("stages", f"{name}.json")
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"rank {ctx.rank}: rank 0 did not finish {name} within {timeout:.0f}s")
        time.sleep(0.5)
    return json.loads(marker.read_text())


def run(cfg, ctx: RunContext) -> dict:
    train_path, eval_path = data_paths(cfg, ctx)
    done = finished(cfg, ctx, "generate")
    if done and not incomplete_outputs([train_path, eval_path]):
        return done
    if not ctx.is_main:  # data is generated once, by rank 0; the other ranks wait for its marker file
        return wait_for_rank0(ctx, "generate")
    start = time.perf_counter()
    gen = Generator(cfg.data, cfg.seed)
    bar = dict(unit="prompt", disable=None, mininterval=1.0)
    n_train = write_jsonl(train_path, tqdm(gen.rows("train", cfg.data.n_train), desc="train pairs", **bar))
    n_parallel = round(cfg.data.parallel_eval_share * cfg.data.n_eval)  # the `parallel` split, after seen/unseen
    n_eval = write_jsonl(eval_path, tqdm(chain(gen.rows("eval", cfg.data.n_eval), gen.rows("parallel", n_parallel)),
                                         desc="eval prompts", **bar))
    seconds = time.perf_counter() - start
    stats = dict(sorted(gen.stats.items()))
    dropped = {k: v for k, v in stats.items() if k.startswith("dropped")}
    log.info("wrote %d train pairs to %s and %d eval rows to %s in %.1fs", n_train, train_path, n_eval, eval_path, seconds)
    log.info("negative types: %s", {k: v for k, v in stats.items() if not k.startswith("dropped")})
    log.info("dropped (failed verification or not applicable): %s", dropped or "none")
    result = {"train_path": train_path, "eval_path": eval_path, "n_train": n_train, "n_eval": n_eval,
            "stats": stats, "seconds": seconds, "tools": {"seen": [t.name for t in gen.pools.seen],
                                                          "unseen": [t.name for t in gen.pools.unseen],
                                                          "procedural": len(gen.pools.procedural)}}
    mark_finished(ctx, "generate", result, outputs=[train_path, eval_path])
    return result
