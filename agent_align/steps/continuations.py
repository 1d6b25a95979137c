"""On-policy continuations for Step-DPO: the chosen step sampled from the model itself.

    python -m agent_align stage=sample sample.step_dpo_continuations=4
    python -m agent_align stage=dpo loss=step_dpo data.negatives_source=synthetic data.train_path=runs/x/sampled_pairs.jsonl

Step-DPO (Lai et al. 2024) takes the chosen step from the model: given the prompt and the correct
prefix of a wrong answer, it samples continuations and keeps one whose steps are verified correct.
Each rejected answer is cut where ``build_step_dpo_pairs`` cuts it (``first_wrong_cut``); its
prefix is appended to the rendered prompt, N continuations of every cut come from one batched
``generate_ids`` call, and each is scored in context (prefix + continuation, by the configured step
scorer) so that rules which look at the whole answer still apply. The correct ones are attached as
``row["continuations"] = [{"text", "scores", "step_index"}]`` (``scores``: the continuation's own
steps); rows with none keep the fallback to the correct answer's step.
"""

from __future__ import annotations

import logging
from collections import Counter

from agent_align.steps.pairs import Cut, first_wrong_cut
from agent_align.steps.scoring import all_correct
from agent_align.steps.split import split_steps

log = logging.getLogger(__name__)


def continuation_start(full: str, cut: Cut) -> int | None:
    """Where the continuation's first segment starts in ``full`` = prefix + continuation, or None
    when the continuation does not open a new step at the cut (it runs on inside the prefix's last
    segment). Whitespace the model emits first sticks to the prefix's segment, as the splitter does."""
    n = len(cut.prefix)
    segments = split_steps(full, cut.fmt)
    start = next((s.start for s in segments if s.start >= n), None)
    if start is None or full[n:start].strip():
        return None
    steps_before = sum(s.kind == "step" and s.start < n for s in segments)
    return start if steps_before == cut.k else None


def sample_continuations(cfg, model, tok, enc, rows: list[dict], scorer, n: int, *, seed: int = 0,
                         desc: str | None = "step-dpo continuations") -> dict:
    """Attach verified on-policy continuations to ``rows`` (preference rows with ``rejected_scores``),
    in place. Returns counts: cuts, continuations_per_cut, sampled, no_step_at_cut (ran on inside the
    prefix, or empty), correct (distinct continuations verified correct) and rows_with_continuation."""
    from agent_align.call_end import CALL_ENDS
    from agent_align.generation import generate_ids
    from agent_align.hardware import resolve_precision
    from agent_align.steps.nat import with_positive_tag
    from agent_align.train.encode import chat_of, system_prompt

    threshold, fmt, default = cfg.steps.threshold, cfg.steps.format, cfg.data.format
    cuts = [(r, first_wrong_cut(r, threshold, fmt, default)) for r in rows]
    cuts = [(r, c) for r, c in cuts if c is not None and isinstance(c.prefix, str)]  # text answers only
    stats = Counter({"cuts": len(cuts), "continuations_per_cut": n, "sampled": 0, "no_step_at_cut": 0, "correct": 0,
                     "rows_with_continuation": 0})
    if not cuts or n <= 0:
        return dict(stats)
    system = system_prompt(cfg)
    tagged = with_positive_tag([r for r, _ in cuts], cfg)  # the prompt the policy is always given
    ids = [enc.prompt_ids(chat_of(t, system)) + (tok(c.prefix, add_special_tokens=False)["input_ids"] if c.prefix else [])
           for t, (_, c) in zip(tagged, cuts)]
    batch = max(1, (cfg.evaluate.batch_size or cfg.hardware.eval_batch_size) // n)
    # a continuation ends once prefix + continuation holds the complete call (call formats only)
    stops = [c.fmt if cfg.evaluate.stop_at_call_end and c.fmt in CALL_ENDS else None for _, c in cuts]
    out = generate_ids(model, tok, ids, max_new_tokens=cfg.sample.max_new_tokens, batch_size=batch, do_sample=True,
                       temperature=cfg.sample.temperature, top_p=cfg.sample.top_p, num_return_sequences=n,
                       bf16=resolve_precision(cfg.hardware) == "bf16", desc=desc, seed=seed, stop_at_call=stops,
                       text_before=[c.prefix for _, c in cuts])
    items, where = [], []
    for (row, cut), seqs in zip(cuts, out):
        seen = set()
        for s in seqs:
            text = tok.decode(s, skip_special_tokens=True)
            stats["sampled"] += 1
            if text in seen:
                continue
            seen.add(text)
            full = cut.prefix + text
            start = continuation_start(full, cut)
            if start is None:
                stats["no_step_at_cut"] += 1
                continue
            items.append({"row": row, "completion": full, "fmt": cut.fmt})
            where.append((row, cut, full[start:]))
    for (row, cut, text), scores in zip(where, scorer.score(items)):
        own = [round(float(x), 4) for x in scores[cut.k:]]
        if all_correct(own, threshold):
            row.setdefault("continuations", []).append({"text": text, "scores": own, "step_index": cut.k})
            stats["correct"] += 1
    stats["rows_with_continuation"] = sum(bool(r.get("continuations")) for r, _ in cuts)
    log.info("step-dpo continuations: %d cuts x %d samples, %d correct (%d cuts with one), %d opened no step at the cut",
             stats["cuts"], n, stats["correct"], stats["rows_with_continuation"], stats["no_step_at_cut"])
    return dict(stats)
