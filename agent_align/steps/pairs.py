"""Preference pairs built from step scores: Step-DPO pairs and best/worst pairs of samples.

    from agent_align.steps.pairs import build_step_dpo_pairs
    pairs = build_step_dpo_pairs(rows, scorer)   # loss=step_dpo trains on these with the sigmoid loss

Step-DPO (Lai et al. 2024): the rejected answer is cut at its first wrong step. What comes before
(the correct steps, and the observations between them) becomes ``assistant_prefix``, the start of
the assistant's turn that the prompt ends with; ``rejected`` is the wrong step and ``chosen`` a correct
step at the same point: a scored on-policy continuation from ``continuations`` when the row has one,
else the step of the correct answer at that index (``steps.step_dpo_chosen=rest``: the rest of it).

On agent trajectories (message-list completions) a step is an assistant turn, and the prefix holds the
earlier turns and their observations: the pair's prompt is the task prompt plus that prefix, and both
completions are one turn. The correct trajectory's turn is used only when its history up to the cut is
the rejected one's (the same state); else the row is skipped (``skipped_other_state``).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

from agent_align.steps.scoring import all_correct, completion_format, first_wrong, mean_score, score_rows
from agent_align.steps.split import split_steps, steps_only

log = logging.getLogger(__name__)
SCORE_KEYS = ("chosen_scores", "rejected_scores")


def _cut_at(completion: Any, segments, k: int) -> tuple[Any, Any, Any]:
    """(prefix before step k, step k, everything from step k on) of a text or message-list completion."""
    steps = [s for s in segments if s.kind == "step"]
    seg = steps[k]  # offsets are chars of a text, or message indices of a list: slicing works for both
    return completion[:seg.start], completion[seg.start:seg.end], completion[seg.start:]


def build_step_dpo_pairs(rows: list[dict], scorer, *, threshold: float = 0.5, fmt: str = "auto",
                         chosen: str = "step", stats: Counter | None = None, default: str = "json") -> list[dict]:
    """One Step-DPO pair per row whose rejected answer has a wrong step and whose correct answer
    (or an on-policy continuation) offers a correct step there. Rows lacking scores are scored.

    ``scorer`` is a step scorer, or the run config: then the ``scorer=`` group builds one and
    ``steps.threshold``/``steps.format``/``steps.step_dpo_chosen`` override the keywords."""
    cfg = None
    if scorer is not None and hasattr(scorer, "steps") and hasattr(scorer, "scorer"):  # the run config
        cfg = scorer
        threshold, fmt, chosen, default = cfg.steps.threshold, cfg.steps.format, cfg.steps.step_dpo_chosen, cfg.data.format
    stats = stats if stats is not None else Counter()
    todo = [r for r in rows if any(r.get(k) is None for k in SCORE_KEYS)]
    if todo:  # rows that carry their scores (agent trajectory pairs: the environment's) need no scorer
        if cfg is not None:
            from agent_align.steps.scorers import build_scorer

            scorer = build_scorer(cfg.scorer, cfg)
        score_rows(todo, scorer, fmt, default=default)
    out, seen = [], set()
    for r in rows:
        cut = first_wrong_cut(r, threshold, fmt, default)
        if cut is None:
            stats["skipped_rejected_all_correct"] += 1
            continue
        good = _continuation(r, cut, threshold, fmt, chosen, default)
        if good is None:
            stats["skipped_other_state" if _other_state(r, cut) else "skipped_no_correct_step"] += 1
            continue
        sig = repr((r["prompt"], cut.prefix, good[0], cut.step))
        if sig in seen:  # one failure paired with several successes cuts the same way
            stats["skipped_duplicate"] += 1
            continue
        seen.add(sig)
        pair = {key: v for key, v in r.items() if key not in SCORE_KEYS and key != "continuations"}
        pair.update({"id": f"{r.get('id', len(out))}-step{cut.k}", "assistant_prefix": cut.prefix, "chosen": good[0],
                     "rejected": cut.step, "step_index": cut.k, "chosen_ends_answer": good[1],
                     "rejected_ends_answer": cut.k == cut.n_steps - 1, "chosen_source": good[2]})
        out.append(pair)
        stats["pairs"] += 1
        stats[f"chosen_{good[2]}"] += 1
    log.info("step-dpo pairs: %s", dict(stats))
    return out


@dataclass(frozen=True)
class Cut:
    """A rejected answer cut at its first wrong step ``k``: ``prefix`` (everything before step k,
    observations included) and the wrong ``step``; ``fmt`` is the format it was split with."""
    k: int
    prefix: Any
    step: Any
    n_steps: int
    fmt: str


def first_wrong_cut(row: dict, threshold: float, fmt: str = "auto", default: str = "json") -> Cut | None:
    """Where Step-DPO cuts ``row["rejected"]`` (needs ``rejected_scores``), or None when no step is
    wrong. Sampling continuations uses the same cut, so they start exactly where the pair's prompt ends."""
    k = first_wrong(row["rejected_scores"], threshold)
    if k is None:
        return None
    rej_fmt = completion_format(row["rejected"], fmt, default)
    segments = split_steps(row["rejected"], rej_fmt)
    prefix, step, _ = _cut_at(row["rejected"], segments, k)
    return Cut(k, prefix, step, sum(sg.kind == "step" for sg in segments), rej_fmt)


def _continuation(row: dict, cut: Cut, threshold: float, fmt: str, mode: str,
                  default: str) -> tuple[Any, bool, str] | None:
    """(a correct step at the cut, whether it ends the answer, where it came from), or None.

    First choice: an on-policy continuation (``continuations``: text sampled after the prefix, with
    the scores of its own steps), kept when every step of it is correct, as Step-DPO verifies the
    final answer; its first step is the chosen one (``rest``: all of it). Fallback: the row's
    ``chosen`` answer's step at that index (source = the row's ``chosen_source``, else gold; for a
    trajectory ``success``, and only when its history up to the cut is the rejected one's)."""
    for cont in row.get("continuations") or []:
        if cont.get("step_index", cut.k) != cut.k or not all_correct(cont.get("scores", []), threshold):
            continue  # sampled for another cut (the row was re-scored since), or not verified correct
        text = cont["text"]
        steps = steps_only(text, cut.fmt) if isinstance(text, str) else []
        if mode == "rest" or len(steps) <= 1:
            return text, True, cont.get("source", "continuation")
        return text[:steps[0].end], False, cont.get("source", "continuation")
    scores = row["chosen_scores"]
    if not scores:
        return None
    j = min(cut.k, len(scores) - 1)
    if scores[j] < threshold or not all_correct(scores[: j + 1], threshold):
        return None
    c = row["chosen"]
    if _other_state(row, cut):
        return None
    _, step, rest = _cut_at(c, split_steps(c, completion_format(c, fmt, default)), j)
    source = row.get("chosen_source", "success" if isinstance(c, list) else "gold")
    return (rest, True, source) if mode == "rest" else (step, j == len(scores) - 1, source)


def _other_state(row: dict, cut: Cut) -> bool:
    """A trajectory whose correct answer reaches the cut's turn index through a different history: its turn
    there answers another state (other calls, other observations), so it is no chosen for this cut."""
    from agent_align.env.preferences import same_history

    c = row["chosen"]
    if not isinstance(c, list) or not isinstance(cut.prefix, list):
        return False
    turns = [s for s in split_steps(c, "trajectory") if s.kind == "step"]
    return len(turns) <= cut.k or not same_history(c[:turns[cut.k].start], cut.prefix)


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _open_ended(enc, ids: list[int], prefix: Any, step: Any, ends_answer: bool) -> list[int]:
    """A step that does not end its answer loses the template's end-of-turn tokens, so the pair does
    not teach the model to stop after a middle step."""
    if ends_answer or not isinstance(step, str) or isinstance(prefix, list):
        return ids
    text_ids = enc.tok(prefix + step, add_special_tokens=False)["input_ids"]
    return ids[:max(1, common_prefix_length(ids, text_ids))]


def step_dpo_example(enc, chat: dict, row: dict) -> dict:
    """Token ids of a Step-DPO pair for the pipeline's Encoder: the prompt is the rendered request
    followed by the correct prefix (the start of the assistant turn); the completions are the
    correct and the wrong step, each with the template's end of turn only when it ends its answer.
    On a trajectory the prefix is whole messages: they join the conversation, and the completions are
    one assistant turn each (a prompt too long keeps its end, as for every prompt)."""
    prefix = row.get("assistant_prefix") or ""
    if isinstance(prefix, list):
        history = {"messages": chat["messages"] + [{"role": m["role"], "content": m["content"]} for m in prefix],
                   "tools": chat.get("tools")}
        return enc.dpo_example(history, _one_turn(row["chosen"]), _one_turn(row["rejected"]))

    def turns(step):
        return (prefix + step) if isinstance(step, str) else step
    c_ids = _open_ended(enc, enc.completion_ids(chat, turns(row["chosen"])), prefix, row["chosen"],
                        row.get("chosen_ends_answer", True))
    r_ids = _open_ended(enc, enc.completion_ids(chat, turns(row["rejected"])), prefix, row["rejected"],
                        row.get("rejected_ends_answer", True))
    # tokens that lie inside the prefix text in both sequences (a merge at the cut stays in the step)
    p_ids = enc.tok(prefix, add_special_tokens=False)["input_ids"]
    n = min(common_prefix_length(p_ids, c_ids), common_prefix_length(p_ids, r_ids))
    return {"prompt_ids": enc.prompt_ids(chat) + c_ids[:n], "chosen_ids": c_ids[n:], "rejected_ids": r_ids[n:]}


def _one_turn(step: Any) -> str:
    """The content of a trajectory step (a one-message list) as the assistant's reply."""
    if isinstance(step, list):
        if len(step) != 1 or step[0]["role"] != "assistant":
            raise ValueError(f"a trajectory Step-DPO completion is one assistant turn, got {len(step)} messages")
        return step[0]["content"]
    return step


def best_worst_pair(row: dict, samples: list[str], scores: list[list[float]], *, threshold: float,
                    min_margin: float = 0.0, use_gold: bool = True) -> dict | None:
    """The best-scoring sample (or the gold answer when no sample is all-correct and ``use_gold``)
    against the worst one; None when they are not far enough apart."""
    means = [mean_score(s) for s in scores]
    worst = min(range(len(samples)), key=lambda i: (means[i], i))
    best = max(range(len(samples)), key=lambda i: (means[i], -i))
    chosen, chosen_scores, source = samples[best], scores[best], "sample"
    if not all_correct(scores[best], threshold):
        if not use_gold or row.get("chosen") is None or row.get("chosen_scores") is None:
            return None
        chosen, chosen_scores, source = row["chosen"], row["chosen_scores"], "gold"
    if mean_score(chosen_scores) - means[worst] <= min_margin or all_correct(scores[worst], threshold):
        return None
    pair = {k: v for k, v in row.items() if k not in SCORE_KEYS and k != "continuations"}  # those were for another rejected
    pair.update({"chosen": chosen, "rejected": samples[worst], "chosen_scores": chosen_scores,
                 "rejected_scores": scores[worst], "chosen_source": source, "negative_type": "on_policy"})
    return pair
