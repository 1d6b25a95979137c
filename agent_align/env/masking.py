"""Loss masks for multi-message completions: train on assistant turns, never on tool observations.

    enc = encode_conversation(row["messages"], tokenizer, tools=row["tools"], mask_history=False)
    enc["input_ids"], enc["labels"]          # labels are -100 wherever the loss is masked
    pair = encode_preference(row, tokenizer)   # chosen_/rejected_ input_ids, labels, and prompt_length
    ex = preference_example(row, tokenizer)    # the same as the dpo stage's columns (prompt_ids, chosen_mask, ...)

TRL trains on every completion token, which for a trajectory would include the observations the
environment wrote; these functions are what the SFT/DPO collators use instead. Which tokens belong
to which message comes from rendering the chat template on growing prefixes of the conversation
(so it works with any template, not only those with ``{% generation %}`` markers): the span of an
assistant turn is the text between "prefix + generation prompt" and "prefix + that turn". A
template that rewrites earlier turns when later ones are added (not prefix-stable) is rejected,
since no mask could be right for it.

Trained tokens: assistant turns at or after ``completion_start`` whose message does not say
``"train": false``; with ``mask_history`` only the last such turn (seed 003: train on the last step).
"""

from __future__ import annotations

from agent_align.errors import UserError

IGNORE = -100
MASKED_LOSSES = ("dpo", "ipo", "rpo")  # loss names whose DPO trainer reads these masks (agent_align.train.dpo)
# step-level losses on trajectory pairs, from their per-turn scores: stepwise weights each turn (observations
# and "train": false turns get 0), step_dpo cuts at the first wrong turn (agent_align.env.preferences)
STEP_LOSSES = ("stepwise", "step_dpo")


def _render(tokenizer, messages: list[dict], tools, generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tools=tools or None, tokenize=False,
                                         add_generation_prompt=generation_prompt)


def trained_turns(messages: list[dict], completion_start: int = 0, mask_history: bool = False) -> list[int]:
    turns = [i for i, m in enumerate(messages)
             if i >= completion_start and m["role"] == "assistant" and m.get("train", True)]
    return turns[-1:] if mask_history else turns


def char_spans(messages: list[dict], tokenizer, tools=None, turns: list[int] = ()) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span of each turn in ``turns``."""
    full = _render(tokenizer, messages, tools)
    spans = []
    for i in turns:
        before = _render(tokenizer, messages[:i], tools, generation_prompt=True)
        upto = _render(tokenizer, messages[:i + 1], tools)
        if not (upto.startswith(before) and full.startswith(upto)):
            raise UserError(f"the chat template of {getattr(tokenizer, 'name_or_path', 'this tokenizer')!r} is not "
                            f"prefix-stable (turn {i} renders differently once later turns are added), so "
                            "observations cannot be masked; use model.chat_template=builtin")
        spans.append((len(before), len(upto)))
    return full, spans


def encode_conversation(messages: list[dict], tokenizer, tools=None, *, completion_start: int = 0,
                        mask_history: bool = False, max_length: int | None = None) -> dict:
    """``input_ids``, ``labels`` (-100 = no loss), ``loss_mask`` (1 = trained) for a whole conversation, and
    ``prompt_length``: the tokens of ``messages[:completion_start]``."""
    turns = trained_turns(messages, completion_start, mask_history)
    text, spans = char_spans(messages, tokenizer, tools, turns)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    mask = []
    for start, end in offsets:
        # A token belongs to the span its first character is in; zero-width tokens to the one they close.
        pos = start if end > start else max(start - 1, 0)
        mask.append(int(any(s <= pos < e for s, e in spans)))
    prompt_chars = len(_render(tokenizer, messages[:completion_start], tools)) if completion_start else 0
    prompt_length = sum(1 for start, _ in offsets if start < prompt_chars)
    if max_length is not None and len(ids) > max_length:
        ids, mask = ids[:max_length], mask[:max_length]
    return {"input_ids": list(ids), "loss_mask": mask, "labels": [t if m else IGNORE for t, m in zip(ids, mask)],
            "trained_turns": turns, "prompt_length": min(prompt_length, len(ids))}


def encode_sft_row(row: dict, tokenizer, mask_history: bool = False, max_length: int | None = None) -> dict:
    """A conversational SFT row ``{"messages", "tools"}``: every trainable assistant turn (or only the last)."""
    return encode_conversation(row["messages"], tokenizer, row.get("tools"), mask_history=mask_history,
                               max_length=max_length)


def encode_preference(row: dict, tokenizer, max_length: int | None = None) -> dict:
    """A DPO row ``{"prompt", "chosen", "rejected", "tools"}`` whose completions may hold several messages.
    Both sides share the prompt's tokens (``prompt_length``); only their assistant turns are trained."""
    prompt, tools = row["prompt"], row.get("tools")
    out = {}
    for side in ("chosen", "rejected"):
        enc = encode_conversation(prompt + row[side], tokenizer, tools, completion_start=len(prompt),
                                  max_length=max_length)
        out[f"{side}_input_ids"], out[f"{side}_labels"] = enc["input_ids"], enc["labels"]
        out[f"{side}_loss_mask"] = enc["loss_mask"]
        out["prompt_length"] = enc["prompt_length"]  # tokens of the prompt messages, the same on both sides
    return out


def preference_example(row: dict, tokenizer, max_prompt_length: int | None = None) -> dict:
    """A conversational DPO row in the columns the dpo stage's masked trainer reads (agent_align.train.dpo):
    ``prompt_ids``, ``chosen_ids``/``rejected_ids`` (each completion's tokens, from its generation prompt on)
    and ``chosen_mask``/``rejected_mask`` over those completion tokens (1 = trained).

    The prompt is where both sides' ids still agree, so TRL's prompt + completion concatenation rebuilds
    exactly the sequences whose masks were computed. A prompt longer than ``max_prompt_length`` keeps its
    end, as the Encoder does for string completions (the latest turns sit right before the answer)."""
    enc = encode_preference(row, tokenizer)
    chosen, rejected = enc["chosen_input_ids"], enc["rejected_input_ids"]
    n = 0
    while n < min(enc["prompt_length"], len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    prompt = chosen[:n]
    if max_prompt_length is not None and len(prompt) > max_prompt_length:
        prompt = prompt[-max_prompt_length:]
    return {"prompt_ids": prompt, "chosen_ids": chosen[n:], "rejected_ids": rejected[n:],
            "chosen_mask": enc["chosen_loss_mask"][n:], "rejected_mask": enc["rejected_loss_mask"][n:]}
