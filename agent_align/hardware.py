"""What the machine can do: bf16 support, attention implementation fallbacks, thread counts."""

from __future__ import annotations

import functools
import importlib.util
import logging
import os

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_bf16_instructions() -> bool:
    """AMX or AVX512-bf16 in /proc/cpuinfo: bf16 matmuls *can* run natively."""
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


@functools.lru_cache(maxsize=1)
def cpu_bf16_speedup() -> float:
    """bf16 over fp32 matmul throughput, measured on this CPU (about 0.3 s, once per process).

    Why measure: the flags don't say how fast bf16 is. With AMX a bf16 matmul ran ~3.5x faster
    than fp32 on one machine here; on another with only AVX512-bf16 it ran at 0.55x (155 vs
    300 GFLOP/s), so autocast would have halved training speed there.
    """
    import time

    import torch

    if not cpu_has_bf16_instructions():
        return 0.0

    # Square 1024 matmuls, both dtypes warmed up, then timed in alternation (best of 5). On an AMX machine a
    # 512-wide probe with one warm-up read 0.57x-4.5x in fresh idle processes and 1.0-1.1x while a training job
    # ran (bf16 would have been turned off); this one read 3.1-3.5x idle and 6.9-7.7x under that load.
    x = torch.randn(1024, 1024)
    y = torch.randn(1024, 1024)
    pairs = {torch.float32: (x, y), torch.bfloat16: (x.bfloat16(), y.bfloat16())}
    best = dict.fromkeys(pairs, float("inf"))
    for a, b in pairs.values():
        for _ in range(3):
            a @ b  # warm-up (oneDNN builds its kernel on first use)
    for _ in range(5):
        for dtype, (a, b) in pairs.items():
            start = time.perf_counter()
            for _ in range(4):
                a @ b
            best[dtype] = min(best[dtype], time.perf_counter() - start)
    ratio = best[torch.float32] / best[torch.bfloat16]
    log.info("bf16/fp32 matmul speed on this CPU: %.2fx", ratio)
    return ratio


def cpu_has_fast_bf16() -> bool:
    """bf16 is worth using here: native instructions *and* measurably faster matmuls than fp32."""
    return cpu_bf16_speedup() > 1.15


def resolve_precision(hw) -> str:
    """'bf16' | 'fp16' | 'fp32' for ``hardware.precision`` (``auto`` decides from the device)."""
    if hw.precision != "auto":
        return hw.precision
    if hw.device == "cuda":
        import torch

        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp16"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def resolve_attn_implementation(hw) -> str:
    """flash_attention_2 only when the package is importable; otherwise sdpa, with a warning."""
    impl = hw.attn_implementation
    if impl == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        log.warning("hardware.attn_implementation=flash_attention_2 but flash-attn is not installed "
                    "(pip install 'agent_align[gpu]'); falling back to sdpa")
        return "sdpa"
    return impl


def liger_available() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def set_threads(hw) -> None:
    import torch

    from agent_align import openmp

    n = hw.torch_threads or os.cpu_count() or 1
    torch.set_num_threads(n)
    if openmp.CHOICE:  # once a process
        log.info("%s", openmp.CHOICE)
        openmp.CHOICE = ""
