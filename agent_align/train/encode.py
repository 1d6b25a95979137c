"""Turning rows into token ids once, for SFT, DPO and evaluation alike.

The prompt is rendered by the chat template with ``add_generation_prompt=True``; the completion is
whatever the template adds after it for the assistant turn (content + end-of-turn), tokenised
separately so no BPE merge crosses the boundary and the loss covers exactly the assistant tokens.
"""

from __future__ import annotations

from typing import Iterable

from agent_align.data.formats import SYSTEM_PROMPTS


def system_prompt(cfg) -> str:
    return cfg.data.system_prompt or SYSTEM_PROMPTS[cfg.data.format]


def chat_of(row: dict, system: str) -> dict:
    """The conversation a row's prompt stands for: system + user request, tools offered."""
    if isinstance(row.get("prompt"), list):  # conversational rows (agent trajectories)
        return {"messages": row["prompt"], "tools": row.get("tools")}
    msgs = [{"role": "system", "content": system}, {"role": "user", "content": row["prompt"]}]
    return {"messages": msgs, "tools": row.get("tools")}


class Encoder:
    """Caches prompt token ids by rendered text, so each prompt is tokenised once per run."""

    def __init__(self, tokenizer, max_length: int, max_prompt_length: int):
        self.tok = tokenizer
        self.max_length = max_length
        self.max_prompt_length = max_prompt_length
        self._prompts: dict[str, list[int]] = {}
        self._chat_prompt: dict[int, str] = {}

    def prompt_text(self, chat: dict) -> str:
        return self.tok.apply_chat_template(chat["messages"], tools=chat.get("tools") or None,
                                            add_generation_prompt=True, tokenize=False)

    def prompt_ids(self, chat: dict) -> list[int]:
        text = self.prompt_text(chat)
        ids = self._prompts.get(text)
        if ids is None:
            ids = self.tok(text, add_special_tokens=False)["input_ids"]
            if len(ids) > self.max_prompt_length:  # keep the end: the request sits right before the answer
                ids = ids[-self.max_prompt_length:]
            self._prompts[text] = ids
        return ids

    def completion_ids(self, chat: dict, completion: str | list[dict]) -> list[int]:
        prompt = self.prompt_text(chat)
        turns = completion if isinstance(completion, list) else [{"role": "assistant", "content": completion}]
        full = self.tok.apply_chat_template(chat["messages"] + turns, tools=chat.get("tools") or None, tokenize=False)
        if not full.startswith(prompt):
            raise ValueError("chat template renders the prompt differently with and without the answer; "
                             "use model.chat_template=builtin")
        ids = self.tok(full[len(prompt):], add_special_tokens=False)["input_ids"]
        room = max(1, self.max_length - len(self.prompt_ids(chat)))
        return ids[:room]

    def sft_example(self, chat: dict, completion: str) -> dict:
        p = self.prompt_ids(chat)
        c = self.completion_ids(chat, completion)
        return {"input_ids": p + c, "labels": [-100] * len(p) + c}

    def dpo_example(self, chat: dict, chosen: str, rejected: str) -> dict:
        return {"prompt_ids": self.prompt_ids(chat), "chosen_ids": self.completion_ids(chat, chosen),
                "rejected_ids": self.completion_ids(chat, rejected)}


def unique_prompts(rows: Iterable[dict]) -> list[dict]:
    """One row per distinct prompt (several negatives of one prompt share its chosen)."""
    seen, out = set(), []
    for r in rows:
        key = (str(r["prompt"]), str(r["chosen"]))
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out
