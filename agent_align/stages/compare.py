"""stage=compare: a table (markdown + CSV) and PNG plots across runs, and the same table in W&B.

    python -m agent_align stage=compare compare.sweep=multirun/default/2026-01-01_12-00-00
    python -m agent_align stage=compare 'compare.runs=[runs/default/loss-dpo,runs/default/loss-ipo]'

Rows: the swept keys (or, for unrelated runs, the overrides that differ) against SSPR seen/unseen,
failure counts, final reward margin and time, best aligned SSPR first. Writes comparison.md,
comparison.csv, sspr.png, failures.png (and margin_vs_sspr.png with DPO margins) to
``compare.out`` (default: <sweep>/compare for a sweep, else the run directory).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from omegaconf import OmegaConf

from agent_align.compare import plots
from agent_align.compare.jobs import sweep_jobs
from agent_align.compare.overrides import differing, values
from agent_align.compare.table import Run, build_rows, load_summary, markdown, write_csv
from agent_align.errors import UserError, config_error
from agent_align.jsonl import atomic_open
from agent_align.stages.context import RunContext

log = logging.getLogger(__name__)


def _sweep_runs(sweep: str) -> tuple[list[Run], list[str]]:
    runs, keys = [], []
    for job in sweep_jobs(sweep, live=False):
        if job.dir is None:
            runs.append(Run(label=f"job {job.job_id}", dir=Path(sweep), problem=f"never started ({job.state})"))
            continue
        run = Run(label=str(job.num), dir=job.dir, swept=job.swept)
        run.summary, run.problem = load_summary(job.dir)
        if run.summary is None and job.state not in ("done", "unknown"):
            run.problem = f"{job.state}: {job.error}" if job.error else job.state
        keys += [k for k in job.swept if k not in keys]
        runs.append(run)
    if not keys:  # e.g. an Optuna study (no multirun.yaml): fall back to what differs between jobs
        keys = differing({r.label: _overrides(r.dir) for r in runs})
        for r in runs:
            r.swept = {k: _overrides(r.dir).get(k) for k in keys}
    return runs, keys


def _overrides(run_dir: Path) -> dict[str, str]:
    p = run_dir / ".hydra" / "overrides.yaml"
    return values(OmegaConf.load(p)) if p.is_file() else {}


def _listed_runs(dirs: list[str]) -> tuple[list[Run], list[str]]:
    runs = []
    for d in dirs:
        p = Path(d)
        if not p.is_dir():
            raise UserError(f"{d}: run directory not found (compare.runs takes run directories holding summary.json)")
        run = Run(label=p.name, dir=p)
        run.summary, run.problem = load_summary(p)
        runs.append(run)
    keys = differing({r.label: _overrides(r.dir) for r in runs})
    for r in runs:
        r.swept = {k: _overrides(r.dir).get(k) for k in keys}
    return runs, keys


def _log_wandb(cfg, rows: list[dict], images: list[Path], out: Path, title: str) -> None:
    import wandb

    lg = cfg.logger
    mode = lg.mode if lg.mode != "auto" else ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    run = wandb.init(project=lg.project, entity=lg.entity, group=lg.group or cfg.experiment_name, job_type="compare",
                     name=f"compare {title}", tags=list(lg.tags), mode=mode, dir=str(out), reinit="finish_previous")
    cols = list(rows[0])
    run.log({"comparison": wandb.Table(columns=cols, data=[[r[c] for c in cols] for r in rows]),
             **{p.stem: wandb.Image(str(p)) for p in images}})
    run.finish()


def run(cfg, ctx: RunContext) -> dict:
    c = cfg.compare
    if c.sweep and c.runs:
        raise config_error("compare.runs", list(c.runs), "set compare.runs or compare.sweep, not both")
    if not c.sweep and not c.runs:
        raise config_error("compare.sweep", None, "set compare.sweep=MULTIRUN_DIR or compare.runs=[RUN_DIR,...]")
    if not ctx.is_main:
        return {}
    runs, keys = _sweep_runs(c.sweep) if c.sweep else _listed_runs(list(c.runs))
    rows = build_rows(runs)
    skipped = [r for r in runs if r.summary is None]
    source = c.sweep or ", ".join(c.runs)
    if not rows:
        why = "; ".join(f"{r.label}: {r.problem}" for r in skipped[:4])
        raise UserError(f"{source}: no run has a usable summary.json ({why}); run the pipeline (stage=pipeline) first")
    out = Path(c.out) if c.out else (Path(c.sweep) / "compare" if c.sweep else ctx.run_dir)
    out.mkdir(parents=True, exist_ok=True)
    title = f"Comparison of {len(rows)} runs ({source})"
    write_csv(rows, out / "comparison.csv")
    text = markdown(rows, skipped, title)
    with atomic_open(out / "comparison.md") as fh:
        fh.write(text)
    images = [plots.sspr_bars(rows, keys, out / "sspr.png"), plots.failure_bars(rows, keys, out / "failures.png")]
    margin_plot = plots.margin_vs_sspr(rows, keys, out / "margin_vs_sspr.png")
    images += [margin_plot] if margin_plot else []
    if cfg.logger.name == "wandb":
        _log_wandb(cfg, rows, images, out, Path(source).name)
    log.info("%s\n%s", title, text)
    log.info("comparison of %d runs (%d skipped) written to %s", len(rows), len(skipped), out)
    return {"out": str(out), "rows": len(rows), "skipped": [r.label for r in skipped], "swept_keys": keys,
            "best": rows[0], "plots": [str(p) for p in images]}
