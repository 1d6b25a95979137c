"""Shared fixtures: offline environment, config composition, a tiny generated dataset."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
SHARED = REPO.parent / "shared"


def compose(overrides: list[str] | None = None, config_name: str = "config"):
    """The config `python -m agent_align OVERRIDES` would run, without running it."""
    from hydra import compose as hcompose
    from hydra import initialize_config_dir

    from agent_align.config import register_configs

    register_configs()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return hcompose(config_name=config_name, overrides=list(overrides or []), return_hydra_config=False)


def run_cli(args: list[str], cwd: Path | None = None, timeout: float = 600, env: dict | None = None):
    """Run `python -m agent_align ARGS` in a subprocess; returns CompletedProcess."""
    import subprocess

    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "agent_align", *args], cwd=cwd or REPO, capture_output=True,
                          text=True, timeout=timeout, env=full_env)


@pytest.fixture
def cfg_factory(tmp_path):
    def make(*overrides: str):
        cfg = compose([f"run_dir={tmp_path}", *overrides])
        return cfg
    return make
