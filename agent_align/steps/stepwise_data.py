"""Data for step-wise DPO: step segments, their weights, and one weight per completion token.

    ds = prepare_stepwise_dataset(rows, tokenizer, system=SYSTEM, max_length=384, cfg=cfg)

A completion's segments (steps and observations, ``agent_align.steps.split``) cover it end to end.
Each gets a weight: ``w_c,s`` for a chosen step, ``1 - w_r,s`` for a rejected step, 0 for an
observation and for an assistant turn marked ``"train": false`` (never trained, as in the masked DPO
path). Each completion token takes the weight of the segment it falls in.

Token boundaries are found without decoding: the completion text cut after segment k is tokenised
and its common prefix with the full token sequence is where segment k+1 starts, so a BPE merge
across a boundary moves the boundary by a token instead of breaking the alignment, and template
markup (end-of-turn tokens) lands in the segment it follows.

Two outputs: with ``tokenizer`` and ``system`` the rows are pre-tokenised with the pipeline's
Encoder (same prompts, truncation and ids as SFT/DPO/evaluation); without them they stay text
(``prompt``/``chosen``/``rejected`` in TRL's format) and the trainer aligns after TRL tokenises.
"""

from __future__ import annotations

import json
from typing import Any

from datasets import Dataset
from trl.data_utils import _tokenize, common_prefix_length, is_conversational

from agent_align.errors import UserError
from agent_align.steps.split import detect_format, split_steps

WEIGHT_COLUMNS = ("chosen_token_weights", "rejected_token_weights")
SIDES = ("chosen", "rejected")


def segment_columns(completion: Any, scores: list[float] | None, fmt: str, side: str, where: str,
                    default: str = "json") -> dict:
    """``{side}_segment_ends``, ``{side}_segment_weights``, ``{side}_segment_unit`` for one completion.
    Ends are char offsets (text, or the content of a single assistant message) or message counts."""
    unit, text = "char", completion
    if isinstance(completion, list):
        if len(completion) == 1 and isinstance(completion[0].get("content"), str) and fmt != "trajectory":
            text = completion[0]["content"]
        else:
            unit = "message"
    f = detect_format(text, default) if fmt == "auto" else fmt
    segments = split_steps(text, "trajectory" if unit == "message" else f)
    n_steps = sum(s.kind == "step" for s in segments)
    if scores is None or len(scores) != n_steps:
        got = "no" if scores is None else f"{len(scores)}"
        raise UserError(f"{where}: {side}_scores has {got} values for {n_steps} steps (format {f}); "
                        f"score the file with stage=score_steps, or give one score in [0, 1] per step")
    if any(not 0.0 <= float(s) <= 1.0 for s in scores):
        raise UserError(f"{where}: {side}_scores {scores} must lie in [0, 1]")
    it = iter(float(s) for s in scores)
    weights = []
    for seg in segments:
        w = next(it) if seg.kind == "step" else None
        if w is not None and unit == "message" and completion[seg.start].get("train", True) is False:
            w = None  # the row says never train this turn, whatever its score
        weights.append(0.0 if w is None else (w if side == "chosen" else 1.0 - w))
    return {f"{side}_segment_ends": [s.end for s in segments], f"{side}_segment_weights": weights,
            f"{side}_segment_unit": unit}


def spread(weights: list[float], starts: list[int], n: int) -> list[float]:
    """Per-token weights from segment start tokens; tokens past the last start go to the last segment."""
    bounds = starts[1:] + [n]
    out = []
    for w, a, b in zip(weights, starts, bounds):
        out.extend([float(w)] * max(0, min(b, n) - min(a, n)))
    return out


def _starts(full: list[int], n_before: int, prefixes_ids: list[list[int]]) -> list[int]:
    starts = [0]
    for ids in prefixes_ids:
        starts.append(max(starts[-1], common_prefix_length(full, ids) - n_before))
    return starts


# -- pre-tokenised path (the pipeline) -------------------------------------------------------------
def _encode_side(enc, chat: dict, completion: Any, seg: dict, side: str, where: str) -> tuple[list[int], list[float]]:
    tok = enc.tok
    prompt = enc.prompt_text(chat)
    turns = completion if isinstance(completion, list) else [{"role": "assistant", "content": completion}]

    def render(ts, generation_prompt=False):
        return tok.apply_chat_template(chat["messages"] + ts, tools=chat.get("tools") or None, tokenize=False,
                                       add_generation_prompt=generation_prompt)

    def render_upto(e):
        opens_turn = e < len(turns) and turns[e]["role"] == "assistant" and turns[e - 1]["role"] != "assistant"
        return render(turns[:e], generation_prompt=opens_turn)
    full = render(turns)
    if not full.startswith(prompt):
        raise UserError(f"{where}: the chat template renders the prompt differently with and without the answer; "
                        f"use model.chat_template=builtin")
    text = full[len(prompt):]
    ids = tok(text, add_special_tokens=False)["input_ids"]
    ends = seg[f"{side}_segment_ends"]
    if seg[f"{side}_segment_unit"] == "char":
        content = turns[0]["content"]
        offset = text.find(content)
        if offset < 0:
            raise UserError(f"{where}: the chat template changes the {side} text, so its steps cannot be located; "
                            f"use model.chat_template=builtin")
        char_ends = [offset + e for e in ends]
    else:  # an observation's segment ends after the next turn's generation prompt, so an assistant turn's
        # weight covers its content and end of turn, the tokens the masked DPO path trains (env.masking)
        char_ends = [len(render_upto(e)) - len(prompt) for e in ends]
    prefixes = [tok(text[:ce], add_special_tokens=False)["input_ids"] for ce in char_ends[:-1]]
    weights = spread(seg[f"{side}_segment_weights"], _starts(ids, 0, prefixes), len(ids))
    room = max(1, enc.max_length - len(enc.prompt_ids(chat)))
    return ids[:room], weights[:room]


def _pretokenize(rows: list[dict], segs: list[dict], tokenizer, system: str, max_length: int | None,
                 max_prompt_length: int | None) -> Dataset:
    from agent_align.train.encode import Encoder, chat_of

    big = 10 ** 9
    enc = Encoder(tokenizer, max_length or big, max_prompt_length or max_length or big)
    out = []
    for r, seg in zip(rows, segs):
        chat = chat_of(r, r.get("system", system))
        ex = {"id": str(r.get("id", len(out))), "prompt_ids": enc.prompt_ids(chat)}
        for side in SIDES:
            ex[f"{side}_ids"], ex[f"{side}_token_weights"] = _encode_side(enc, chat, r[side], seg, side, seg["_where"])
        out.append(ex)
    return Dataset.from_list(out)


# -- text path (TRL tokenises; the trainer aligns) ---------------------------------------------------
def _cut(completion: Any, end: int, unit: str) -> Any:
    if unit == "message":
        return completion[:end]
    if isinstance(completion, list):  # one assistant message: cut inside its content
        return [{**completion[0], "content": completion[0]["content"][:end]}]
    return completion[:end]


def token_weights(tokenizer, example: dict, side: str) -> list[float]:
    """One weight per completion token of a TRL-tokenised example (``prompt_ids``, ``{side}_ids``)."""
    unit = example[f"{side}_segment_unit"]
    n_prompt = len(example["prompt_ids"])
    full = example["prompt_ids"] + example[f"{side}_ids"]
    tools = example.get("tools")
    kwargs = {"tools": json.loads(tools) if isinstance(tools, str) else tools} if is_conversational(example) else {}
    prefixes = [_tokenize(tokenizer, example["prompt"] + _cut(example[side], end, unit), **kwargs)["input_ids"]
                for end in example[f"{side}_segment_ends"][:-1]]
    return spread(example[f"{side}_segment_weights"], _starts(full, n_prompt, prefixes), len(example[f"{side}_ids"]))


def prepare_stepwise_dataset(rows: list[dict], tokenizer=None, *, system: str | None = None,
                             max_length: int | None = None, max_prompt_length: int | None = None, cfg=None,
                             fmt: str | None = None, scorer=None) -> Dataset:
    """Rows (prompt, chosen, rejected[, tools][, chosen_scores, rejected_scores]) -> a dataset for
    ``StepwiseDPOTrainer``. Rows without scores are scored by ``scorer`` (with ``cfg``: the
    ``scorer=`` group), else they fail with the fix. ``cfg`` also supplies ``steps.format``, the
    system prompt and the length limits when they are not given."""
    default = "json"
    if cfg is not None:
        from agent_align.train.encode import system_prompt

        fmt = fmt or cfg.steps.format
        default = cfg.data.format
        system = system if system is not None else system_prompt(cfg)
        max_length = max_length or cfg.model.max_length
        max_prompt_length = max_prompt_length or cfg.model.max_prompt_length
    fmt = fmt or "auto"
    todo = [r for r in rows if r.get("chosen_scores") is None or r.get("rejected_scores") is None]
    if todo and (scorer is not None or cfg is not None):
        from agent_align.steps.scorers import build_scorer
        from agent_align.steps.scoring import score_rows

        score_rows(todo, scorer or build_scorer(cfg.scorer, cfg), fmt, default=default)
    segs = []
    for i, r in enumerate(rows):
        where = f"row {r.get('id', i)}" + (f" (line {r['_line']})" if "_line" in r else "")
        seg = {"_where": where}
        for side in SIDES:
            seg.update(segment_columns(r[side], r.get(f"{side}_scores"), fmt, side, where, default))
        segs.append(seg)
    if tokenizer is not None and system is not None:
        return _pretokenize(rows, segs, tokenizer, system, max_length, max_prompt_length)
    out = []
    for r, seg in zip(rows, segs):
        new = {k: v for k, v in r.items() if k in ("id", "prompt", "chosen", "rejected", "tools")}
        new.update({k: v for k, v in seg.items() if not k.startswith("_")})
        if isinstance(new.get("tools"), list):
            new["tools"] = json.dumps(new["tools"])  # Arrow cannot hold heterogeneous JSON Schemas
        out.append(new)
    return Dataset.from_list(out)
