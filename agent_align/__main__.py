"""The one entrypoint: compose the config, check it, dispatch to ``stage=``.

    python -m agent_align                                  # pipeline on the embedded tiny model
    python -m agent_align stage=generate data.format=react
    python -m agent_align -m loss=dpo,ipo loss.beta=0.05,0.1 hydra/launcher=slurm
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from agent_align.cli_errors import user_error
from agent_align.checks import check_config
from agent_align.config import register_configs
from agent_align.errors import UserError
from agent_align.preflight import Terminated, preflight, terminate_as_interrupt
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
        preflight(cfg, ctx)
        with terminate_as_interrupt():
            result = stage(cfg, ctx)
        log.info("stage %s done; outputs in %s", cfg.stage, ctx.run_dir)
        return result
    except KeyboardInterrupt as exc:
        how = f"terminated ({exc.args[0]})" if isinstance(exc, Terminated) else "interrupted"
        print(f"{how}: finished work is saved; re-run the same command to resume", file=sys.stderr)
        sys.exit(128 + exc.signum if isinstance(exc, Terminated) else 130)
    except Exception as exc:
        err = user_error(exc)
        if err is None or cfg.get("debug", False):
            raise
        print(f"error: {str(err).splitlines()[0] if str(err) else type(exc).__name__}", file=sys.stderr)
        sys.exit(UserError.exit_code)


# An absolute path: run in-process (tests, cli([...])) Hydra would resolve "../conf" against a package.
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig):
    result = run(cfg)
    # The Optuna sweeper maximises what main returns: the aligned model's SSPR when there is one.
    if isinstance(result, dict) and "objective" in result:
        return result["objective"]
    return None


def cli(argv: list[str] | None = None) -> int:
    """``python -m agent_align ARGV``; returns the exit code. Hydra's own errors (bad overrides,
    unknown keys or group options) are raised to here instead of printed by Hydra, and leave as
    one ``error:`` line with exit code 2 like ours. ``debug=true`` or HYDRA_FULL_ERROR=1 shows
    the traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # argparse takes Hydra's flags only before the overrides: `model=tiny -m loss=dpo,ipo` works too
    flags = [a for a in argv if a in ("-m", "--multirun")]
    argv = flags + [a for a in argv if a not in flags]
    debug = os.environ.get("HYDRA_FULL_ERROR") == "1" or "debug=true" in argv
    saved_argv, saved_env = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    sys.argv = [saved_argv[0] if saved_argv else "agent_align", *argv]
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra's run_and_report then re-raises instead of printing
    try:
        main()
        return 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # before a stage started
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        err = None if debug else user_error(exc, hydra_level=True)
        if err is None:
            raise
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        return UserError.exit_code
    finally:
        sys.argv = saved_argv
        if saved_env is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved_env
        GlobalHydra.instance().clear()


if __name__ == "__main__":
    sys.exit(cli())
