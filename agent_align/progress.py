"""Progress of long loops in the log, not only on a terminal.

    with Progress(total=240, desc="on-policy samples", unit="prompt") as bar:
        for batch in batches:
            ...
            bar.update(len(batch))

tqdm draws a bar when stderr is a terminal and nothing otherwise (``disable=None``), so a log file or a
SLURM job's output showed nothing for minutes of sampling. ``Progress`` keeps the bar and also logs an
INFO line ("on-policy samples: 96/240 prompts (40%), 2.9 prompts/s, ETA 50 s") at a bounded rate: when
another ``every_fraction`` of the total is done, or ``every_seconds`` have passed with some progress,
but never twice within ``min_seconds``; and one closing line with the total time and rate.
"""

from __future__ import annotations

import logging
import time

from tqdm import tqdm

log = logging.getLogger("agent_align.progress")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    def __init__(self, total: int, desc: str | None, unit: str = "item", *, every_fraction: float = 0.1,
                 every_seconds: float = 30.0, min_seconds: float = 5.0, logger: logging.Logger | None = None,
                 clock=time.perf_counter):
        """``desc=None`` shows and logs nothing (an inner loop whose caller reports progress)."""
        self.total, self.desc, self.unit, self.clock = total, desc, unit, clock
        self.every_fraction, self.every_seconds, self.min_seconds = every_fraction, every_seconds, min_seconds
        self.log = logger or log
        self.done = 0
        self.start = self.last_time = clock()
        self.last_done = 0
        self.closed = False
        self.bar = tqdm(total=total, desc=desc, unit=unit, disable=desc is None or None, mininterval=1.0)

    def update(self, n: int = 1) -> None:
        self.done += n
        self.bar.update(n)
        if self.desc is None or self.done >= self.total:  # the closing line reports the end
            return
        now = self.clock()
        since = now - self.last_time
        step = max(1.0, self.every_fraction * self.total)
        if since >= self.min_seconds and (self.done - self.last_done >= step or since >= self.every_seconds):
            self.last_time, self.last_done = now, self.done
            elapsed = now - self.start
            rate = self.done / elapsed if elapsed > 0 else float("inf")
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            self.log.info("%s: %d/%d %ss (%.0f%%), %.2f %ss/s, ETA %s", self.desc, self.done, self.total, self.unit,
                          100 * self.done / max(1, self.total), rate, self.unit, _duration(eta))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.bar.close()
        if self.desc is not None and self.done:
            elapsed = self.clock() - self.start
            rate = self.done / elapsed if elapsed > 0 else float("inf")
            self.log.info("%s: %d/%d %ss in %s (%.2f %ss/s)", self.desc, self.done, self.total, self.unit,
                          _duration(elapsed), rate, self.unit)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
