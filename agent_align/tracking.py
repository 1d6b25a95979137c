"""W&B tracking (``logger=wandb``): one run per job, grouped by experiment, swept keys as tags.

Offline (files under the run directory) unless ``WANDB_API_KEY`` is set; keys and anything that
looks like a secret are redacted from the logged config. The HF/TRL trainers' WandbCallback logs
training metrics into the same run; SSPR and the failure breakdown are logged as tables.
"""

from __future__ import annotations

import os
import re

from omegaconf import OmegaConf

SECRET = re.compile(r"(key|token|secret|password|passwd|auth)", re.IGNORECASE)


def redact(obj):
    if isinstance(obj, dict):
        return {k: ("***" if SECRET.search(str(k)) and v not in (None, "") else redact(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj


def sweep_info() -> tuple[list[str], str | None]:
    """(tags ``key=value`` for the swept keys, W&B group of the sweep) when running under ``-m``."""
    try:
        from hydra.core.hydra_config import HydraConfig

        from agent_align.compare.overrides import job_tags, sweep_group

        hc = HydraConfig.get()
        return job_tags(hc), sweep_group(hc)
    except ValueError:  # not under @hydra.main (tests composing configs directly)
        return [], None


class Tracker:
    def __init__(self, cfg, ctx):
        self.run = None
        if cfg.logger.name != "wandb" or not ctx.is_main:
            return
        import wandb

        mode = cfg.logger.mode
        if mode == "auto":
            mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
        os.environ.setdefault("WANDB_DIR", str(ctx.run_dir))
        os.environ["WANDB_MODE"] = mode
        os.environ["WANDB_PROJECT"] = cfg.logger.project
        config = redact(OmegaConf.to_container(cfg, resolve=True))
        tags, sweep = sweep_info()
        self.run = wandb.init(project=cfg.logger.project, entity=cfg.logger.entity, mode=mode,
                              group=cfg.logger.group or sweep or cfg.experiment_name, name=ctx.run_dir.name,
                              tags=list(cfg.logger.tags) + tags, config=config, dir=str(ctx.run_dir),
                              reinit="finish_previous")

    def log_eval(self, label: str, summary: dict) -> None:
        if self.run is None:
            return
        import wandb

        table = wandb.Table(columns=["category", "count"], data=[[k, v] for k, v in summary["failures"].items()])
        data = {f"{label}/sspr": summary["sspr"], f"{label}/failures": table}
        for split, s in summary.get("by_split", {}).items():
            data[f"{label}/sspr_{split}"] = s["sspr"]
        self.run.log(data)

    def finish(self, summary: dict | None = None) -> None:
        if self.run is None:
            return
        if summary:
            for label, m in summary.get("models", {}).items():
                self.run.summary[f"{label}/sspr"] = m["sspr"]
        self.run.finish()
        self.run = None
