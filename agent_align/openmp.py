"""How idle OpenMP threads wait, chosen before torch loads the OpenMP runtime (``agent_align/__init__.py``).

Between two parallel torch ops OpenMP's worker threads either spin or sleep. Decoding runs thousands of small ops
a second, so the choice shows there most. Measured 2026-12-04 on a 2-core Intel Xeon (AMX), greedy evaluation of
200 requests by the default run's SFT model (``stages.evaluate.predict``), wall seconds:

| waiting                                   | idle machine | one other busy process |
|-------------------------------------------|--------------|------------------------|
| libgomp's default (spin ~300k, then sleep)| 27.2         | 206.5                  |
| ``OMP_WAIT_POLICY=ACTIVE``                | 27.8         | -                      |
| ``GOMP_SPINCOUNT=100000``                 | 28.4         | -                      |
| ``GOMP_SPINCOUNT=30000``                  | -            | 129.0                  |
| ``GOMP_SPINCOUNT=10000``                  | 29.0         | 78.6                   |
| ``GOMP_SPINCOUNT=1000``                   | 36.1         | -                      |
| ``OMP_WAIT_POLICY=PASSIVE``               | 38.6         | 39.2                   |

Ten SFT steps: 78 s passive, 70 s with a 10k spin (idle). Spinning threads fight any other busy process for the
cores (a parallel region waits for its slowest thread), sleeping ones pay a wake-up on every op. So: when other
processes already keep at least half a core busy, sleep (``PASSIVE``); otherwise spin briefly (10k), which keeps
most of the idle speed and bounds the loss if contention starts later. A user's own ``OMP_WAIT_POLICY`` or
``GOMP_SPINCOUNT`` wins. LLVM's OpenMP (macOS) reads ``OMP_WAIT_POLICY`` and ignores ``GOMP_SPINCOUNT``.
"""

from __future__ import annotations

import os
import time

BUSY_CORES = 0.5  # other processes' load from which threads sleep
SPIN = "10000"
CHOICE = ""  # what was chosen and why, for the log (``hardware.set_threads``)


def busy_cores(window: float = 0.1) -> float | None:
    """Cores kept busy by every process over ``window`` seconds (/proc/stat), or None where that is not readable.
    This process sleeps meanwhile, so the figure is the others' load."""
    def sample():
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        return sum(values[:8]), idle  # guest time is already counted in user

    try:
        total0, idle0 = sample()
        time.sleep(window)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return (1 - (idle1 - idle0) / (total1 - total0)) * (os.cpu_count() or 1)


def choose_wait_policy(environ=os.environ, busy: float | None = None) -> str:
    """Set ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` in ``environ`` unless the user set either; returns the choice."""
    if "OMP_WAIT_POLICY" in environ or "GOMP_SPINCOUNT" in environ:
        return "OpenMP wait as set: " + ", ".join(f"{k}={environ[k]}" for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
                                                   if k in environ)
    if busy is None:
        busy = busy_cores()
    if busy is None and hasattr(os, "getloadavg"):
        busy = os.getloadavg()[0]
    if busy is not None and busy >= BUSY_CORES:
        environ["OMP_WAIT_POLICY"] = "PASSIVE"
        return f"OpenMP threads sleep when idle (OMP_WAIT_POLICY=PASSIVE): other processes keep {busy:.1f} cores busy"
    environ["GOMP_SPINCOUNT"] = SPIN
    return f"OpenMP threads spin briefly when idle (GOMP_SPINCOUNT={SPIN}): the machine is idle"
