"""Which config keys a sweep varies, from Hydra's own records (so the W&B logger and stage=compare agree).

    swept_keys(["loss=dpo,ipo", "loss.beta=0.05,0.1", "seed=1"])  -> ["loss", "loss.beta"]
    job_tags(HydraConfig.get())  -> {"loss": "ipo", "loss.beta": "0.1"}   # inside a sweep job

A sweep's command-line overrides are in ``<sweep dir>/multirun.yaml`` (``hydra.overrides.task``, with
the sweep syntax) and the values one job got in its own ``hydra.overrides.task``; sweeper-defined
search spaces (Optuna's ``hydra.sweeper.params``) are in every job's Hydra config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from omegaconf import OmegaConf

# Overrides that only say where/how a job runs, not what it computes; never shown as swept keys.
NOT_RESULTS = ("stage", "debug", "resume", "run_dir", "logger", "experiment_name")


def parse(overrides: Iterable[str]) -> list:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(list(overrides))


def values(overrides: Iterable[str]) -> dict[str, str]:
    """{key: value as typed} for single-valued overrides (``+x=1`` -> ``x``; deletions dropped)."""
    out = {}
    for o in parse(overrides):
        if o.is_delete() or o.is_sweep_override() or o.is_hydra_override():
            continue
        out[o.key_or_group] = o.get_value_element_as_str()
    return out


def swept_keys(task_overrides: Iterable[str], sweeper_params: Any = None) -> list[str]:
    """Keys a sweep varies: command-line sweeps (``a=1,2``, ``range()``, ``choice()``...) plus the
    sweeper's own ``params`` (Optuna search space), in that order, without duplicates."""
    keys = [o.key_or_group for o in parse(task_overrides) if o.is_sweep_override() and not o.is_hydra_override()]
    for k in (sweeper_params or {}):
        if k not in keys:
            keys.append(str(k))
    return [k for k in keys if k not in NOT_RESULTS]


def sweep_overrides(sweep_dir: str | Path) -> list[str]:
    """The sweep's command-line task overrides from ``multirun.yaml`` ([] when absent: Optuna does not
    write one)."""
    p = Path(sweep_dir) / "multirun.yaml"
    if not p.is_file():
        return []
    return list(OmegaConf.select(OmegaConf.load(p), "hydra.overrides.task", default=[]) or [])


def job_swept(hydra_cfg: Any) -> dict[str, str]:
    """{swept key: this job's value} for a job's Hydra config (``HydraConfig.get()`` inside the job,
    or a job dir's ``.hydra/hydra.yaml`` ``hydra`` node). {} for a single run."""
    mode = str(OmegaConf.select(hydra_cfg, "mode", default="") or "")
    if not mode.endswith("MULTIRUN"):
        return {}
    sweep_dir = OmegaConf.select(hydra_cfg, "sweep.dir")
    keys = swept_keys(sweep_overrides(sweep_dir) if sweep_dir else [], OmegaConf.select(hydra_cfg, "sweeper.params"))
    mine = values(OmegaConf.select(hydra_cfg, "overrides.task", default=[]) or [])
    return {k: mine[k] for k in keys if k in mine}


def job_tags(hydra_cfg: Any) -> list[str]:
    """W&B tags for a sweep job: ``key=value`` per swept key."""
    return [f"{k}={v}" for k, v in job_swept(hydra_cfg).items()]


def sweep_group(hydra_cfg: Any) -> str | None:
    """W&B group for a sweep job: ``<experiment>/<date_time>`` (the sweep dir's last two parts)."""
    mode = str(OmegaConf.select(hydra_cfg, "mode", default="") or "")
    sweep_dir = OmegaConf.select(hydra_cfg, "sweep.dir")
    if not mode.endswith("MULTIRUN") or not sweep_dir:
        return None
    return "/".join(Path(str(sweep_dir)).parts[-2:])


def differing(runs: dict[str, dict[str, str]]) -> list[str]:
    """For unrelated runs (``compare.runs=[...]``): the override keys whose values differ between them."""
    keys: list[str] = []
    for ov in runs.values():
        keys += [k for k in ov if k not in keys and k not in NOT_RESULTS]
    return [k for k in keys if len({ov.get(k) for ov in runs.values()}) > 1]
