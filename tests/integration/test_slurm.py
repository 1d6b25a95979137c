"""A real one-node SLURM cluster (launchers/local_slurm.sh): sweeps through hydra/launcher=slurm.

    python -m pytest -m integration tests/integration/test_slurm.py -s     # prints the timings

Fails (does not skip) where SLURM is expected: as root with apt, launchers/install_system_deps.sh
(run by `launchers/setup.sh test`) installs it. Elsewhere it skips, saying what is missing.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from agent_align.compare.jobs import sweep_jobs
from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.integration

# What each sweep job runs and what it must leave in its directory: the one place to change when the
# tiny pipeline is fast enough here (then: ["stage=pipeline", ...short settings...] and ["summary.json"]).
SWEEP = ["stage=generate", "data.n_train=6,10", "data.n_eval=4"]
SWEPT = ("data.n_train", ["6", "10"])
EXPECTED = ["data/train.jsonl", "data/eval.jsonl"]
# Small enough that both jobs share this 2-CPU node at once.
RESOURCES = ["hardware.cpus_per_task=1", "hardware.mem_gb=1", "hardware.timeout_min=10"]
LOCAL_SLURM = REPO / "launchers" / "local_slurm.sh"


def slurm_expected() -> bool:
    return os.geteuid() == 0 and shutil.which("apt-get") is not None


def _free_port_pair() -> int:
    """A port p with p and p+1 free (slurmctld, slurmd), away from a default cluster on 6817."""
    for _ in range(200):
        p = random.randint(20000, 40000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", p))
                b.bind(("127.0.0.1", p + 1))
            return p
        except OSError:
            continue
    raise RuntimeError("no free port pair found")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    missing = [c for c in ("slurmctld", "slurmd", "sbatch", "munged") if shutil.which(c) is None]
    if missing:
        if slurm_expected():
            pytest.fail(f"SLURM is expected on this machine but {missing} are missing; "
                        "run: bash launchers/install_system_deps.sh")
        pytest.skip(f"needs slurm-wlm + munge and root ({', '.join(missing)} not found)")
    state = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "AGENT_ALIGN_SLURM_DIR": str(state), "AGENT_ALIGN_SLURM_PORT": str(_free_port_pair())}
    t0 = time.perf_counter()
    res = subprocess.run(["bash", str(LOCAL_SLURM), "start"], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    print(f"\nlocal SLURM up in {time.perf_counter() - t0:.1f}s: {res.stdout.splitlines()[0]}")
    try:
        yield {"AGENT_ALIGN_SLURM_DIR": env["AGENT_ALIGN_SLURM_DIR"], "AGENT_ALIGN_SLURM_PORT": env["AGENT_ALIGN_SLURM_PORT"],
               "SLURM_CONF": str(state / "slurm.conf")}
    finally:
        res = subprocess.run(["bash", str(LOCAL_SLURM), "stop"], env=env, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr
        assert subprocess.run(["bash", str(LOCAL_SLURM), "status"], env=env, capture_output=True).returncode == 3


def scontrol_states(job_id: str, env: dict) -> list[str]:
    out = subprocess.run(["scontrol", "show", "job", job_id], env={**os.environ, **env}, capture_output=True,
                         text=True, timeout=30).stdout
    return [w.split("=", 1)[1] for w in out.split() if w.startswith("JobState=")]


def test_local_cluster_reports_its_node(cluster):
    res = subprocess.run(["bash", str(LOCAL_SLURM), "status"], env={**os.environ, **cluster}, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "slurmctld: running" in res.stdout and "slurmd: running" in res.stdout
    assert f"{os.cpu_count()} CPUs" in res.stdout  # the node was sized from this machine


def test_two_job_sweep_runs_as_a_slurm_array(cluster, tmp_path, monkeypatch):
    for k, v in cluster.items():
        monkeypatch.setenv(k, v)
    sweep = tmp_path / "sweep"
    t0 = time.perf_counter()
    res = run_cli(["-m", *SWEEP, *RESOURCES, "hydra/launcher=slurm", f"hydra.sweep.dir={sweep}",
                   "experiment_name=slurm_it"], timeout=600)
    elapsed = time.perf_counter() - t0
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    print(f"\n2-job SLURM sweep ({' '.join(SWEEP)}): {elapsed:.1f}s from submit to both results")
    jobs = sweep_jobs(sweep)
    assert [j.num for j in jobs] == [0, 1]
    assert [j.state for j in jobs] == ["done", "done"], [(j.state, j.error) for j in jobs]
    assert [j.swept[SWEPT[0]] for j in jobs] == SWEPT[1]
    (array,) = {j.job_id.split("_")[0] for j in jobs}  # one job array for the sweep
    assert [j.job_id for j in jobs] == [f"{array}_0", f"{array}_1"]
    assert scontrol_states(array, cluster) == ["COMPLETED", "COMPLETED"]
    for job in jobs:
        for rel in EXPECTED:
            assert (job.dir / rel).is_file() and (job.dir / rel).stat().st_size > 0, (job.dir, rel)
        log = job.log.read_text()
        assert f"JobEnvironment(job_id={job.job_id}," in log  # ran inside SLURM, through submitit
        script = (sweep / ".submitit" / job.job_id.split("_")[0]).glob("*_submission.sh")
        assert "#SBATCH --cpus-per-task=1\n" in next(script).read_text()


def test_multi_task_job_gets_torch_distributed_env_from_slurm(cluster, tmp_path, monkeypatch):
    """hardware=cpu_ddp: 2 SLURM tasks in one job; each gets RANK/WORLD_SIZE/MASTER_* from the
    launcher callback, and generation happens once (rank 1 waits for rank 0)."""
    for k, v in cluster.items():
        monkeypatch.setenv(k, v)
    sweep = tmp_path / "ddp"
    res = run_cli(["-m", "stage=generate", "data.n_train=6", "data.n_eval=4", "hardware=cpu_ddp", "hardware.mem_gb=2",
                   "hydra/launcher=slurm", f"hydra.sweep.dir={sweep}"], timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (job,) = sweep_jobs(sweep)
    assert job.state == "done"
    folder = sweep / ".submitit" / job.job_id
    ports = set()
    for rank in (0, 1):
        log = (folder / f"{job.job_id}_{rank}_log.out").read_text() + (folder / f"{job.job_id}_{rank}_log.err").read_text()
        line = next(ln for ln in log.splitlines() if "torch.distributed from slurm job" in ln)
        assert f"'RANK': '{rank}'" in line and "'WORLD_SIZE': '2'" in line and f"'LOCAL_RANK': '{rank}'" in line
        ports.add(line.split("'MASTER_PORT': '")[1].split("'")[0])
    assert len(ports) == 1  # both ranks agree on the rendezvous port
    assert (job.dir / "data" / "train.jsonl").stat().st_size > 0
