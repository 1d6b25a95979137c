"""Hardware utilisation of our SFT path for benchmarks/run.py: the matmul peak measured in the training dtype, then
real SFT steps with a clock per step (after ``warmup`` untimed ones), FLOPs counted per batch of real tokens; and the
same figure read from a default pipeline run's own SFT stage. What is counted: benchmarks/README.md."""

from __future__ import annotations

from pathlib import Path

from common import PeakRSS, matmul_peak, model_gemm_flops, training_flops
from sides import ours_setup, read_rows


def mfu(spec: dict) -> dict:
    """Matmul peak in the training dtype, then our SFT path on real steps, FLOPs counted per batch."""
    import time

    from transformers import TrainerCallback

    from agent_align.hardware import cpu_flags, resolve_precision
    from agent_align.stages.sft import build_trainer, sft_examples
    from agent_align.train.common import resume_point

    cfg, ctx, model, tok, enc = ours_setup(spec)
    dtype = resolve_precision(cfg.hardware)
    native_bf16 = bool({"amx_bf16", "avx512_bf16"} & cpu_flags())  # without them bf16 is emulated: no peak to speak of
    dtypes = ["fp32", "bf16"] if native_bf16 or dtype == "bf16" else ["fp32"]
    peaks = {d: matmul_peak(d, spec["matmul_n"], spec["matmul_repeats"]) for d in dtypes}
    examples = sft_examples(cfg, read_rows(spec["rows"]), enc)
    trainer, out = build_trainer(cfg, ctx, model, tok, examples)
    batch_lengths: list[list[int]] = []
    padded: list[int] = []
    collate = trainer.data_collator

    def counting_collator(features):  # the lengths of what each step really trains on, and its padded positions
        batch_lengths.append([len(f["input_ids"]) for f in features])
        out = collate(features)
        padded.append(out["input_ids"].numel())
        return out

    step_ends: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            step_ends.append(time.perf_counter())

    trainer.data_collator = counting_collator
    trainer.add_callback(StepClock())
    with PeakRSS() as meter:
        trainer.train(resume_from_checkpoint=resume_point(cfg, out))
    c = model.config
    n_params = sum(p.numel() for p in model.parameters())
    accum = cfg.hardware.sft_grad_accum
    # the first ``warmup`` steps are not timed: a fresh process's first steps run slower at the same shapes (a bare
    # SmolLM2 step at 8 x 512 tokens on the AMD machine: 19, 18, 13, then ~13 s), and a step's cost follows its padded
    # length (151-223 GFLOP/s between steps of one run), so the figure wants several steps past the warm-up
    warm = max(1, min(spec.get("warmup", 1), len(step_ends) - 1))
    steps = [batch_lengths[accum * i:accum * (i + 1)] for i in range(len(step_ends))]  # each step's micro-batches
    per_step = [{"tokens": sum(map(sum, b)), "positions": sum(padded[accum * i:accum * (i + 1)]),
                 "seconds": step_ends[i] - step_ends[i - 1] if i else None,
                 "flops": training_flops(n_params, c.num_hidden_layers, c.hidden_size, [n for m in b for n in m])}
                for i, b in enumerate(steps)]
    timed = [n for b in batch_lengths[accum * warm:accum * len(step_ends)] for n in b]
    seconds = step_ends[-1] - step_ends[warm - 1]
    flops = training_flops(n_params, c.num_hidden_layers, c.hidden_size, timed)
    micro = [sum(b) for b in batch_lengths[accum * warm:accum * len(step_ends)]]  # real tokens per micro-batch
    gemms = model_gemm_flops(c, round(sum(micro) / len(micro)), dtype, spec["matmul_repeats"] // 3 or 1)
    return {"precision": dtype, "matmul_peak_flops": peaks, "parameters": n_params, "layers": c.num_hidden_layers,
            "hidden": c.hidden_size, "warmup_steps": warm, "timed_steps": len(step_ends) - warm,
            "timed_tokens": sum(timed), "seconds": seconds, "per_step": per_step,
            "achieved_flops": flops / seconds, "mfu": flops / seconds / peaks[dtype], "peak_rss_mb": meter.peak_mb,
            "threads": __import__("torch").get_num_threads(), "model_gemms": gemms,
            "of_model_gemm_flops": flops / seconds / gemms["flops_per_s"]}


def pipeline_sft_utilisation(summary_path: Path, mfu: dict) -> dict | None:
    """The pipeline run's whole SFT training loop (TRL's ``train_runtime``: warm-up, logging and checkpoints
    included) against the peak measured here: 6 x parameters FLOPs per trained token (TRL's ``num_tokens``; attention
    left out, so a lower bound). None when the run kept no SFT metrics."""
    from agent_align.jsonl import read_jsonl

    path = summary_path.parent / "metrics" / "sft.jsonl"
    if not path.exists():
        return None
    rows = read_jsonl(str(path))
    tokens = max((r.get("num_tokens") or 0 for r in rows), default=0)
    seconds = next((r["train_runtime"] for r in reversed(rows) if "train_runtime" in r), None)
    if not tokens or not seconds:
        return None
    flops = 6.0 * mfu["parameters"] * tokens / seconds
    return {"metrics": str(path), "tokens": tokens, "seconds": seconds, "flops_per_s": flops,
            "of_peak": flops / mfu["matmul_peak_flops"][mfu["precision"]]}
