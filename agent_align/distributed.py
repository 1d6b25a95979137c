"""Scale-out glue: torch.distributed from the scheduler's environment, launcher checks, sbatch preview.

    torchrun --nproc_per_node 2 -m agent_align stage=sft hardware=cpu_ddp            # torchrun sets RANK etc.
    python -m agent_align -m stage=sft hardware=cpu_ddp hydra/launcher=slurm          # 2 SLURM tasks
    python launchers/sweep.py preview hydra/launcher=slurm_a100 hardware=a100x4_zero3 # the sbatch script

`hydra/launcher=slurm|local` start `hardware.distributed.num_processes` tasks per node and every task
runs the whole Hydra job. Those launchers register `ScaleOutCallback`, which exports MASTER_ADDR/PORT,
RANK, WORLD_SIZE and LOCAL_RANK from submitit's JobEnvironment before the stage starts, so the HF
Trainer initialises DDP/DeepSpeed exactly as under torchrun, and `RunContext.from_env` sees the rank.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from agent_align.errors import UserError, config_error

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]
TORCH_ENV_KEYS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


def export_torch_env() -> dict[str, str] | None:
    """Inside a multi-task submitit job (SLURM or local), set the env:// variables torch.distributed
    reads and return them. No-op when torchrun/accelerate already set them, outside submitit, or
    for a single task."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return None
    import submitit
    from submitit.helpers import TorchDistributedEnvironment

    try:
        job = submitit.JobEnvironment()
    except RuntimeError:  # not a submitit job
        return None
    if job.num_tasks <= 1:
        return None
    # CUDA_VISIBLE_DEVICES stays as SLURM set it: the Trainer picks cuda:LOCAL_RANK among the node's GPUs.
    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    env = {k: os.environ[k] for k in TORCH_ENV_KEYS}
    log.info("torch.distributed from %s job %s: %s", job.cluster, job.job_id, env)
    return env


def deepspeed_config_path(value: str | None) -> str:
    """Absolute path of ``hardware.distributed.deepspeed_config``: as given, else relative to the repo
    (SLURM jobs may start elsewhere than the checkout)."""
    key = "hardware.distributed.deepspeed_config"
    if not value:
        raise config_error(key, value, "set a DeepSpeed JSON, e.g. conf/deepspeed/zero2.json")
    for cand in (Path(value), REPO / value):
        if cand.is_file():
            return str(cand.resolve())
    shipped = ", ".join(sorted(p.name for p in (REPO / "conf" / "deepspeed").glob("*.json")))
    raise config_error(key, value, f"file not found; use one of conf/deepspeed/{{{shipped}}} or a path to a JSON")


def check_launch(cfg: DictConfig) -> None:
    """Launcher vs hardware checks that need the Hydra node; run before anything is submitted."""
    hw = cfg.hardware
    ds = hw.distributed
    n = ds.num_processes
    if n < 1:
        raise config_error("hardware.distributed.num_processes", n, "must be >= 1")
    if n > 1 and ds.backend == "none":
        raise config_error("hardware.distributed.num_processes", n,
                           "with backend none every process would run the whole job; set "
                           "hardware.distributed.backend=ddp (or deepspeed), or num_processes=1")
    if hw.gpus_per_node > 0 and ds.backend != "none" and n != hw.gpus_per_node:
        raise config_error("hardware.distributed.num_processes", n,
                           f"one process per GPU: set it to hardware.gpus_per_node ({hw.gpus_per_node})")
    if ds.backend == "deepspeed":
        deepspeed_config_path(ds.deepspeed_config)
    launcher = OmegaConf.select(cfg, "hydra.runtime.choices", default={}).get("hydra/launcher", "")
    gpu_type = launcher.split("_", 1)[1] if launcher.startswith("slurm_") else None
    if gpu_type and not str(hw.name).startswith(gpu_type):
        raise config_error("hardware", hw.name, f"hydra/launcher={launcher} runs on {gpu_type} nodes; add "
                           f"hardware={gpu_type} (or another {gpu_type}* preset), or use hydra/launcher=slurm")


class ScaleOutCallback(Callback):
    """Registered by conf/hydra/launcher/{slurm,local}.yaml."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_launch(config)
        except UserError as exc:  # one line and exit 2, like the stages' own config errors
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(UserError.exit_code)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        export_torch_env()


def executor_parameters(launcher: DictConfig) -> tuple[str, dict, dict]:
    """(cluster, init params, parameters) exactly as hydra-submitit-launcher 1.2 hands them to
    ``submitit.AutoExecutor`` (mirrors ``BaseSubmititLauncher.launch``)."""
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    params = OmegaConf.to_container(launcher, resolve=True)
    target = params.pop("_target_")
    cluster = "slurm" if target.endswith("SlurmLauncher") else "local"
    init = {"folder": params.pop("submitit_folder")}
    if "max_num_timeout" in params:
        init[f"{cluster}_max_num_timeout"] = params.pop("max_num_timeout")
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    return cluster, init, {k if k in base else f"{cluster}_{k}": v for k, v in params.items()}


def sbatch_script(cfg: DictConfig, folder: str | None = None) -> str:
    """The batch script submitit would submit for one job of this config's sweep (no submission)."""
    import submitit

    cluster, init, params = executor_parameters(cfg.hydra.launcher)
    if cluster != "slurm":
        raise config_error("hydra/launcher", cfg.hydra.runtime.choices.get("hydra/launcher"),
                           "only SLURM launchers have an sbatch script; use hydra/launcher=slurm")
    init["folder"] = folder or init["folder"]
    executor = submitit.AutoExecutor(cluster="slurm", **init)
    executor.update_parameters(**params)
    # Private submitit API (1.5.x): the same function `submit` uses to write the script.
    return executor._executor._make_submission_file_text("python -u -m submitit.core._submit FOLDER", "preview")


def sbatch_options(script: str) -> dict[str, str]:
    """``#SBATCH --key=value`` lines of a batch script as {key: value}."""
    opts = {}
    for line in script.splitlines():
        if line.startswith("#SBATCH --"):
            key, _, value = line[len("#SBATCH --"):].partition("=")
            opts[key] = value
    return opts
