"""Per-stage wall time and peak memory (RSS on CPU, allocator peak on CUDA)."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import psutil


@contextmanager
def measure(timings: dict, peaks: dict, name: str, interval: float = 0.05):
    """Records seconds in ``timings[name]`` and peak MB in ``peaks[name]`` for the block."""
    proc = psutil.Process()
    peak = [proc.memory_info().rss]
    stop = threading.Event()

    def sample():
        while not stop.wait(interval):
            peak[0] = max(peak[0], proc.memory_info().rss)

    cuda = False
    try:
        import torch

        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
    except ImportError:
        pass
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        timings[name] = round(time.perf_counter() - start, 2)
        if cuda:
            import torch

            peaks[name] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        else:
            peaks[name] = round(max(peak[0], proc.memory_info().rss) / 2**20, 1)
