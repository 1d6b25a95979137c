"""Procedurally generated tools, their argument values and their requests.

Why: a from-scratch model trained on a dozen fixed tools memorises their names and argument sets
and scores 0% on tools it never saw. Thousands of random tools (names partly made of pseudo-words
that no real tool has, random parameter sets and types) make memorising useless: the only way to
call them is to read the schema offered in the prompt and copy the tool name, the parameter names
and the enum values from it, which is what transfers to unseen tools.

Requests come in three styles, so the model learns every cue a real request may give:
``named`` ("... with city 'Paris', nights 3"), ``bare`` (values only, "... for 'Paris' and 3": the
model must go by the schema's order and types) and ``mixed``; values appear in the schema's order
or shuffled. Values of parameters whose names have a pool (a city, a person, a title...) come from
that pool, others are random words and pseudo-words, so the model can't guess them without copying.
"""

from __future__ import annotations

import random
import string
from typing import Any

from agent_align.tools import values as V
from agent_align.tools.library import Tool

VERBS = ["get", "list", "create", "update", "delete", "fetch", "search", "send", "book", "cancel", "schedule",
         "archive", "assign", "approve", "export", "import", "sync", "track", "rate", "compare", "check", "reset",
         "find", "add", "remove", "set", "start", "stop", "open", "close", "move", "copy", "merge", "split", "scan",
         "post", "read", "write", "order", "plan", "log", "record", "convert", "publish", "notify", "lookup",
         "estimate", "reserve", "submit", "review", "share", "tag", "rename", "upload", "download", "verify"]
NOUNS = ["invoice", "ticket", "shipment", "contract", "meeting", "report", "playlist", "recipe", "vehicle", "patient",
         "course", "warehouse", "budget", "coupon", "device", "sensor", "album", "lead", "campaign", "repository",
         "incident", "policy", "room", "parcel", "subscription", "review", "account", "badge", "survey", "route",
         "payment", "asset", "shift", "claim", "license", "backup", "alert", "station", "user", "file", "folder",
         "photo", "song", "movie", "book", "train", "car", "bike", "table", "restaurant", "doctor", "appointment",
         "event", "task", "note", "message", "contact", "profile", "team", "project", "job", "candidate", "quote",
         "rate", "map", "place", "address", "package", "product", "item", "cart", "discount", "refund", "balance",
         "transfer", "loan", "bill", "salary", "holiday", "leave", "visa", "passport", "booking", "seat", "menu",
         "dish", "game", "score", "match", "player", "league", "lesson", "exam", "grade", "library", "garden",
         "plant", "pet", "vaccine", "server", "cluster", "build", "release", "branch", "issue", "comment", "post",
         "channel", "invite", "order", "customer", "supplier", "tax", "receipt", "wallet", "card", "trip", "tour"]
CONSONANTS, VOWELS = "bcdfghjklmnprstvwz", "aeiou"
# parameter names by kind: names that suggest their type (and, via values.POOLS, their values)
PARAM_NAMES = {
    "string": ["name", "title", "query", "city", "message", "note", "label", "owner", "topic", "comment", "location",
               "description", "reason", "keyword", "category", "assignee", "text", "subject", "address", "author",
               "destination", "origin", "source", "content", "summary", "nickname", "team", "office"],
    "integer": ["count", "limit", "page", "quantity", "year", "days", "level", "rank", "size", "retries", "minutes",
                "offset", "seats", "age", "nights", "guests", "hours", "floor", "width", "height", "number", "max_items"],
    "number": ["amount", "price", "weight", "ratio", "threshold", "temperature", "score", "distance", "budget",
               "total", "rate", "volume", "percent", "latitude", "longitude"],
    "boolean": ["verbose", "include_archived", "notify", "dry_run", "active_only", "public", "urgent", "recursive",
                "formal", "confirm", "overwrite", "enabled"],
    "enum": ["priority", "status", "mode", "sort_order", "visibility", "format", "region", "tier", "color", "level",
             "language", "unit", "kind", "size", "plan", "channel"],
    "pattern": ["date", "start_date", "end_date", "code", "currency", "due_date", "time", "ticket_id", "symbol",
                "reference", "check_in", "deadline"],
    "array": ["tags", "recipients", "ids", "labels", "members", "keywords", "items", "guests_list", "topics"],
}
KINDS = ["string", "string", "integer", "integer", "number", "boolean", "enum", "enum", "pattern", "array"]
PATTERNS = {"date": r"^\d{4}-\d{2}-\d{2}$", "time": r"^\d{2}:\d{2}$", "code": r"^[A-Z]{3}$",
            "ref": r"^[A-Z]{2,4}-\d{4,6}$", "symbol": r"^[A-Z]{1,5}$"}


def pseudo_word(rng: random.Random, lo: int = 2, hi: int = 3) -> str:
    """A pronounceable non-word ('vomira', 'kelbun'): a name no real tool has, so it must be copied."""
    return "".join(rng.choice(CONSONANTS) + rng.choice(VOWELS) + (rng.choice("nrlsx") if rng.random() < 0.3 else "")
                   for _ in range(rng.randint(lo, hi)))


def _name_part(rng: random.Random) -> str:
    return pseudo_word(rng) if rng.random() < 0.35 else rng.choice(NOUNS)


def tool_name(rng: random.Random) -> str:
    if rng.random() < 0.15:
        return f"{_name_part(rng)}_{_name_part(rng)}"
    return "_".join([rng.choice(VERBS)] + [_name_part(rng) for _ in range(rng.choice([1, 1, 2]))])


def param_name(kind: str, rng: random.Random) -> str:
    r = rng.random()
    if r < 0.5:
        return rng.choice(PARAM_NAMES[kind])
    if r < 0.75:
        return f"{rng.choice(NOUNS)}_{rng.choice(PARAM_NAMES[kind])}"
    return pseudo_word(rng, 1, 3)


def _pattern_kind(name: str, rng: random.Random) -> str:
    for key in ("date", "time", "code", "symbol"):
        if key in name:
            return key
    if "currency" in name:
        return "code"
    return rng.choice(["date", "ref", "code"])


def param_schema(kind: str, name: str, rng: random.Random) -> dict:
    if kind == "enum":
        vals: list[str] = []
        for _ in range(rng.randint(2, 5) * 3):
            v = rng.choice(NOUNS) if rng.random() < 0.4 else pseudo_word(rng, 1, 2)
            if v not in vals:
                vals.append(v)
            if len(vals) >= 2 and rng.random() < 0.3:
                break
        return {"type": "string", "enum": vals[:5]}
    if kind == "pattern":
        return {"type": "string", "pattern": PATTERNS[_pattern_kind(name, rng)]}
    if kind == "array":
        return {"type": "array", "items": {"type": "integer"} if rng.random() < 0.3 else {"type": "string"}, "minItems": 1}
    schema: dict = {"type": kind}
    if kind == "integer" and rng.random() < 0.6:
        lo = rng.choice([0, 1, 1, 5, 10, 100])
        schema.update(minimum=lo, maximum=lo + rng.choice([9, 20, 50, 100, 1000, 10000]))
    if kind == "number" and rng.random() < 0.5:
        schema["minimum"] = 0
    return schema


def procedural_tools(n: int, seed: int, reserved: set[str] = frozenset()) -> list[Tool]:
    """``n`` random tools, deterministic for ``seed``; names in ``reserved`` are never produced."""
    rng = random.Random(f"procedural-{seed}")
    tools: list[Tool] = []
    names = set(reserved)
    while len(tools) < n:
        name = tool_name(rng)
        if name in names:
            continue
        names.add(name)
        props: dict = {}
        want = rng.randint(1, 5)
        while len(props) < want:
            kind = rng.choice(KINDS)
            pname = param_name(kind, rng)
            if pname not in props:
                props[pname] = param_schema(kind, pname, rng)
        keys = list(props)
        required = keys[:rng.randint(1, len(keys))]
        tools.append(Tool(name=name, description=f"{V.words(name).capitalize()}.", origin="procedural",
                          parameters={"type": "object", "properties": props, "required": required}))
    return tools


def free_text(name: str, rng: random.Random) -> str:
    pool = V.pool_for(name)
    if pool and rng.random() < 0.6:
        return rng.choice(pool)
    r = rng.random()
    if r < 0.3:
        return " ".join(pseudo_word(rng).capitalize() for _ in range(rng.randint(1, 2)))
    if r < 0.7:
        text = " ".join(rng.choice(NOUNS) if rng.random() < 0.6 else pseudo_word(rng) for _ in range(rng.randint(1, 4)))
        return text.capitalize() if rng.random() < 0.5 else text
    return rng.choice(V.TITLES + V.SENTENCES + V.QUERIES + V.CITIES + V.NAMES)


def sample_value(schema: dict, name: str, rng: random.Random) -> Any:
    kind = schema.get("type")
    if kind == "string" and "enum" not in schema and "pattern" not in schema:
        return free_text(name, rng)
    if kind == "array" and schema.get("items", {}).get("type") == "string":
        return [free_text(name.rstrip("s"), rng) for _ in range(rng.randint(1, 3))]
    if kind == "string" and schema.get("pattern") == PATTERNS["ref"]:
        letters = "".join(rng.choice(string.ascii_uppercase) for _ in range(rng.randint(2, 4)))
        return f"{letters}-{rng.randint(1000, 999999)}"
    if kind == "integer" and "minimum" not in schema:
        return rng.choice([rng.randint(0, 20), rng.randint(0, 999), rng.randint(0, 99999)])
    return V.sample_value(schema, rng, name)


def sample_args(tool: Tool, rng: random.Random, optional_p: float) -> dict:
    required = set(tool.required)
    return {k: sample_value(s, k, rng) for k, s in tool.properties.items() if k in required or rng.random() < optional_p}


OPENINGS = ["Please {t}", "I need to {t}", "Can you {t}", "{T}", "Go ahead and {t}", "Could you {t}", "I want to {t}",
            "Help me {t}", "{T} now", "Let's {t}", "{T} please", "Would you {t}"]
NO_NAME_OPENINGS = ["Please do this", "I need this done", "Handle this", "Take care of this"]
PREPOSITIONS = ["for", "in", "on", "at", "with", "from", "to", "about", "of", "by", "as", "using"]
NAMED = ["{k} {v}", "{k} set to {v}", "{k} = {v}", "{k}: {v}", "{k} of {v}", "{v} as {k}", "{v} for {k}", "the {k} {v}"]


def render_request(tool: Tool, args: dict, rng: random.Random) -> str:
    """A request for ``args`` in one of the three styles (module docstring)."""
    props = tool.properties
    t = V.words(tool.name)
    head = rng.choice(NO_NAME_OPENINGS) if rng.random() < 0.1 else rng.choice(OPENINGS).format(t=t, T=t.capitalize())
    style = rng.choice(["named", "mixed", "bare"])
    keys = list(args)
    if rng.random() < (0.25 if style == "bare" else 0.5):
        rng.shuffle(keys)
    parts = []
    for k in keys:
        v = V.render_value(args[k], props.get(k, {}))
        # a bare true/false says nothing about which flag it sets: booleans are always named
        if style == "named" or (style == "mixed" and rng.random() < 0.5) or isinstance(args[k], bool):
            parts.append(rng.choice(NAMED).format(k=V.words(k), v=v))
        else:
            parts.append(f"{rng.choice(PREPOSITIONS)} {v}" if rng.random() < 0.6 else v)
    end = rng.choice([".", ".", "?", ""])
    if not parts:
        return head + end
    sep = rng.choice([", ", " ", " and "]) if style == "bare" else rng.choice([", ", ", ", " and "])
    glue = rng.choice([" ", ": "]) if style == "bare" else rng.choice([" ", ": ", " with ", ", "])
    return head + glue + sep.join(parts) + end


def renamed(tool: Tool, rng: random.Random) -> tuple[Tool, dict[str, str]]:
    """A copy of ``tool`` under new names (the tool's and some parameters'), and old -> new parameter names.

    Why: the built-in tools have natural requests ("Book a hotel in 'Paris'...") but fixed names the
    model memorises; procedural tools have fresh names but template-like requests. A held-out tool
    has both a natural request and names never seen. Training on built-in requests whose schema was
    renamed is exactly that situation: the request is natural, and the names must be read and copied.
    """
    parts = tool.name.split("_")
    new_parts = [(_name_part(rng) if rng.random() < 0.5 else p) for p in parts]
    if new_parts == parts:
        new_parts[rng.randrange(len(parts))] = pseudo_word(rng)
    mapping: dict[str, str] = {}
    taken: set[str] = set()
    for k in tool.properties:
        r = rng.random()
        new = k if r < 0.4 else (f"{rng.choice(NOUNS)}_{k}" if r < 0.6 else pseudo_word(rng, 1, 3))
        while new in taken:
            new = pseudo_word(rng, 1, 3)
        taken.add(new)
        mapping[k] = new
    params = dict(tool.parameters)
    params["properties"] = {mapping[k]: v for k, v in tool.properties.items()}
    params["required"] = [mapping[k] for k in tool.required]
    return Tool(name="_".join(new_parts), description=tool.description, parameters=params, origin="renamed"), mapping
