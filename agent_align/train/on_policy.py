"""On-policy negatives: the policy's own failing outputs, each paired with the correct call.

Negatives the model never produces teach it little (measured: offline synthetic pairs moved a
from-scratch model's SSPR by ~0). Sampling the SFT model and keeping what the validator rejects
targets exactly the mistakes it makes.

Samples come from the compacting decoder (``generation.decode_compacting``): finished rows leave the batch,
and with ``evaluate.stop_at_call_end`` a row ends right after its complete call; a sample that would go on
past its call keeps the first token past it, which is what makes the validator reject it (call_end.py).
"""

from __future__ import annotations

import logging
import random
from collections import Counter

from agent_align.generation import call_stop, generate_ids
from agent_align.hardware import resolve_precision
from agent_align.train.encode import chat_of, system_prompt, unique_prompts
from agent_align.validation.validator import SchemaChecker, validate_output

log = logging.getLogger(__name__)


def sample_negatives(cfg, model, tok, enc, rows: list[dict], round_idx: int) -> tuple[list[dict], dict]:
    """(pairs, stats): up to one pair per distinct failing sample of ``dpo.sample_prompts`` prompts."""
    prompts = unique_prompts(rows)
    rng = random.Random(f"{cfg.seed}-on-policy-{round_idx}")
    prompts = rng.sample(prompts, min(cfg.dpo.sample_prompts, len(prompts)))
    system = system_prompt(cfg)
    ids = [enc.prompt_ids(chat_of(r, system)) for r in prompts]
    k = cfg.dpo.samples_per_prompt
    batch = max(1, (cfg.evaluate.batch_size or cfg.hardware.eval_batch_size) // k)
    samples = generate_ids(model, tok, ids, max_new_tokens=cfg.evaluate.max_new_tokens, batch_size=batch,
                           do_sample=True, temperature=cfg.dpo.temperature, top_p=cfg.dpo.top_p,
                           num_return_sequences=k, bf16=resolve_precision(cfg.hardware) == "bf16",
                           desc=f"on-policy samples (round {round_idx})", seed=cfg.seed + round_idx,
                           stop_at_call=call_stop(cfg))
    checker = SchemaChecker()
    pairs, cats = [], Counter()
    n_samples = n_pass = 0
    for row, seqs in zip(prompts, samples):
        seen = set()
        for s in seqs:
            text = tok.decode(s, skip_special_tokens=True)
            n_samples += 1
            v = validate_output(text, row["schema"], cfg.data.format, checker)
            if v.passed:
                n_pass += 1
                continue
            if text in seen:
                continue
            seen.add(text)
            cats[v.category] += 1
            pairs.append({"id": f"{row['id']}-op{round_idx}-{len(seen)}", "prompt": row["prompt"], "tools": row.get("tools"),
                          "chosen": row["chosen"], "rejected": text, "schema": row["schema"], "tool": row.get("tool"),
                          "negative_type": v.category, "source": "on_policy"})
    stats = {"prompts": len(prompts), "samples": n_samples, "sample_pass_rate": n_pass / max(1, n_samples),
             "pairs": len(pairs), "categories": dict(cats)}
    log.info("on-policy round %d: %d samples, pass rate %.3f, %d pairs %s", round_idx, n_samples,
             stats["sample_pass_rate"], len(pairs), dict(cats))
    return pairs, stats
