"""Launchers x hardware presets: the sbatch lines submitit would write, batch arithmetic, DeepSpeed
files, the Optuna search space, the SLURM -> torch.distributed env, and the sweep wrapper."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from agent_align.checks import check_config
from agent_align.distributed import (check_launch, deepspeed_config_path, executor_parameters, sbatch_options,
                                     sbatch_script)
from agent_align.errors import UserError
from tests.conftest import CONF, REPO

LAUNCHERS = sorted(p.stem for p in (CONF / "hydra" / "launcher").glob("*.yaml"))
HARDWARE = sorted(p.stem for p in (CONF / "hardware").glob("*.yaml"))


def compose_hydra(overrides: list[str]):
    """The config `python -m agent_align -m OVERRIDES` would launch, `hydra` node included (cached:
    one composition takes ~0.5 s and the tests below only read it)."""
    return _compose(tuple(overrides))


@functools.lru_cache(maxsize=None)
def _compose(overrides: tuple[str, ...]):
    from hydra import compose, initialize_config_dir

    from agent_align.config import register_configs

    register_configs()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


def test_the_expected_presets_exist():
    assert {"slurm", "slurm_a100", "slurm_l4", "slurm_t4", "local"} <= set(LAUNCHERS)
    assert {"cpu", "t4", "l4", "a100", "cpu_ddp", "cpu_zero2", "a100x4_zero3", "t4x2_zero2_offload"} <= set(HARDWARE)


@pytest.mark.parametrize("hardware", HARDWARE)
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_launcher_takes_its_resources_from_the_hardware_preset(launcher, hardware, tmp_path):
    cfg = compose_hydra([f"hydra/launcher={launcher}", f"hardware={hardware}"])
    hw = cfg.hardware
    gpu_type = launcher.split("_", 1)[1] if launcher.startswith("slurm_") else None
    if gpu_type and not hardware.startswith(gpu_type):
        with pytest.raises(UserError, match=f"add hardware={gpu_type}"):
            check_launch(cfg)
        return
    check_launch(cfg)
    cluster, _, params = executor_parameters(cfg.hydra.launcher)
    assert cfg.hydra.callbacks.scale_out._target_ == "agent_align.distributed.ScaleOutCallback"
    if cluster == "local":
        assert (params["gpus_per_node"], params["tasks_per_node"], params["cpus_per_task"], params["timeout_min"]) == \
            (hw.gpus_per_node, hw.distributed.num_processes, hw.cpus_per_task, hw.timeout_min)
        return
    opts = sbatch_options(sbatch_script(cfg, folder=str(tmp_path)))
    assert opts["gpus-per-node"] == str(hw.gpus_per_node)
    assert opts["ntasks-per-node"] == str(hw.distributed.num_processes)
    assert opts["cpus-per-task"] == str(hw.cpus_per_task)
    assert opts["mem"] == f"{hw.mem_gb}GB"
    assert opts["time"] == str(hw.timeout_min)
    assert opts["nodes"] == "1"
    assert "partition" not in opts and "account" not in opts and "qos" not in opts  # cluster defaults
    assert opts.get("constraint") == gpu_type
    assert opts["job-name"] == "aa_default"


def test_partition_account_qos_and_extra_sbatch_lines(tmp_path):
    cfg = compose_hydra(["hydra/launcher=slurm", "hardware=a100", "hardware.partition=gpu", "hardware.account=proj7",
                         "hardware.qos=high", "+hydra.launcher.additional_parameters.mail-type=END",
                         "hydra.launcher.setup=[module load cuda/12.4]"])
    script = sbatch_script(cfg, folder=str(tmp_path))
    opts = sbatch_options(script)
    assert (opts["partition"], opts["account"], opts["qos"], opts["mail-type"]) == ("gpu", "proj7", "high", "END")
    assert "module load cuda/12.4\n" in script.split("# command")[0]


@pytest.mark.parametrize("hardware", HARDWARE)
def test_preset_passes_the_config_checks_and_keeps_the_effective_batch(hardware):
    cfg = compose_hydra([f"hardware={hardware}"])
    check_config(cfg)
    hw = cfg.hardware
    n = hw.distributed.num_processes
    if hw.device == "cuda":  # seed 001's memory table: effective batch 16 on every GPU
        assert hw.sft_batch_size * hw.sft_grad_accum * n == 16
        assert hw.dpo_batch_size * hw.dpo_grad_accum * n == 16
        assert hw.gpus_per_node == n
    else:  # CPU presets keep hardware=cpu's effective batch
        cpu = compose_hydra(["hardware=cpu"]).hardware
        assert hw.sft_batch_size * hw.sft_grad_accum * n == cpu.sft_batch_size * cpu.sft_grad_accum
    if hw.distributed.backend == "deepspeed":
        stage = json.loads(Path(deepspeed_config_path(hw.distributed.deepspeed_config)).read_text())
        assert f"zero{stage['zero_optimization']['stage']}" in hw.distributed.deepspeed_config


def test_deepspeed_files_validate_against_deepspeed():
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    files = sorted((CONF / "deepspeed").glob("*.json"))
    assert [f.stem for f in files] == ["zero2", "zero2_offload", "zero3", "zero3_offload"]
    for f in files:
        ds = json.loads(f.read_text())
        # "auto" is filled by the HF Trainer from our config; any number stands in for it here
        zero = DeepSpeedZeroConfig(**{k: (10**6 if v == "auto" else v) for k, v in ds["zero_optimization"].items()})
        assert zero.stage == int(f.stem[4])
        assert (zero.offload_optimizer is not None) == f.stem.endswith("offload")
        assert ("optimizer" in ds) == f.stem.endswith("offload")  # offload needs DeepSpeed's CPU Adam
        assert ds["train_micro_batch_size_per_gpu"] == ds["gradient_accumulation_steps"] == "auto"


def test_launch_checks_name_key_value_and_fix():
    cases = [
        (["hardware=cpu", "hardware.distributed.num_processes=2"], "hardware.distributed.num_processes' = 2: with backend none"),
        (["hardware=a100x4_zero3", "hardware.distributed.num_processes=2"], "set it to hardware.gpus_per_node (4)"),
        (["hardware=cpu_zero2", "hardware.distributed.deepspeed_config=conf/deepspeed/zero9.json"],
         "'conf/deepspeed/zero9.json': file not found; use one of conf/deepspeed/{zero2.json"),
        (["hydra/launcher=slurm_t4", "hardware=l4"], "hydra/launcher=slurm_t4 runs on t4 nodes; add hardware=t4"),
    ]
    for overrides, message in cases:
        with pytest.raises(UserError, match=None) as err:
            check_launch(compose_hydra(overrides))
        assert message in str(err.value), (overrides, str(err.value))


def test_optuna_search_space_composes_and_builds():
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides
    from optuna.distributions import CategoricalDistribution, LogUniformDistribution

    cfg = compose_hydra(["+hparams_search=sspr_optuna"])
    sw = cfg.hydra.sweeper
    assert sw._target_.endswith("OptunaSweeper") and sw.direction == "maximize"
    assert sw.sampler._target_ == "optuna.samplers.TPESampler" and sw.sampler.n_startup_trials < sw.n_trials
    space, fixed = create_params_from_overrides([f"{k}={v}" for k, v in sw.params.items()])
    assert not fixed
    assert space["loss"] == CategoricalDistribution(["dpo", "ipo"])
    assert isinstance(space["loss.beta"], LogUniformDistribution) and space["loss.beta"].low == 0.02
    for key in sw.params:  # every searched key exists in our schema (a typo would only fail at trial 1)
        assert OmegaConf.select(cfg, key) is not None, key
    trial = compose_hydra(["loss=ipo", "loss.beta=0.3", "dpo.lr=0.0001", "data.negatives_per_prompt=2"])
    check_config(trial)


def _export_in_subprocess(env: dict) -> dict:
    code = ("import json, os; from agent_align.distributed import export_torch_env; "
            "print(json.dumps([export_torch_env(), os.environ.get('RANK')]))")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SUBMITIT_", "RANK", "WORLD_SIZE"))}
    res = subprocess.run([sys.executable, "-c", code], env={**base, "PYTHONPATH": str(REPO), **env},
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_torch_env_from_a_slurm_task():
    slurm = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "77", "SLURM_NTASKS": "4", "SLURM_JOB_NUM_NODES": "1",
             "SLURM_NODEID": "0", "SLURM_PROCID": "3", "SLURM_LOCALID": "3", "SLURM_JOB_NODELIST": "gpu-node-7"}
    env, rank = _export_in_subprocess(slurm)
    assert rank == "3"
    assert env["MASTER_ADDR"] == "gpu-node-7" and 20000 <= int(env["MASTER_PORT"]) <= 60000
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"]) == ("3", "4", "3", "4")
    # same job id -> same port on every rank (they must agree without talking)
    assert _export_in_subprocess({**slurm, "SLURM_PROCID": "0", "SLURM_LOCALID": "0"})[0]["MASTER_PORT"] == env["MASTER_PORT"]


def test_torch_env_left_alone_for_torchrun_single_tasks_and_plain_runs():
    assert _export_in_subprocess({"RANK": "1", "WORLD_SIZE": "2", "SUBMITIT_EXECUTOR": "slurm", "SLURM_NTASKS": "2"}) == [None, "1"]
    assert _export_in_subprocess({"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "5", "SLURM_NTASKS": "1",
                                  "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_JOB_NODELIST": "n1"}) == [None, None]
    assert _export_in_subprocess({}) == [None, None]


def test_sweep_wrapper_submits_follows_and_lists_outputs_with_the_local_launcher(tmp_path):
    """launchers/sweep.py end to end on submitit's local executor (same files as SLURM): ~8 s."""
    wrapper = [sys.executable, str(REPO / "launchers" / "sweep.py")]
    run = dict(cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    res = subprocess.run([*wrapper, "submit", "hydra/launcher=local", "stage=generate", "data.n_train=4,6",
                          "data.n_eval=4", "hardware.cpus_per_task=1", "experiment_name=wrap"], **run)
    assert res.returncode == 0, res.stderr
    sweep = Path(res.stdout.splitlines()[0].removeprefix("sweep: "))
    assert sweep.parent == tmp_path / "multirun" / "wrap"
    res = subprocess.run([*wrapper, "status", str(sweep), "--wait", "--interval", "0.5", "--timeout", "240"], **run)
    assert res.returncode == 0, res.stdout + res.stderr + (sweep / "launch.log").read_text()
    last = res.stdout.strip().split("\n\n")[-1].splitlines()
    assert last[0].endswith("2 job(s), launcher exited")
    assert [ln.split()[2:] for ln in last[1:]] == [["done", "data.n_train=4"], ["done", "data.n_train=6"]]
    res = subprocess.run([*wrapper, "outputs"], **run)  # no dir: the newest sweep under ./multirun
    assert res.returncode == 0 and res.stdout.count("data/train.jsonl") == 2, res.stdout + res.stderr
    for n in (4, 6):
        job = next(sweep.glob(f"*_data.n_train-{n}__*"))
        assert len((job / "data" / "train.jsonl").read_text().splitlines()) >= n


def test_bad_launch_fails_in_one_line_before_submitting(tmp_path):
    from tests.conftest import run_cli

    res = run_cli(["-m", "hydra/launcher=slurm_a100", "stage=generate", f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith("error: config key 'hardware' = 'cpu': hydra/launcher=slurm_a100")
    assert "Traceback" not in res.stderr and not (tmp_path / "sweep").exists()  # nothing was submitted
