"""The OpenMP wait policy chosen at import: brief spinning on an idle machine, sleeping on a busy one, the user's
own setting kept, nothing changed once torch is loaded."""

from __future__ import annotations

import os
import subprocess
import sys

from agent_align import openmp


def test_a_busy_machine_gets_sleeping_threads_and_an_idle_one_a_bounded_spin():
    busy = {}
    assert "PASSIVE" in openmp.choose_wait_policy(busy, busy=1.3)
    assert busy == {"OMP_WAIT_POLICY": "PASSIVE"}
    idle = {}
    assert "GOMP_SPINCOUNT" in openmp.choose_wait_policy(idle, busy=0.1)
    assert idle == {"GOMP_SPINCOUNT": openmp.SPIN}
    edge = {}
    openmp.choose_wait_policy(edge, busy=openmp.BUSY_CORES)
    assert edge == {"OMP_WAIT_POLICY": "PASSIVE"}


def test_the_users_setting_wins():
    for env in ({"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "0"}):
        before = dict(env)
        assert "as set" in openmp.choose_wait_policy(env, busy=1.5)
        assert env == before


def test_busy_cores_reads_this_machine():
    busy = openmp.busy_cores(0.05)
    if sys.platform.startswith("linux"):
        assert busy is not None and -0.01 <= busy <= (os.cpu_count() or 1) + 0.01


def _import_env(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip()


def test_import_sets_the_policy_before_torch_and_not_after():
    show = "import os; print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))"
    chosen = _import_env(f"import agent_align; {show}").split()
    assert chosen in (["PASSIVE", "None"], ["None", openmp.SPIN])
    assert _import_env(f"import torch, agent_align; {show}").split() == ["None", "None"]
