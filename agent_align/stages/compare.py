"""stage=compare: a table (markdown + CSV) and PNG plots across runs, and the same table in W&B.

    python -m agent_align stage=compare compare.sweep=multirun/default/2026-01-01_12-00-00
    python -m agent_align stage=compare 'compare.runs=[runs/default/loss-dpo,runs/default/loss-ipo]'
    python -m agent_align stage=compare 'compare.runs=[runs/a,runs/b]' 'compare.labels=[step DPO,NAT]'

A dispatcher over the kinds of run it is given; each kind gets its own table, in ``compare.out``
(default: <sweep>/compare for a sweep, else the run directory):

* single-turn pipeline runs (summary.json): rows are the swept keys (or, for unrelated runs, the
  overrides that differ) against SSPR seen/unseen, failure counts, final reward margin and time, best
  aligned SSPR first (``compare.table``). Writes comparison.md, comparison.csv, sspr.png, failures.png (and
  margin_vs_sspr.png with DPO margins).
* agentic runs (stage=agent_pipeline, agentic_summary.json): one row per method on the held-out test
  tasks, SFT once, with standard errors from the episodes (``compare.agent_table``). Writes
  agent_comparison.md, agent_comparison.csv, agent_success.png, agent_steps.png.

A run directory with neither summary is listed under "Not included"; when no run has one, one error line.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from omegaconf import OmegaConf

from agent_align.compare import agent_plots, agent_table, plots
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
        _load(run)
        if run.summary is None and run.agentic is None and job.state not in ("done", "unknown"):
            run.problem = f"{job.state}: {job.error}" if job.error else job.state
        keys += [k for k in job.swept if k not in keys]
        runs.append(run)
    if not keys:  # e.g. an Optuna study (no multirun.yaml): fall back to what differs between jobs
        keys = _set_differing(runs)
    return runs, keys


def _load(run: Run) -> None:
    """Read the run's summary.json and agentic_summary.json; ``problem`` says why it has neither."""
    run.summary, problem = load_summary(run.dir)
    run.agentic, agent_problem = agent_table.load_agentic_summary(run.dir)
    if run.summary is None and run.agentic is None:
        if (run.dir / agent_table.SUMMARY).is_file():
            run.problem = agent_problem
        elif (run.dir / "summary.json").is_file():
            run.problem = problem
        else:
            run.problem = f"no summary.json or {agent_table.SUMMARY} (job unfinished or failed)"


def _set_differing(runs: list[Run]) -> list[str]:
    """The overrides that differ between ``runs`` become their ``swept`` keys."""
    ovs = [_overrides(r.dir) for r in runs]
    keys = differing({str(i): ov for i, ov in enumerate(ovs)})
    for r, ov in zip(runs, ovs):
        r.swept = {k: ov.get(k) for k in keys}
    return keys


def _overrides(run_dir: Path) -> dict[str, str]:
    p = run_dir / ".hydra" / "overrides.yaml"
    return values(OmegaConf.load(p)) if p.is_file() else {}


def _listed_runs(dirs: list[str]) -> tuple[list[Run], list[str]]:
    runs = []
    for d in dirs:
        p = Path(d)
        if not p.is_dir():
            raise UserError(f"{d}: run directory not found (compare.runs takes run directories holding "
                            f"summary.json or {agent_table.SUMMARY})")
        run = Run(label=p.name, dir=p)
        _load(run)
        runs.append(run)
    # each kind of run is compared with its own kind: what differs among agentic runs names their methods
    agentic = [r for r in runs if r.agentic is not None]
    keys = _set_differing([r for r in runs if r.agentic is None])
    _set_differing(agentic)
    return runs, keys


def _log_wandb(cfg, tables: dict[str, list[dict]], images: list[Path], out: Path, title: str) -> None:
    import wandb

    lg = cfg.logger
    mode = lg.mode if lg.mode != "auto" else ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    run = wandb.init(project=lg.project, entity=lg.entity, group=lg.group or cfg.experiment_name, job_type="compare",
                     name=f"compare {title}", tags=list(lg.tags), mode=mode, dir=str(out), reinit="finish_previous")
    logged = {name: wandb.Table(columns=list(rows[0]), data=[[r[c] for c in rows[0]] for r in rows])
              for name, rows in tables.items() if rows}
    run.log({**logged, **{p.stem: wandb.Image(str(p)) for p in images}})
    run.finish()


def _single_turn(rows: list[dict], skipped: list[Run], keys: list[str], out: Path, source: str) -> list[Path]:
    title = f"Comparison of {len(rows)} runs ({source})"
    write_csv(rows, out / "comparison.csv")
    text = markdown(rows, skipped, title)
    with atomic_open(out / "comparison.md") as fh:
        fh.write(text)
    images = [plots.sspr_bars(rows, keys, out / "sspr.png"), plots.failure_bars(rows, keys, out / "failures.png")]
    margin_plot = plots.margin_vs_sspr(rows, keys, out / "margin_vs_sspr.png")
    images += [margin_plot] if margin_plot else []
    log.info("%s\n%s", title, text)
    return images


def _agentic(rows: list[dict], skipped: list[Run], n_runs: int, out: Path, source: str) -> list[Path]:
    title = f"Agentic methods on the held-out test tasks ({n_runs} runs: {source})"
    agent_table.write_csv(rows, out / "agent_comparison.csv")
    text = agent_table.markdown(rows, skipped, title)
    with atomic_open(out / "agent_comparison.md") as fh:
        fh.write(text)
    log.info("%s\n%s", title, text)
    return [agent_plots.success_bars(rows, out / "agent_success.png"),
            agent_plots.step_panels(rows, out / "agent_steps.png")]


def run(cfg, ctx: RunContext) -> dict:
    c = cfg.compare
    if c.sweep and c.runs:
        raise config_error("compare.runs", list(c.runs), "set compare.runs or compare.sweep, not both")
    if not c.sweep and not c.runs:
        raise config_error("compare.sweep", None, "set compare.sweep=MULTIRUN_DIR or compare.runs=[RUN_DIR,...]")
    if not ctx.is_main:
        return {}
    runs, keys = _sweep_runs(c.sweep) if c.sweep else _listed_runs(list(c.runs))
    labels = [str(x) for x in (c.labels or [])]
    if labels:
        if len(labels) != len(runs):
            raise config_error("compare.labels", labels, f"give one label per run, in order ({len(runs)}: "
                               + ", ".join(r.label for r in runs) + ")")
        for r, label in zip(runs, labels):
            r.label = label
    rows = build_rows(runs)
    agent_rows = agent_table.build_agent_rows(runs, labelled=bool(labels))
    skipped = [r for r in runs if r.summary is None and r.agentic is None]
    source = c.sweep or ", ".join(c.runs)
    if not rows and not agent_rows:
        why = "; ".join(f"{r.label}: {r.problem}" for r in (skipped or runs)[:4])
        raise UserError(f"{source}: no run has a usable summary.json or {agent_table.SUMMARY} ({why}); run the "
                        "pipeline (stage=pipeline, or stage=agent_pipeline for agentic runs) first")
    out = Path(c.out) if c.out else (Path(c.sweep) / "compare" if c.sweep else ctx.run_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = _single_turn(rows, skipped, keys, out, source) if rows else []
    n_agentic = sum(r.agentic is not None for r in runs)
    images += _agentic(agent_rows, skipped, n_agentic, out, source) if agent_rows else []
    if cfg.logger.name == "wandb":
        _log_wandb(cfg, {"comparison": rows, "agent_comparison": agent_rows}, images, out, Path(source).name)
    log.info("comparison of %d runs (%d agentic, %d skipped) written to %s", len(rows) + n_agentic, n_agentic,
             len(skipped), out)
    return {"out": str(out), "rows": len(rows), "skipped": [r.label for r in skipped], "swept_keys": keys,
            "best": rows[0] if rows else None, "plots": [str(p) for p in images],
            "agent_rows": len(agent_rows), "agent_methods": [r["method"] for r in agent_rows]}
