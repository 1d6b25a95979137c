#!/usr/bin/env python
"""Submit a sweep, follow its jobs, find its outputs, preview its sbatch script.

    python launchers/sweep.py submit loss=dpo,ipo loss.beta=0.05,0.1 hardware=a100 hydra/launcher=slurm_a100
    python launchers/sweep.py status                 # the newest sweep under multirun/; --wait to follow
    python launchers/sweep.py outputs [SWEEP_DIR]    # each job's directory and what it wrote
    python launchers/sweep.py preview hydra/launcher=slurm hardware=a100x4_zero3   # sbatch lines, no submission

`submit` takes the same overrides as `python -m agent_align -m ...` (hydra/launcher=slurm unless one is
given), fixes the sweep directory up front, starts the launcher detached (Hydra waits for every job, so
it must outlive this command) with its log in <sweep>/launch.log, and prints the directory. `status`
reads Hydra's and submitit's files (and squeue when present), so it works without sacct.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent_align.errors import UserError  # noqa: E402

FINAL = {"done", "failed", "timeout", "out_of_memory", "cancelled", "preempted", "node_fail", "completed"}


def compose_hydra(overrides: list[str]):
    """The composed config (with its `hydra` node) for the non-sweep overrides."""
    from hydra import compose, initialize_config_dir

    from agent_align.compare.overrides import parse
    from agent_align.config import register_configs

    single = [o.input_line for o in parse(overrides) if not o.is_sweep_override()]
    register_configs()
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        return compose("config", overrides=single, return_hydra_config=True)


def launcher_alive(sweep: Path) -> bool | None:
    p = sweep / "launch.json"
    if not p.is_file():
        return None
    pid = json.loads(p.read_text())["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A finished child of ours stays a zombie until reaped; /proc says so.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.is_file() and stat.read_text().split()[2] == "Z")


def submit(overrides: list[str]) -> Path:
    if not any(o.startswith("hydra/launcher=") for o in overrides):
        overrides = [*overrides, "hydra/launcher=slurm"]
    cfg = compose_hydra(overrides)
    sweep = Path(str(cfg.hydra.sweep.dir)).resolve()
    if sweep.exists() and any(sweep.iterdir()):
        raise UserError(f"{sweep}: sweep directory already exists; wait a second or set hydra.sweep.dir=NEW_DIR")
    sweep.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "agent_align", "-m", *overrides, f"hydra.sweep.dir={sweep}"]
    with (sweep / "launch.log").open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    (sweep / "launch.json").write_text(json.dumps({"pid": proc.pid, "command": cmd, "started": time.time()}, indent=2))
    print(f"sweep: {sweep}")
    print(f"launcher log: {sweep / 'launch.log'} (pid {proc.pid})")
    print(f"follow:  python launchers/sweep.py status {sweep} --wait")
    print(f"compare: python -m agent_align stage=compare compare.sweep={sweep}")
    return sweep


def print_status(sweep: Path) -> tuple[list, bool | None]:
    from agent_align.compare.jobs import sweep_jobs

    jobs = sweep_jobs(sweep)
    alive = launcher_alive(sweep)
    print(f"{sweep}: {len(jobs)} job(s)" + ("" if alive is None else f", launcher {'running' if alive else 'exited'}"))
    for j in jobs:
        swept = " ".join(f"{k}={v}" for k, v in j.swept.items()) or "-"
        num = "?" if j.num is None else j.num
        print(f"  #{num:<3} {j.job_id or '-':<10} {j.state:<13} {swept}" + (f"  ({j.error})" if j.error else ""))
    return jobs, alive


def status(sweep: Path, wait: bool, interval: float, timeout: float) -> int:
    start = time.time()
    while True:
        jobs, alive = print_status(sweep)
        ended = bool(jobs) and all(j.state in FINAL for j in jobs)
        lost = [j for j in jobs if j.state not in ("done", "completed", "failed")] if ended else []
        if ended and alive and lost:
            # submitit learns that SLURM ended a job only from sacct; without it the launcher waits forever
            pid = json.loads((sweep / "launch.json").read_text())["pid"]
            print(f"launcher (pid {pid}) is still waiting for jobs SLURM ended; stop it with: kill {pid}", file=sys.stderr)
        if (ended and (not alive or lost)) or not wait:
            break
        if alive is False and not jobs:  # the launcher died before submitting anything
            print(f"launcher exited without jobs; see {sweep / 'launch.log'}", file=sys.stderr)
            return 1
        if time.time() - start > timeout:
            print(f"still running after {timeout:.0f}s", file=sys.stderr)
            return 3
        time.sleep(interval)
        print()
    failed = [j for j in jobs if j.state not in ("done", "completed", "pending", "running")]
    if failed:
        for j in failed:
            print(f"job #{j.num} ({j.job_id}) {j.state}: log {j.log}", file=sys.stderr)
        return 1
    return 0


def outputs(sweep: Path) -> None:
    from agent_align.compare.jobs import sweep_jobs

    for j in sweep_jobs(sweep, live=False):
        if j.dir is None:
            print(f"#? {j.job_id}: not started")
            continue
        files = sorted(str(p.relative_to(j.dir)) for p in j.dir.rglob("*") if p.is_file() and ".hydra" not in p.parts)
        print(f"#{j.num} [{j.state}] {j.dir}")
        print(f"    log: {j.log}")
        for f in files[:12]:
            print(f"    {f}")
        if len(files) > 12:
            print(f"    ... {len(files) - 12} more")
    if (sweep / "compare").is_dir():
        print(f"comparison: {sweep / 'compare' / 'comparison.md'}")


def preview(overrides: list[str]) -> None:
    from agent_align.distributed import check_launch, sbatch_script

    if not any(o.startswith("hydra/launcher=") for o in overrides):
        overrides = [*overrides, "hydra/launcher=slurm"]
    cfg = compose_hydra(overrides)
    check_launch(cfg)
    print(sbatch_script(cfg))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("submit", "preview"):
        sub.add_parser(name).add_argument("overrides", nargs="*")
    st = sub.add_parser("status")
    st.add_argument("sweep", nargs="?")
    st.add_argument("--wait", action="store_true", help="poll until every job has ended")
    st.add_argument("--interval", type=float, default=10.0, help="seconds between polls")
    st.add_argument("--timeout", type=float, default=7 * 24 * 3600.0, help="give up (exit 3) after this many seconds")
    sub.add_parser("outputs").add_argument("sweep", nargs="?")
    args = ap.parse_args(argv)
    from agent_align.compare.jobs import latest_sweep

    try:
        if args.cmd == "submit":
            submit(args.overrides)
        elif args.cmd == "preview":
            preview(args.overrides)
        elif args.cmd == "status":
            return status(Path(args.sweep) if args.sweep else latest_sweep(), args.wait, args.interval, args.timeout)
        else:
            outputs(Path(args.sweep) if args.sweep else latest_sweep())
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return UserError.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
