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
                 clock=time.perf_counter, initial: int = 0, bar: bool = True):
        """``desc=None`` shows and logs nothing (an inner loop whose caller reports progress). ``initial``: units
        done before (a resumed run; they count towards the total, not the rate). ``bar=False``: log lines only (a
        loop that already draws its own bar, such as a TRL trainer's)."""
        self.total, self.desc, self.unit, self.clock = total, desc, unit, clock
        self.every_fraction, self.every_seconds, self.min_seconds = every_fraction, every_seconds, min_seconds
        self.log = logger or log
        self.done = self.initial = self.last_done = initial
        self.start = self.last_time = clock()
        self.closed = False
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, mininterval=1.0,
                        disable=True if desc is None or not bar else None)

    def _rate(self, now: float) -> float:
        elapsed = now - self.start
        return (self.done - self.initial) / elapsed if elapsed > 0 else float("inf")

    def update(self, n: int = 1, note: str = "") -> None:
        """``note`` ends the line when one is logged (e.g. the latest loss)."""
        self.done += n
        self.bar.update(n)
        if self.desc is None or self.done >= self.total:  # the closing line reports the end
            return
        now = self.clock()
        since = now - self.last_time
        step = max(1.0, self.every_fraction * self.total)
        if since >= self.min_seconds and (self.done - self.last_done >= step or since >= self.every_seconds):
            self.last_time, self.last_done = now, self.done
            rate = self._rate(now)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            self.log.info("%s: %d/%d %ss (%.0f%%), %s, ETA %s%s", self.desc, self.done, self.total, self.unit,
                          100 * self.done / max(1, self.total), self._speed(rate), _duration(eta),
                          f", {note}" if note else "")

    def _speed(self, rate: float) -> str:
        """Units per second, or seconds per unit when a unit takes longer than a second (training steps)."""
        if 0 < rate < 1:
            return f"{1 / rate:.1f} s/{self.unit}"
        return f"{rate:.2f} {self.unit}s/s"

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.bar.close()
        if self.desc is not None and self.done > self.initial:
            now = self.clock()
            self.log.info("%s: %d/%d %ss in %s (%s)", self.desc, self.done, self.total, self.unit,
                          _duration(now - self.start), self._speed(self._rate(now)))

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
