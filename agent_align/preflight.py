"""Checks that need this machine or its files, run after ``check_config`` and before a stage's heavy
work: the run directory is a writable directory, a hardware preset's device exists, named
checkpoints are model directories, a tools file neither repeats a name nor shadows a built-in.
Also: temp files a ``kill -9`` left behind are removed, and SIGTERM ends a run like Ctrl-C.

``check_config`` stays free of these so that every experiment (GPU presets included) can be
composed and checked on a CPU-only machine.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Iterator

from omegaconf import OmegaConf

from agent_align.errors import UserError, config_error, file_error

log = logging.getLogger(__name__)

# Stages that never load a model, so a GPU preset is fine on a machine without one.
DEVICE_FREE_STAGES = {"generate", "validate_data", "score", "compare", "analyze"}
CHECKPOINT_KEYS = ("model.path", "infer.model_path", "evaluate.model_path", "sft.init_from", "dpo.policy_from")
# atomic_open's temp names: .<file>.<pid>-<random>.tmp (older runs: .<file>.<random>.tmp)
TEMP_RE = re.compile(r"^\..+\.tmp$")
TEMP_PID_RE = re.compile(r"\.(\d+)-[^./]+\.tmp$")


def prepare_run_dir(run_dir: Path, key: str) -> None:
    """Create ``run_dir`` and prove it takes a file; one line naming ``key`` otherwise."""
    if run_dir.exists() and not run_dir.is_dir():
        raise config_error(key, str(run_dir), "is an existing file; set it to a directory")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=run_dir, prefix=".write-probe.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise config_error(key, str(run_dir), f"cannot write there ({exc.strerror}); "
                                              "set run_dir=DIR to a writable directory") from None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def clean_stale_temp(run_dir: Path) -> list[Path]:
    """Remove temp files of atomic writes whose writer is gone (killed with SIGKILL, or the
    machine went down). A writer that is still running keeps its file."""
    removed = []
    for root, dirs, files in os.walk(run_dir):
        for name in [*files, *dirs]:  # atomic_open's files and atomic_dir's checkpoint directories
            if not TEMP_RE.match(name):
                continue
            m = TEMP_PID_RE.search(name)
            if m and _alive(int(m.group(1))):
                continue
            path = Path(root, name)
            with contextlib.suppress(OSError):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
                removed.append(path)
        dirs[:] = [d for d in dirs if Path(root, d) not in removed]
    if removed:
        log.info("removed %d temp file(s) left by an interrupted run: %s", len(removed),
                 ", ".join(str(p.relative_to(run_dir)) for p in removed[:5]))
    return removed


def check_device(cfg) -> None:
    hw = cfg.hardware
    if hw.device != "cuda" or cfg.stage in DEVICE_FREE_STAGES:
        return
    import torch

    if not torch.cuda.is_available():
        raise config_error("hardware.device", "cuda", f"hardware={hw.name} needs a CUDA GPU and torch finds none on "
                                                      "this machine; use hardware=cpu, or run on a GPU node")


def _looks_like_hub_id(value: str) -> bool:
    return value.count("/") == 1 and not value.startswith((".", "/", "~")) and "\\" not in value


def check_checkpoint_paths(cfg) -> None:
    """A named local checkpoint exists and its config.json parses: otherwise the loader would
    report a hub problem for what is a wrong path or a broken file."""
    from agent_align.jsonl import read_json_or_yaml

    for key in CHECKPOINT_KEYS:
        value = OmegaConf.select(cfg, key)
        if not value:
            continue
        p = Path(str(value)).expanduser()
        if not p.exists():
            if _looks_like_hub_id(str(value)):
                continue  # a hub id: the loader fetches (or reports that it cannot)
            raise config_error(key, str(value), "no such directory; point it at a checkpoint directory "
                                                "(e.g. runs/<experiment>/<run>/checkpoints/dpo)")
        if not p.is_dir():
            raise config_error(key, str(value), "is a file; point it at a checkpoint directory")
        if (p / "adapter_config.json").is_file():
            read_json_or_yaml(p / "adapter_config.json", key)
        elif (p / "config.json").is_file():
            conf = read_json_or_yaml(p / "config.json", key)
            if not isinstance(conf, dict):
                raise file_error(p / "config.json", None, "expected a JSON object (a model config)")
        else:
            raise config_error(key, str(value), "not a model directory (no config.json or adapter_config.json)")


def check_tools_file(cfg) -> None:
    """Names in data.tools_file are unique (load_tools_file) and shadow no built-in unless
    data.override_builtin_tools=true."""
    data = cfg.data
    if not data.get("tools_file"):
        return
    from agent_align.tools.library import load_builtin_tools, load_tools_file

    tools = load_tools_file(data.tools_file)
    if not data.include_builtin_tools or data.get("override_builtin_tools", False):
        return
    builtin = {t.name for t in load_builtin_tools()}
    for t in tools:
        if t.name in builtin:
            raise UserError(f"{t.where}: tool '{t.name}' has the name of a built-in tool (set "
                            "data.override_builtin_tools=true to replace the built-in, rename the tool, or set "
                            "data.include_builtin_tools=false)")


def preflight(cfg, ctx) -> None:
    key = "run_dir" if cfg.get("run_dir") else "hydra.run.dir"
    prepare_run_dir(ctx.run_dir, key)
    if ctx.is_main:
        clean_stale_temp(ctx.run_dir)
    check_device(cfg)
    check_checkpoint_paths(cfg)
    check_tools_file(cfg)


class Terminated(KeyboardInterrupt):
    """SIGTERM (or SIGHUP), raised where the program is, so ``finally`` blocks and atomic writes
    clean up exactly as for Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_terminated(signum, _frame):
    raise Terminated(signum)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM behaves like SIGINT while a stage runs. A handler someone else installed (submitit
    requeues SLURM jobs on SIGTERM/SIGUSR2) is left alone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    installed = []
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, _raise_terminated)
            installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            signal.signal(sig, signal.SIG_DFL)
