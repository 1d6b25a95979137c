"""Negative-aware tuning (NAT) rows for the agentic loop (``stage=agent_pipeline data.negatives=nat``).

The expert's successful trajectories are imitated after the task tagged ``nat.positive_tag``; each
mistake the SFT policy made in the informed run (the rejected turn of a step pair) is imitated after
the same history with the task tagged ``nat.negative_tag``, earlier turns as context only. The policy
is then prompted with the positive tag (``agent.prompt_tag``), so it learns what a failed call looks
like without being asked for one. Rows are conversations ``{"messages", "tools"}`` for the sft stage.
"""

from __future__ import annotations

from agent_align.steps.nat import tag_prompt


def _context(messages: list[dict]) -> list[dict]:
    """The history as context: assistant turns are not trained."""
    return [dict(m, train=False) if m["role"] == "assistant" else dict(m) for m in messages]


def nat_conversations(trajectories: list[dict], step_pairs: list[dict], nat_cfg) -> list[dict]:
    """Positive rows from ``trajectories`` (``{"messages", "tools"}``), negative rows from the rejected
    side of ``step_pairs`` (``{"prompt", "rejected", "tools"}``, message lists)."""
    pos, neg, place = nat_cfg.positive_tag, nat_cfg.negative_tag, nat_cfg.placement
    rows = [{"messages": tag_prompt(r["messages"], pos, place), "tools": r["tools"], "nat_tag": "positive"}
            for r in trajectories]
    for p in step_pairs:
        turns = [dict(m, train=True) for m in p["rejected"]]
        rows.append({"messages": tag_prompt(_context(p["prompt"]), neg, place) + turns, "tools": p["tools"],
                     "nat_tag": "negative"})
    return rows
