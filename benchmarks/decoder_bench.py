"""Decoding speed on a real model: on-policy sampling and greedy evaluation, ours vs transformers' generate.

    nice -n 19 python benchmarks/decoder_bench.py --model smollm2_135m            # ~4 minutes on 2 cores
    python benchmarks/decoder_bench.py --model tiny --prompts 8 --eval-prompts 8 --baseline-eval 4

Sampling (dpo.samples_per_prompt prompts x samples, temperature 1, top-p 1, the bf16 decoding copy on a bf16
CPU): ``generate`` batched, left padded and sorted by length as ``generate_ids`` ran it before
(``compact=False``) vs ``decode_compacting``, without and with ``stop_at_call``. Greedy evaluation: ours
(``stages.evaluate.predict``'s call: batched, compacting, stop at the call) vs one ``generate`` call per
prompt on the fp32 model (benchmarks/sides.py ``eval_baseline``). The same prompts on each side; pass
rates come from the validator, so a faster side that produced worse calls would show. Our evaluation runs
twice, with the prompts' shared prefix (the system prompt) prefilled once and, as ``hardware.share_prefix=false``,
once a prompt: ``shared_prefix_eval_ratio``, and the share of prompts whose calls came out the same.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2_135m")
    ap.add_argument("--model-path", help="a checkpoint of that model (e.g. RUN/checkpoints/sft); default: model.*")
    ap.add_argument("--prompts", type=int, default=48, help="sampling prompts")
    ap.add_argument("--samples", type=int, default=4, help="samples per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--eval-prompts", type=int, default=96, help="prompts for our greedy evaluation")
    ap.add_argument("--baseline-eval", type=int, default=24, help="of those, prompts for the per-prompt loop")
    ap.add_argument("--out", help="write the numbers as JSON here")
    args = ap.parse_args()

    import torch

    from agent_align.data.generator import Generator
    from agent_align.generation import decoder, generate_ids
    from agent_align.hardware import resolve_precision
    from agent_align.models import load_model_and_tokenizer
    from agent_align.train.encode import Encoder, chat_of, system_prompt, unique_prompts
    from agent_align.validation.validator import validate_output
    from common import compose, machine

    cfg = compose([f"model={args.model}"])
    model, tok = load_model_and_tokenizer(cfg, path=args.model_path)
    bf16 = resolve_precision(cfg.hardware) == "bf16"
    enc = Encoder(tok, cfg.model.max_length, cfg.model.max_prompt_length)
    n_rows = max(args.prompts, args.eval_prompts)
    rows = unique_prompts(Generator(cfg.data, cfg.seed).rows("train", 2 * n_rows))[:n_rows]
    ids = [enc.prompt_ids(chat_of(r, system_prompt(cfg))) for r in rows]
    fmt = cfg.data.format

    def texts(out):
        return [[tok.decode(s, skip_special_tokens=True) for s in seqs] for seqs in out]

    def pass_rate(rs, outs):
        verdicts = [validate_output(o, r["schema"], fmt).passed for r, os in zip(rs, outs) for o in os]
        return round(sum(verdicts) / len(verdicts), 3)

    def timed(fn):  # wall and CPU seconds: on a shared machine the CPU time is the steadier measure of work
        start, cpu = time.perf_counter(), time.process_time()
        out = fn()
        return out, time.perf_counter() - start, time.process_time() - cpu

    generate_ids(model, tok, ids[:2], max_new_tokens=4, bf16=bf16, desc=None)  # warm-up: kernels, first allocations
    res = {"model": args.model, "model_path": args.model_path, "machine": machine(), "bf16_decoding": bf16, "threads": torch.get_num_threads()}
    k, p = args.samples, args.prompts
    batch = max(1, cfg.hardware.eval_batch_size // k)  # train/on_policy.py's batch
    sample_kw = dict(max_new_tokens=args.max_new_tokens, batch_size=batch, do_sample=True, temperature=1.0, top_p=1.0,
                     num_return_sequences=k, bf16=bf16, desc=None, seed=0)
    for name, kw in [("sampling_generate", dict(compact=False)), ("sampling_compacting", dict(compact=True)),
                     ("sampling_ours", dict(compact=True, stop_at_call=fmt))]:
        out, sec, cpu = timed(lambda: generate_ids(model, tok, ids[:p], **sample_kw, **kw))
        res[name] = {"samples": p * k, "seconds": round(sec, 2), "cpu_seconds": round(cpu, 2),
                     "samples_per_s": round(p * k / sec, 2), "samples_per_cpu_s": round(p * k / cpu, 2),
                     "mean_new_tokens": round(sum(len(s) for seqs in out for s in seqs) / (p * k), 1),
                     "pass_rate": pass_rate(rows[:p], texts(out))}
        print(name, res[name], flush=True)
    ours, base = res["sampling_ours"], res["sampling_generate"]
    res["sampling_ratio"] = round(ours["samples_per_s"] / base["samples_per_s"], 2)
    res["sampling_ratio_cpu"] = round(ours["samples_per_cpu_s"] / base["samples_per_cpu_s"], 2)

    n, m = args.eval_prompts, args.baseline_eval
    outs = {}
    for name, share in [("eval_ours", True), ("eval_ours_unshared_prefix", False)]:
        decoder.set_share_prefix(share)  # the system prompt's tokens prefilled once (True) or once a prompt
        out, sec, cpu = timed(lambda: generate_ids(model, tok, ids[:n], max_new_tokens=args.max_new_tokens,
                                                   batch_size=cfg.hardware.eval_batch_size, bf16=bf16, desc=None,
                                                   stop_at_call=fmt))
        outs[name] = out
        res[name] = {"calls": n, "seconds": round(sec, 2), "cpu_seconds": round(cpu, 2),
                     "calls_per_s": round(n / sec, 2), "calls_per_cpu_s": round(n / cpu, 2),
                     "mean_new_tokens": round(sum(len(s[0]) for s in out) / n, 1),
                     "pass_rate": pass_rate(rows[:n], texts(out))}
        print(name, res[name], flush=True)
    decoder.set_share_prefix(cfg.hardware.share_prefix)
    res["shared_prefix_tokens"] = len(decoder._common_prefix(ids[:n]))
    res["shared_prefix_eval_ratio"] = round(res["eval_ours"]["calls_per_s"] / res["eval_ours_unshared_prefix"]["calls_per_s"], 2)
    res["shared_prefix_same_outputs"] = sum(a == b for a, b in zip(outs["eval_ours"], outs["eval_ours_unshared_prefix"])) / n
    model.eval()

    def per_prompt_loop():
        with torch.inference_mode():
            return [[tok.decode(model.generate(input_ids=torch.tensor([x]), attention_mask=torch.ones(1, len(x), dtype=torch.long),
                                               max_new_tokens=args.max_new_tokens, do_sample=False,
                                               pad_token_id=tok.pad_token_id)[0, len(x):], skip_special_tokens=True)]
                    for x in ids[:m]]
    loop, sec, cpu = timed(per_prompt_loop)
    res["eval_per_prompt_generate"] = {"calls": m, "seconds": round(sec, 2), "cpu_seconds": round(cpu, 2),
                                       "calls_per_s": round(m / sec, 2), "calls_per_cpu_s": round(m / cpu, 2),
                                       "pass_rate": pass_rate(rows[:m], loop)}
    print("eval_per_prompt_generate", res["eval_per_prompt_generate"], flush=True)
    ours, base = res["eval_ours"], res["eval_per_prompt_generate"]
    res["eval_ratio"] = round(ours["calls_per_s"] / base["calls_per_s"], 2)
    res["eval_ratio_cpu"] = round(ours["calls_per_cpu_s"] / base["calls_per_cpu_s"], 2)
    print(json.dumps({k: res[k] for k in ("sampling_ratio", "sampling_ratio_cpu", "eval_ratio", "eval_ratio_cpu",
                                          "shared_prefix_eval_ratio", "shared_prefix_same_outputs")} | {
        "cpu": res["machine"]["cpu"], "bf16_speedup": res["machine"]["bf16_speedup"]}))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
