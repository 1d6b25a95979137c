"""Shared fixtures: offline environment, config composition, a tiny generated dataset."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# built models go to a per-session cache so tests never read a developer's ~/.cache; it is removed at exit
# (each session's cache holds ~0.5 GB of converted SmolLM2 weights)
if "AGENT_ALIGN_CACHE" not in os.environ:
    os.environ["AGENT_ALIGN_CACHE"] = tempfile.mkdtemp(prefix="agent_align_test_cache_")
    atexit.register(shutil.rmtree, os.environ["AGENT_ALIGN_CACHE"], ignore_errors=True)

# A micro model: trains a step in well under a second on CPU. Tests that train use these overrides.
MICRO = ["model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.intermediate_size=64",
         "model.vocab_size=600", "model.tokenizer_corpus_rows=150", "model.max_length=256",
         "model.max_prompt_length=200", "model.copy_warmup_steps=0", "data.n_train=64", "data.n_eval=16", "hardware.sft_batch_size=8",
         "hardware.dpo_batch_size=8", "hardware.eval_batch_size=16", "evaluate.max_new_tokens=24",
         "dpo.sample_prompts=8", "dpo.samples_per_prompt=2", "sft.logging_steps=1", "dpo.logging_steps=1",
         "sft.warmup_steps=0", "dpo.warmup_steps=0",
         # the tiny model's learning rates and epochs, not the default SmolLM2 recipe's (conf/config.yaml)
         "sft.max_steps=-1", "sft.lr=2e-3", "dpo.lr=5e-5"]

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
SHARED = REPO.parent / "shared"


def tiny_first(overrides) -> list[str]:
    """Tests run on the embedded tiny model (the default, SmolLM2, is for the slow real-model tests):
    ``model=tiny`` unless the overrides choose a model or an experiment that does."""
    overrides = list(overrides or [])
    if any(o.split("=", 1)[0].lstrip("+~") in ("model", "experiment") for o in overrides):
        return overrides
    return ["model=tiny", *overrides]


def compose(overrides: list[str] | None = None, config_name: str = "config"):
    """The config `python -m agent_align OVERRIDES` would run (on the tiny model: ``tiny_first``)."""
    from hydra import compose as hcompose
    from hydra import initialize_config_dir

    from agent_align.config import register_configs

    register_configs()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return hcompose(config_name=config_name, overrides=tiny_first(overrides), return_hydra_config=False)


def run_cli(args: list[str], cwd: Path | None = None, timeout: float = 600, env: dict | None = None):
    """Run `python -m agent_align ARGS` in a subprocess; returns CompletedProcess."""
    import subprocess

    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "agent_align", *tiny_first(args)], cwd=cwd or REPO, capture_output=True,
                          text=True, timeout=timeout, env=full_env)


@pytest.fixture(autouse=True)
def _no_leaked_log_files():
    """In-process CLI runs (Hydra) attach a FileHandler for run_dir/__main__.log to the root logger. Left
    attached, later tests log into a file of an earlier test's tmp dir: with pytest removing passed tests'
    dirs, 26 tests then failed with FileNotFoundError, and a trainer interrupted that way left its patches on."""
    import logging

    root = logging.getLogger()
    before = list(root.handlers)
    yield
    for handler in list(root.handlers):
        if handler not in before and isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()


@pytest.fixture
def cfg_factory(tmp_path):
    def make(*overrides: str):
        cfg = compose([f"run_dir={tmp_path}", *overrides])
        return cfg
    return make


@pytest.fixture(scope="module")
def tiny():
    """The embedded tiny model at the MICRO size (built once per test session) and its tokenizer:
    (path, model, tokenizer)."""
    from agent_align.models import load_model_and_tokenizer, resolve_model_path

    cfg = compose(MICRO)
    path = resolve_model_path(cfg)
    model, tok = load_model_and_tokenizer(cfg, path)
    return path, model, tok
