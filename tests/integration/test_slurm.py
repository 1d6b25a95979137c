"""A real one-node SLURM cluster (launchers/local_slurm.sh): sweeps through hydra/launcher=slurm.

    python -m pytest -m integration tests/integration/test_slurm.py -s     # prints the timings

Fails (does not skip) where SLURM is expected: as root with apt, launchers/install_system_deps.sh
(run by `launchers/setup.sh test`) installs it. Elsewhere it skips, saying what is missing.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import time

import pytest

from agent_align.compare.jobs import sweep_jobs
from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.integration

# What each sweep job runs and what it must leave in its directory (the one place to change).
# A whole tiny pipeline per job: generate -> SFT -> evaluate -> DPO -> evaluate, ~1 min on this node.
TINY_PIPELINE = ["stage=pipeline", "data.n_train=64", "data.n_eval=8", "model.hidden_size=64", "model.num_layers=2",
                 "model.intermediate_size=128", "model.num_heads=2", "model.vocab_size=512", "model.copy_warmup_steps=0",
                 "model.tokenizer_corpus_rows=300", "sft.max_steps=3", "dpo.max_steps=3", "evaluate.max_new_tokens=32"]
SWEEP = [*TINY_PIPELINE, "loss=dpo,ipo"]
SWEPT = ("loss", ["dpo", "ipo"])
EXPECTED = ["summary.json", "checkpoints/dpo/model.safetensors"]
# Both jobs share this 2-CPU node at once: one CPU and one thread each.
RESOURCES = ["hardware.cpus_per_task=1", "hardware.torch_threads=1", "hardware.mem_gb=3", "hardware.timeout_min=20",
             # short job dirs: the default <num>_<all overrides> exceeds the 255-byte file name limit
             "hydra.sweep.subdir=${hydra:job.num}_${loss.name}"]
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


def scontrol_states(job_id: str, env: dict, timeout: float = 60) -> list[str]:
    """SLURM's own view of a job array's tasks, once none is still running (submitit returns as soon
    as the result file exists; the Python process exits a moment later)."""
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run(["scontrol", "show", "job", job_id], env={**os.environ, **env}, capture_output=True,
                             text=True, timeout=30).stdout
        states = [w.split("=", 1)[1] for w in out.split() if w.startswith("JobState=")]
        if not {"RUNNING", "COMPLETING", "PENDING"} & set(states) or time.monotonic() > deadline:
            return states
        time.sleep(0.5)


def test_local_cluster_reports_its_node(cluster):
    res = subprocess.run(["bash", str(LOCAL_SLURM), "status"], env={**os.environ, **cluster}, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "slurmctld: running" in res.stdout and "slurmd: running" in res.stdout
    assert f"{os.cpu_count()} CPUs" in res.stdout  # the node was sized from this machine


@pytest.mark.slow
def test_two_job_sweep_runs_as_a_slurm_array(cluster, tmp_path, monkeypatch):
    for k, v in cluster.items():
        monkeypatch.setenv(k, v)
    sweep = tmp_path / "sweep"
    t0 = time.perf_counter()
    res = run_cli(["-m", *SWEEP, *RESOURCES, "hydra/launcher=slurm", f"hydra.sweep.dir={sweep}",
                   "experiment_name=slurm_it"], timeout=600)
    elapsed = time.perf_counter() - t0
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    print(f"\n2-job SLURM sweep (tiny pipeline, loss=dpo,ipo): {elapsed:.1f}s from submit to both results")
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
        summary = json.loads((job.dir / "summary.json").read_text())
        assert summary["models"]["aligned"]["n"] == 9 and 0.0 <= summary["objective"] <= 1.0  # 8 eval requests + 1 parallel
        assert summary["train"]["dpo"]["loss"] == job.swept["loss"]  # each job ran its own sweep value
        log = job.log.read_text()
        assert f"JobEnvironment(job_id={job.job_id}," in log  # ran inside SLURM, through submitit
        script = (sweep / ".submitit" / job.job_id.split("_")[0]).glob("*_submission.sh")
        assert "#SBATCH --cpus-per-task=1\n" in next(script).read_text()
    # the sweep's comparison, from the real summary.json files
    res = run_cli(["stage=compare", f"compare.sweep={sweep}", f"hydra.run.dir={tmp_path / 'cmp'}"])
    assert res.returncode == 0, res.stderr[-3000:]
    table = (sweep / "compare" / "comparison.md").read_text()
    assert "| run | loss | aligned_sspr |" in table and table.count("\n| ") == 3  # header + 2 runs
    assert all((sweep / "compare" / f).stat().st_size > 0 for f in ("comparison.csv", "sspr.png", "failures.png"))


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


@pytest.mark.slow
def test_ddp_training_job_on_two_slurm_tasks(cluster, tmp_path, monkeypatch):
    """hydra/launcher=slurm + hardware=cpu_ddp: SFT on 2 SLURM tasks, torch.distributed set up by the
    launcher callback alone (no torchrun). ~1 min."""
    from tests.integration.test_distributed import SIZE, TINY, check_both_ranks_trained

    for k, v in cluster.items():
        monkeypatch.setenv(k, v)
    data = tmp_path / "data"
    assert run_cli(["stage=generate", f"run_dir={data}", f"hydra.run.dir={data}", *SIZE]).returncode == 0
    sweep = tmp_path / "sft"
    t0 = time.perf_counter()
    res = run_cli(["-m", "stage=sft", "hardware=cpu_ddp", "hardware.mem_gb=4", "hydra/launcher=slurm", *TINY,
                   f"data.train_path={data / 'data' / 'train.jsonl'}", f"data.eval_path={data / 'data' / 'eval.jsonl'}",
                   f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=job${hydra:job.num}"], timeout=1200)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    print(f"\n2-task DDP SFT job on SLURM: {time.perf_counter() - t0:.1f}s")
    (job,) = sweep_jobs(sweep)
    assert job.state == "done" and job.dir == sweep / "job0"
    sft = json.loads((job.dir / "stages" / "sft.json").read_text())
    check_both_ranks_trained(job.dir, "sft", "sft-trainer", sft["examples"], zero=False)
