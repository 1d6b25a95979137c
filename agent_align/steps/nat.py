"""Negative-aware tuning (NAT, Wang et al. 2024): failed outputs join SFT with a negative tag.

    python -m agent_align data.negatives=nat nat.positive_tag="[Correct]" nat.negative_tag="[Incorrect]"

Training: a successful output is imitated after a request tagged ``nat.positive_tag``, a failed one
(a generator negative, a failed sample or trajectory) after the same request tagged
``nat.negative_tag``. Inference always uses the positive tag (``nat_inference_prompt``), so the
model learns what failure looks like without being asked to produce it.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any


def tag_text(text: str, tag: str, placement: str) -> str:
    return f"{tag} {text}" if placement == "prefix" else f"{text} {tag}"


def tag_prompt(prompt: Any, tag: str, placement: str) -> Any:
    """Tag a request: a string, or the first user message of a message list."""
    if isinstance(prompt, str):
        return tag_text(prompt, tag, placement)
    msgs = copy.deepcopy(prompt)
    for m in msgs:
        if m.get("role") == "user":
            m["content"] = tag_text(m.get("content") or "", tag, placement)
            return msgs
    raise ValueError("NAT needs a user message to tag; the prompt has none")


def nat_inference_prompt(prompt: Any, nat_cfg) -> Any:
    """The request as the NAT-trained model must see it at inference: with the positive tag."""
    return tag_prompt(prompt, nat_cfg.positive_tag, nat_cfg.placement)


def _keep(row_id: str, ratio: float) -> bool:
    """Deterministic subsampling of negatives when nat.negatives_per_positive < 1."""
    if ratio >= 1.0:
        return True
    h = int(hashlib.sha256(str(row_id).encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return h < ratio


def nat_sft_rows(rows: list[dict], cfg) -> list[dict]:
    """SFT rows ``{"id", "prompt", "completion", "tools", "nat_tag"}`` (``completion`` is what the
    model imitates). Accepts preference rows (chosen = success, rejected = failure), rows with one
    ``completion`` and a ``success`` flag (samples), and trajectories (``messages`` + ``success``)."""
    nat = cfg.nat
    out, seen_pos = [], set()
    for i, r in enumerate(rows):
        rid = str(r.get("id", i))
        base = {k: v for k, v in r.items() if k in ("tools", "tool", "split")}
        if "messages" in r:  # a trajectory: prompt = turns before the first assistant turn, tagged
            ok = r.get("success", True)
            if not ok and not _keep(rid, nat.negatives_per_positive):
                continue
            msgs = r["messages"]
            first = next((j for j, m in enumerate(msgs) if m.get("role") == "assistant"), len(msgs))
            tag = nat.positive_tag if ok else nat.negative_tag
            out.append({**base, "id": f"{rid}-nat", "prompt": tag_prompt(msgs[:first], tag, nat.placement),
                        "completion": msgs[first:], "nat_tag": "positive" if ok else "negative"})
            continue
        if "completion" in r:
            pairs = [("positive" if r.get("success") else "negative", r["completion"])]
        else:
            key = json.dumps(r["prompt"], sort_keys=True)  # one positive per request, however many negatives
            pairs = [("positive", r["chosen"])] if key not in seen_pos else []
            seen_pos.add(key)
            if r.get("rejected") is not None:
                pairs.append(("negative", r["rejected"]))
        for kind, completion in pairs:
            if kind == "negative" and not _keep(rid, nat.negatives_per_positive):
                continue
            tag = nat.positive_tag if kind == "positive" else nat.negative_tag
            out.append({**base, "id": f"{rid}-{kind[:3]}", "prompt": tag_prompt(r["prompt"], tag, nat.placement),
                        "completion": completion, "nat_tag": kind})
    return out


def with_positive_tag(rows: list[dict], cfg) -> list[dict]:
    """Rows whose prompts carry the positive tag when ``data.negatives=nat`` (what every inference
    and on-policy sampling of a NAT-trained model must see); the rows unchanged otherwise."""
    if cfg.data.negatives != "nat":
        return rows
    return [{**r, "prompt": nat_inference_prompt(r["prompt"], cfg.nat)} for r in rows]
