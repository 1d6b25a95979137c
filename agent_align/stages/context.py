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
        try:
            saved = json.loads(p.read_text(encoding="utf-8"))
        except (ValueError, OSError):  # unreadable marker: the stage runs again
            return None
        logging.getLogger(__name__).info("%s already finished in %s; skipping it (resume=never redoes it)",
                                         name, ctx.run_dir)
        return saved
    return None


def incomplete_outputs(paths) -> list[str]:
    """The paths among ``paths`` that are missing or empty."""
    return [str(p) for p in paths if not Path(p).is_file() or Path(p).stat().st_size == 0]


def checkpoint_files(path) -> list[Path]:
    """What a saved checkpoint must hold: its config (a full model's, or a PEFT adapter's)."""
    path = Path(path)
    adapter = path / "adapter_config.json"
    return [adapter if adapter.exists() else path / "config.json"]


def mark_finished(ctx: RunContext, name: str, result: dict, outputs=()) -> None:
    """Record that stage ``name`` finished, so a resumed run skips it. Refused (UserError) when one
    of its ``outputs`` is missing or empty: a resumed run would otherwise skip a stage whose work
    is not there."""
    from agent_align.errors import UserError
    from agent_align.jsonl import write_json

    bad = incomplete_outputs(outputs) if ctx.is_main else []  # only the main rank writes outputs
    if bad:
        for p in bad:  # an empty output is no result: leave nothing a later run could mistake for one
            if Path(p).is_file():
                Path(p).unlink()
        raise UserError(f"stage {name} produced no output in {', '.join(bad)}; not marking it finished "
                        "(check the stage's settings, e.g. data.n_train, data.tools)")
    if ctx.is_main:
        write_json(ctx.path("stages", f"{name}.json"), result)
