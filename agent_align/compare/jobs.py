"""The jobs of a sweep directory: where each one's outputs are and how it ended, read from the files
Hydra and submitit write (no sacct needed: many small clusters, and ours in tests, run without a
SLURM accounting database).

    python launchers/sweep.py status multirun/default/2026-01-01_12-00-00

Per job, Hydra writes ``<sweep>/<num>_<overrides>/.hydra/hydra.yaml`` (job num, submitit job id,
overrides) when it starts; submitit writes ``<sweep>/.submitit/<id>/<id>_<task>_log.{out,err}`` and,
when the function returns or raises, ``<id>_<task>_result.pkl``.
"""

from __future__ import annotations

import pickle
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from agent_align.compare.overrides import job_swept, values
from agent_align.errors import UserError

# What slurmstepd writes to a job's stderr when SLURM ends it.
SLURM_ENDINGS = (("DUE TO TIME LIMIT", "timeout"), ("oom-kill", "out_of_memory"), ("Out Of Memory", "out_of_memory"),
                 ("CANCELLED", "cancelled"), ("DUE TO PREEMPTION", "preempted"), ("NODE FAILURE", "node_fail"))


@dataclass
class Job:
    num: int | None  # Hydra job number (None until the job has started and written .hydra/)
    dir: Path | None  # the job's output directory
    job_id: str | None = None  # submitit/SLURM id: "<array>_<index>"
    state: str = "unknown"  # pending | running | done | failed | timeout | out_of_memory | cancelled | ...
    error: str = ""  # last line of the traceback, or SLURM's reason
    swept: dict[str, str] = field(default_factory=dict)  # swept key -> this job's value
    overrides: dict[str, str] = field(default_factory=dict)  # every task override of this job
    log: Path | None = None  # rank 0's stdout (submitit), or the Hydra job log


def _hydra_node(job_dir: Path):
    p = job_dir / ".hydra" / "hydra.yaml"
    return OmegaConf.load(p).hydra if p.is_file() else None


def _submitit_state(folder: Path, job_id: str) -> tuple[str, str, Path | None]:
    """(state, error, stdout log) for task 0 of one submitit job folder."""
    out, err, result = (folder / f"{job_id}_0_log.out", folder / f"{job_id}_0_log.err", folder / f"{job_id}_0_result.pkl")
    if result.is_file():
        try:
            with result.open("rb") as fh:  # our own job's result, written by submitit
                status, value = pickle.load(fh)
        except Exception as exc:  # unreadable (e.g. written by another Python): the file alone says it ended
            return "done", f"result unreadable: {exc}", out
        if status == "success":
            return "done", "", out
        lines = [ln for ln in str(value).strip().splitlines() if ln.strip()]
        return "failed", lines[-1] if lines else "error", out
    text = err.read_text(errors="replace") if err.is_file() else ""
    for marker, state in SLURM_ENDINGS:
        if marker in text:
            line = next(ln for ln in text.splitlines() if marker in ln)
            return state, line.strip(), out
    if out.is_file() or err.is_file():
        return "running", "", out
    return "pending", "", None


def _squeue_states(ids: list[str]) -> dict[str, str]:
    """Live states from squeue for jobs that are queued or running; {} without SLURM."""
    if not ids or shutil.which("squeue") is None:
        return {}
    arrays = sorted({i.split("_")[0] for i in ids})
    try:
        res = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T", "-j", ",".join(arrays)], capture_output=True,
                             text=True, timeout=20)
    except (subprocess.SubprocessError, OSError):
        return {}
    if res.returncode != 0:
        return {}
    return dict(line.split(None, 1) for line in res.stdout.splitlines() if " " in line)


def sweep_jobs(sweep_dir: str | Path, live: bool = True) -> list[Job]:
    """Every job of a sweep, in job-number order (submitted but not yet started jobs last)."""
    sweep = Path(sweep_dir)
    if not sweep.is_dir():
        raise UserError(f"{sweep}: sweep directory not found (a multirun dir looks like multirun/<experiment>/<date_time>)")
    by_id: dict[str, Job] = {}
    jobs: list[Job] = []
    for d in sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")):
        node = _hydra_node(d)
        if node is None:
            continue
        job = Job(num=int(node.job.num), dir=d, job_id=str(node.job.id), swept=job_swept(node),
                  overrides=values(node.overrides.task or []), log=d / f"{node.job.name}.log")
        jobs.append(job)
        by_id[job.job_id] = job
    folder = sweep / ".submitit"
    if folder.is_dir():
        for sub in sorted(p for p in folder.iterdir() if (p / f"{p.name}_submitted.pkl").is_file()):
            job = by_id.get(sub.name)
            if job is None:  # submitted, not started yet
                job = Job(num=None, dir=None, job_id=sub.name)
                jobs.append(job)
            job.state, job.error, out = _submitit_state(sub, sub.name)
            job.log = out if out and out.is_file() else job.log
    else:  # the basic launcher runs jobs in-process: a summary or stage record means it finished
        for job in jobs:
            job.state = "done" if any((job.dir / f).exists() for f in ("summary.json", "stages")) else "unknown"
    on_slurm = folder.is_dir() and any(folder.glob("*/*_submission.sh"))  # submitit's local executor writes none
    active = [j.job_id for j in jobs if j.job_id and j.state in ("pending", "running")]
    live_states = _squeue_states(active) if live and on_slurm else {}
    for job in jobs:
        if job.job_id in live_states:
            job.state = live_states[job.job_id].lower()
    return sorted(jobs, key=lambda j: (j.num is None, j.num if j.num is not None else 0, j.job_id or ""))


def latest_sweep(root: str | Path = "multirun") -> Path:
    """The most recently modified sweep dir under ``root`` (multirun/<experiment>/<date_time>)."""
    cands = [p for p in Path(root).glob("*/*") if p.is_dir()]
    if not cands:
        raise UserError(f"{root}: no sweeps found; pass the sweep directory explicitly")
    return max(cands, key=lambda p: p.stat().st_mtime)
