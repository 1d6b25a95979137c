"""What benchmarks/run.py's measured sides share: config composition, fresh processes, peak RSS,
FLOP counting and the machine's description. Read benchmarks/README.md for what is counted."""

from __future__ import annotations

import multiprocessing as mp
import os
import platform
import resource
import statistics
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Imported once by the fork server, so each measured side starts in a fresh process in a few tenths of a
# second instead of re-importing torch/transformers/TRL (~5-12 s here). agent_align comes first: it sets
# how idle OpenMP threads wait (agent_align/openmp.py) before torch loads the OpenMP runtime, as `python -m agent_align` does.
PRELOAD = ["agent_align", "torch", "transformers", "datasets", "deepspeed", "trl.trainer.sft_trainer", "trl.trainer.dpo_trainer",
           "agent_align.stages.sft", "agent_align.stages.dpo", "agent_align.stages.evaluate",
           "agent_align.agents.llm", "agent_align.agents.runner", "agent_align.models.loading",
           "transformers.models.llama.modeling_llama", "sides"]
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile", "amx_int8", "avx512_fp16", "avx512f", "avx512_vnni", "avx2", "fma")


def compose(overrides: list[str]):
    """The config `python -m agent_align OVERRIDES` would run, checked like the CLI checks it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from agent_align.checks import check_config
    from agent_align.config import register_configs

    register_configs()
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        cfg = hydra_compose(config_name="config", overrides=list(overrides))
    check_config(cfg)
    return cfg


def merge_overrides(*groups: list[str]) -> list[str]:
    """Later ``key=value`` wins; Hydra would reject the same key given twice."""
    out: dict[str, str] = {}
    for group in groups:
        for item in group:
            out[item.split("=", 1)[0]] = item
    return list(out.values())


class Sides:
    """Runs each measured side in its own new process, forked from a server that has only imported
    the libraries: no side inherits another's allocations, caches or monkey-patches, and its peak RSS
    is its own."""

    def __init__(self):
        self.ctx = mp.get_context("forkserver")
        self.ctx.set_forkserver_preload(PRELOAD)

    def run(self, fn, spec: dict) -> dict:
        with ProcessPoolExecutor(1, mp_context=self.ctx, max_tasks_per_child=1) as pool:
            return pool.submit(fn, spec).result()


PROFILE_TO: str | None = None  # set in a profiling run (sides.profiled): the timed block is profiled into this file


class PeakRSS:
    """Wall time and resident-set high-water mark of this process over the timed block: psutil sampled
    every 10 ms, and the kernel's own ``ru_maxrss`` (which also covers anything between samples)."""

    def __init__(self, interval: float = 0.01):
        import psutil

        self.proc, self.interval = psutil.Process(), interval
        self.start_mb = self.peak_mb = self.proc.memory_info().rss / 2**20
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._profilers = None

    def _sample(self):
        while not self._stop.wait(self.interval):
            self.peak_mb = max(self.peak_mb, self.proc.memory_info().rss / 2**20)

    def __enter__(self):
        if PROFILE_TO:
            import cProfile

            from torch.profiler import ProfilerActivity, profile

            label_fused_head()
            self._profilers = (profile(activities=[ProfilerActivity.CPU]), cProfile.Profile())
            self._profilers[0].__enter__()
            self._profilers[1].enable()
        self.t0 = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        self._stop.set()
        self._thread.join()
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux
        self.peak_mb = max(self.peak_mb, maxrss)
        if self._profilers:
            self._profilers[1].disable()
            self._profilers[0].__exit__(*exc)
            write_profile(PROFILE_TO, *self._profilers, self.seconds)

    def as_dict(self) -> dict:
        return {"seconds": self.seconds, "peak_rss_mb": round(self.peak_mb, 1), "start_rss_mb": round(self.start_mb, 1),
                "peak_increase_mb": round(self.peak_mb - self.start_mb, 1)}


MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear", "aten::_mm"}
# dtype casts (autocast's weight and activation casts, fp32 master-gradient casts) and plain copies
CAST_OPS = {"aten::copy_", "aten::to", "aten::_to_copy", "aten::_copy_from", "aten::_copy_from_and_resize"}


def _region(name: str) -> str | None:
    n = name.lower().replace("_", "")
    if "chunkedlogprob" in n:  # TRL's fused LM head: projection + log-softmax, forward and backward
        return "log_softmax"
    if "scaleddotproduct" in n or "flashattention" in n:  # sdpa forward and its backward node
        return "attention"
    if n.startswith("optimizer.step") or n.startswith("optimizer.zerograd"):  # torch.optim's own labels
        return "optimizer"
    return None


def breakdown(ops, seconds: float) -> dict:
    """Shares of the timed block's wall time: attention (sdpa, forward and backward), log-softmax (TRL's fused LM
    head, its projection included), the optimizer (step and zero_grad), other matmuls, copies and dtype casts,
    other torch ops (elementwise, norms, embedding, gradient clipping), and the rest, time in no torch op (Python,
    data collation, waiting). Walks each top-level op down its children: a region counts with its children,
    anything else with its own (self) time only, so a cast inside ``aten::linear`` counts as a cast."""
    tot = {"matmul": 0.0, "attention": 0.0, "log_softmax": 0.0, "optimizer": 0.0, "casts": 0.0, "other_ops": 0.0}

    def walk(ev):
        r = _region(ev.name)
        if r:
            tot[r] += ev.cpu_time_total
            return
        kind = "matmul" if ev.name in MATMUL_OPS else "casts" if ev.name in CAST_OPS else "other_ops"
        tot[kind] += ev.self_cpu_time_total
        for c in ev.cpu_children:
            walk(c)

    for ev in ops.events():
        if ev.cpu_parent is None:
            walk(ev)
    wall_us = seconds * 1e6
    shares = {k: v / wall_us for k, v in tot.items()}
    shares["python_and_other"] = max(0.0, 1.0 - sum(shares.values()))
    return shares


def label_fused_head() -> None:
    """Name TRL's fused LM head in profiles: its forward is a custom autograd Function that the profiler does not
    label (its backward node is), so wrap its ``apply`` in a record_function."""
    import torch
    import trl.trainer.utils as tu

    fn = tu._ChunkedLogProbFunction

    class Labelled:
        @staticmethod
        def apply(*a):
            with torch.profiler.record_function("ChunkedLogProbFunction.forward"):
                return fn.apply(*a)
    tu._ChunkedLogProbFunction = Labelled


def write_profile(path: str, ops, py, seconds: float) -> None:
    """Time shares (``breakdown``), torch ops by self CPU time, then Python functions by own and by cumulative
    time, as text; the shares also go to ``path`` + ``.json``."""
    import io
    import json
    import pstats

    shares = breakdown(ops, seconds)
    Path(path + ".json").write_text(json.dumps({"seconds": seconds, "shares": shares}, indent=2))
    head = "share of the timed block: " + ", ".join(f"{k} {v:.1%}" for k, v in shares.items())
    parts = [f"timed block: {seconds:.2f} s (profiled, so slower than the timed runs)\n{head}\n\n"
             "torch ops by self CPU time\n" + ops.key_averages().table(sort_by="self_cpu_time_total", row_limit=30)]
    for order in ("tottime", "cumulative"):
        buf = io.StringIO()
        pstats.Stats(py, stream=buf).sort_stats(order).print_stats(35)
        parts.append(f"Python functions by {order} (cProfile)\n{buf.getvalue()}")
    Path(path).write_text("\n\n".join(parts))


def set_threads(n: int) -> int:
    """The same intra-op thread count on both sides (0 -> what agent_align.hardware.set_threads picks)."""
    import torch

    torch.set_num_threads(n or os.cpu_count() or 1)
    return torch.get_num_threads()


def training_flops(n_params: int, layers: int, hidden: int, lengths: list[int]) -> float:
    """6 * parameters per token (forward + backward; the tied embedding counted once, as the LM head) plus
    attention, 12 * layers * hidden * len per token of a len-token sequence (QK^T and AV, forward and
    backward, no causal discount), over real (unpadded) tokens."""
    return sum(6.0 * n_params * n + 12.0 * layers * hidden * n * n for n in lengths)


def matmul_peak(dtype_name: str, n: int, repeats: int) -> float:
    """Best FLOP/s of an n x n x n matmul in ``dtype_name`` with the current torch thread count."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    return 2.0 * n ** 3 / _best_matmul_seconds(n, n, n, dtype, repeats)


def _best_matmul_seconds(m: int, k: int, n: int, dtype, repeats: int) -> float:
    """Best wall time of an (m x k) @ (k x n) matmul over ``repeats``, after a warm-up (oneDNN builds its kernel
    on first use)."""
    import torch

    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return best


def model_gemm_flops(config, tokens: int, dtype_name: str, repeats: int = 3) -> dict:
    """FLOP/s of the matmuls one training step of a Llama-style ``config`` runs on a ``tokens``-token micro-batch,
    each timed alone at its own shape (best of ``repeats``) and weighted by its FLOPs: what the CPU's GEMMs reach on
    this model's shapes, where ``matmul_peak`` is a large square one. Per projection y = x W (x: T x K, W: K x N) the
    forward (T, K, N) and the backward's two, dx = dy W^T (T, N, K) and dW = x^T dy (K, T, N); the q/k/v/o, gate/up/
    down projections of every layer and the LM head. Attention's own matmuls, norms and the rest are not in it."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    h, i, v = config.hidden_size, config.intermediate_size, config.vocab_size
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    kv_dim = h // heads * kv
    layer = [(h, h), (h, kv_dim), (h, kv_dim), (h, h), (h, i), (h, i), (i, h)]  # (K, N) per projection
    counts: dict[tuple[int, int, int], int] = {}
    for (k, n), times in [((k, n), config.num_hidden_layers) for k, n in layer] + [((h, v), 1)]:
        for shape in ((tokens, k, n), (tokens, n, k), (k, tokens, n)):
            counts[shape] = counts.get(shape, 0) + times
    seconds, flops, per_shape = 0.0, 0.0, {}
    for (m, k, n), times in counts.items():
        best = _best_matmul_seconds(m, k, n, dtype, repeats)
        seconds += best * times
        flops += 2.0 * m * k * n * times
        per_shape[f"{m}x{k}x{n}"] = 2.0 * m * k * n / best
    return {"tokens": tokens, "dtype": dtype_name, "flops_per_s": flops / seconds, "step_gemm_seconds": seconds,
            "per_shape_flops_per_s": per_shape}


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def cpuinfo() -> dict:
    """The first CPU's fields in /proc/cpuinfo (a VM often shows only "Intel(R) Xeon(R) Processor" as the
    name; family/model say which generation it is)."""
    out: dict = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                out[key.strip()] = value.strip()
    except OSError:
        pass
    return out


def machine() -> dict:
    """The CPU, its bf16/AMX-relevant flags and the library versions (read without importing them)."""
    from importlib.metadata import version

    from agent_align.hardware import cpu_bf16_speedup, cpu_flags

    info = cpuinfo()
    return {"cpu": info.get("model name") or platform.processor() or platform.machine(),
            "cpu_family_model": f"family {info.get('cpu family', '?')} model {info.get('model', '?')}", "cores_total": os.cpu_count(), "cores_visible": len(os.sched_getaffinity(0)),
            "flags": [f for f in BF16_FLAGS if f in cpu_flags()], "python": platform.python_version(),
            **{lib: version(lib) for lib in ("torch", "transformers", "trl", "datasets")},
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""), "gomp_spincount": os.environ.get("GOMP_SPINCOUNT", ""),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS", ""),
            "bf16_speedup": cpu_bf16_speedup(),  # bf16 over fp32 matmul speed, as the training precision choice measures it
            "load_average_start": list(os.getloadavg())}
