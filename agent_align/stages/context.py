"""What every stage gets besides the config: the run directory and helpers to find files in it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RunContext:
    run_dir: Path
    rank: int = 0  # torch.distributed rank; only rank 0 writes data, reports and W&B runs
    world_size: int = 1
    cache: dict[str, Any] = field(default_factory=dict)  # objects shared across pipeline stages (models...)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def path(self, *parts: str) -> Path:
        return self.run_dir.joinpath(*parts)

    @classmethod
    def from_env(cls, run_dir: str | os.PathLike) -> "RunContext":
        rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))
        world = int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1")))
        return cls(run_dir=Path(run_dir).resolve(), rank=rank, world_size=world)


def finished(cfg, ctx: RunContext, name: str) -> dict | None:
    """The saved result of stage ``name`` in this run dir, if it finished and ``resume=auto``."""
    import json

    import logging

    p = ctx.path("stages", f"{name}.json")
    if cfg.resume == "auto" and p.exists():
        logging.getLogger(__name__).info("%s already finished in %s; skipping it (resume=never redoes it)",
                                         name, ctx.run_dir)
        return json.loads(p.read_text())
    return None


def mark_finished(ctx: RunContext, name: str, result: dict) -> None:
    from agent_align.jsonl import write_json

    if ctx.is_main:
        write_json(ctx.path("stages", f"{name}.json"), result)
