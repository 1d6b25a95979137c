"""Procedurally generated tools: many random names, parameters and types.

Why: a from-scratch model trained on a dozen fixed tools memorises their names and argument
sets and scores 0% on tools it never saw. Training on hundreds of random tools forces it to read
the schema offered in the prompt (copy the tool name, the parameter names, follow the types),
which is what transfers to unseen tools.
"""

from __future__ import annotations

import random

from agent_align.tools.library import Tool

VERBS = ["get", "list", "create", "update", "delete", "fetch", "search", "send", "book", "cancel", "schedule",
         "archive", "assign", "approve", "export", "import", "sync", "track", "rate", "compare", "check", "reset"]
NOUNS = ["invoice", "ticket", "shipment", "contract", "meeting", "report", "playlist", "recipe", "vehicle",
         "patient", "course", "warehouse", "budget", "coupon", "device", "sensor", "album", "lead", "campaign",
         "repository", "incident", "policy", "room", "parcel", "subscription", "review", "account", "badge",
         "survey", "route", "payment", "asset", "shift", "claim", "license", "backup", "alert", "station"]
QUALIFIERS = ["", "", "", "status", "details", "summary", "history", "owner", "notes", "list"]
PARAM_NAMES = {
    "string": ["name", "title", "query", "city", "message", "note", "label", "owner", "topic", "comment",
               "location", "description", "reason", "keyword", "category", "assignee", "text", "subject"],
    "integer": ["count", "limit", "page", "quantity", "year", "days", "level", "rank", "size", "retries",
                "duration_minutes", "max_items", "offset", "seats", "age"],
    "number": ["amount", "price", "weight", "ratio", "threshold", "temperature", "score", "distance_km", "budget"],
    "boolean": ["verbose", "include_archived", "notify", "dry_run", "active_only", "public", "urgent", "recursive"],
    "enum": ["priority", "status", "mode", "sort_order", "visibility", "format", "region", "tier", "color"],
    "pattern": ["date", "start_date", "end_date", "code", "currency", "due_date", "time", "ticket_id"],
    "array": ["tags", "recipients", "ids", "labels", "members", "keywords"],
}
ENUM_VALUES = [["low", "medium", "high"], ["open", "closed", "pending"], ["fast", "safe", "balanced"],
               ["asc", "desc"], ["public", "private", "team"], ["csv", "pdf", "xlsx"], ["eu", "us", "apac"],
               ["free", "pro", "enterprise"], ["red", "green", "blue", "amber"]]
PATTERNS = {"date": r"^\d{4}-\d{2}-\d{2}$", "time": r"^\d{2}:\d{2}$", "code": r"^[A-Z]{3}$",
            "ticket_id": r"^ORD-\d{6}$"}


def _param(kind: str, name: str, rng: random.Random) -> dict:
    if kind == "enum":
        return {"type": "string", "enum": rng.choice(ENUM_VALUES), "description": f"The {name.replace('_', ' ')}"}
    if kind == "pattern":
        key = "date" if "date" in name else ("time" if name == "time" else ("code" if name in ("code", "currency") else "ticket_id"))
        return {"type": "string", "pattern": PATTERNS[key], "description": f"The {name.replace('_', ' ')}"}
    if kind == "array":
        item = {"type": "string"} if name != "ids" else {"type": "integer", "minimum": 1}
        return {"type": "array", "items": item, "minItems": 1, "description": f"List of {name}"}
    schema: dict = {"type": kind, "description": f"The {name.replace('_', ' ')}"}
    if kind == "integer" and rng.random() < 0.7:
        lo = rng.choice([0, 1, 1, 5, 10])
        schema.update(minimum=lo, maximum=lo + rng.choice([9, 20, 50, 100, 1000]))
    if kind == "number" and rng.random() < 0.5:
        schema["minimum"] = 0
    return schema


def procedural_tools(n: int, seed: int, reserved: set[str] = frozenset()) -> list[Tool]:
    """``n`` random tools, deterministic for ``seed``; names in ``reserved`` are never produced."""
    rng = random.Random(f"procedural-{seed}")
    tools: list[Tool] = []
    names = set(reserved)
    kinds = list(PARAM_NAMES)
    while len(tools) < n:
        q = rng.choice(QUALIFIERS)
        name = "_".join(x for x in (rng.choice(VERBS), rng.choice(NOUNS), q) if x)
        if name in names:
            continue
        names.add(name)
        n_params = rng.randint(1, 5)
        props: dict = {}
        while len(props) < n_params:
            kind = rng.choice(kinds)
            pname = rng.choice(PARAM_NAMES[kind])
            if pname not in props:
                props[pname] = _param(kind, pname, rng)
        keys = list(props)
        n_req = rng.randint(1, len(keys))
        required = keys[:n_req]
        desc = f"{name.replace('_', ' ').capitalize()}."
        tools.append(Tool(name=name, description=desc, origin="procedural",
                          parameters={"type": "object", "properties": props, "required": required}))
    return tools
