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


def cpu_has_fast_bf16() -> bool:
    """AMX or AVX512-bf16: bf16 matmuls run natively (about 3.5x fp32 on the AMX machines here)."""
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


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

    n = hw.torch_threads or os.cpu_count() or 1
    torch.set_num_threads(n)
