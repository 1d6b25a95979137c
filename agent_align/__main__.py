"""The one entrypoint: compose the config, check it, dispatch to ``stage=``.

    python -m agent_align                                  # pipeline on the embedded tiny model
    python -m agent_align stage=generate data.format=react
    python -m agent_align -m loss=dpo,ipo loss.beta=0.05,0.1 hydra/launcher=slurm
"""

from __future__ import annotations

import logging
import os
import sys
import traceback

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from agent_align.config import check_config, register_configs
from agent_align.errors import UserError
from agent_align.stages import STAGES
from agent_align.stages.context import RunContext

register_configs()
log = logging.getLogger("agent_align")


def _run_dir(cfg: DictConfig) -> str:
    if cfg.run_dir:
        return cfg.run_dir
    try:
        return HydraConfig.get().runtime.output_dir
    except ValueError:  # composed outside @hydra.main (tests): use the working directory
        return os.getcwd()


def run(cfg: DictConfig) -> dict:
    """Check ``cfg`` and run its stage; user errors become one line and exit code 2."""
    try:
        check_config(cfg)
        stage = STAGES.get(cfg.stage)
        ctx = RunContext.from_env(_run_dir(cfg))
        ctx.run_dir.mkdir(parents=True, exist_ok=True)
        result = stage(cfg, ctx)
        log.info("stage %s done; outputs in %s", cfg.stage, ctx.run_dir)
        return result
    except (UserError, OmegaConfBaseException) as exc:
        if cfg.get("debug", False):
            raise
        msg = str(exc).splitlines()[0] if isinstance(exc, OmegaConfBaseException) else str(exc)
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(UserError.exit_code)
    except KeyboardInterrupt:
        print("interrupted: finished work is saved; re-run the same command to resume", file=sys.stderr)
        sys.exit(130)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig):
    result = run(cfg)
    # The Optuna sweeper maximises what main returns: the aligned model's SSPR when there is one.
    if isinstance(result, dict) and "objective" in result:
        return result["objective"]
    return None


if __name__ == "__main__":
    try:
        main()
    except Exception:  # anything Hydra did not already report
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or "debug=true" in sys.argv:
            raise
        traceback.print_exc(limit=1)
        sys.exit(1)
