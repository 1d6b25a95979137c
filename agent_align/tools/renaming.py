"""Realistic renaming of a tool: the same function under names an API designer could have chosen.

    send_email(to, subject, body)  ->  dispatchMail(recipient, title, body)  or  post_message(to, heading, text)

Why: a model fine-tuned on a dozen tools learns "a weather request -> get_weather" and, on a tool it
never saw, writes a name it knows instead of the one offered (measured on SmolLM2: held-out failures
are mostly ``wrong_tool``). Training on requests whose tool carries a synonym name makes the name
something to *read from the offered list*, while the request stays natural and the new name still
fits it: unlike pseudo-words (``data.rename_style=pseudo``), which a pretrained model cannot relate to
the request. Synonyms cover the parts of the built-in training tools' names and parameters; a part
with none is kept. Naming style varies as real APIs do (snake_case, camelCase).
"""

from __future__ import annotations

import random

from agent_align.tools.library import Tool

# name part -> alternatives (the part itself stays possible too)
SYNONYMS: dict[str, list[str]] = {
    # verbs
    "get": ["fetch", "lookup", "retrieve", "query", "read", "check"],
    "create": ["add", "make", "new", "insert", "register"],
    "search": ["find", "lookup", "query", "browse", "list"],
    "send": ["dispatch", "post", "deliver", "submit"],
    "set": ["schedule", "add", "create", "configure"],
    "update": ["edit", "modify", "change", "patch"],
    "convert": ["exchange", "transform"],
    "retrieve": ["fetch", "get", "load", "find"],
    # nouns
    "calculator": ["calc", "compute", "evaluate_expression", "math_eval", "arithmetic"],
    "web": ["internet", "online", "google"],
    "users": ["members", "accounts", "people", "contacts", "employees"],
    "user": ["member", "account", "person", "contact"],
    "email": ["mail", "message", "e_mail"],
    "calendar": ["schedule", "agenda"],
    "event": ["meeting", "appointment", "entry"],
    "task": ["todo", "ticket", "item", "job"],
    "flights": ["flight", "airfare", "air_tickets"],
    "weather": ["forecast", "conditions", "climate"],
    "currency": ["money", "fx", "exchange_rate"],
    "documents": ["docs", "files", "articles", "passages"],
    "order": ["purchase", "shop_order"],
    "status": ["state", "tracking", "progress"],
    "reminder": ["alarm", "alert", "notification"],
    "profile": ["account", "details", "settings"],
    # parameters
    "city": ["location", "place", "town", "city_name"],
    "location": ["place", "city", "where"],
    "query": ["q", "search_query", "terms", "keywords"],
    "title": ["name", "subject", "heading", "summary"],
    "subject": ["title", "topic", "heading"],
    "body": ["content", "text", "message"],
    "message": ["text", "note", "content"],
    "to": ["recipient", "address", "to_address"],
    "date": ["day", "on_date"],
    "due": ["deadline", "until"],
    "priority": ["importance", "urgency", "level"],
    "tags": ["labels", "keywords"],
    "limit": ["max", "count", "size"],
    "max": ["limit", "top"],
    "results": ["hits", "items"],
    "origin": ["from", "source", "departure"],
    "destination": ["to", "dest", "arrival"],
    "departure": ["outbound", "leave"],
    "passengers": ["travellers", "seats", "people"],
    "cabin": ["seat", "travel"],
    "class": ["class", "tier"],
    "units": ["unit", "scale", "system"],
    "days": ["num_days", "horizon"],
    "amount": ["value", "sum", "quantity"],
    "from": ["source", "base"],
    "expression": ["expr", "formula", "equation"],
    "precision": ["decimals", "digits"],
    "department": ["team", "division", "group"],
    "active": ["enabled", "current"],
    "only": ["only"],
    "attendees": ["participants", "guests", "invitees"],
    "start": ["begin", "from"],
    "time": ["time", "datetime", "at"],
    "duration": ["length", "span"],
    "minutes": ["mins", "minutes"],
    "notes": ["comment", "remarks", "memo"],
    "customer": ["client", "buyer", "account"],
    "id": ["id", "identifier", "number", "ref"],
    "items": ["lines", "products", "entries"],
    "quantity": ["qty", "count", "amount"],
    "sku": ["product_code", "item_code", "article"],
    "shipping": ["delivery", "shipment"],
    "method": ["mode", "option", "speed"],
    "collection": ["index", "corpus", "library"],
    "top": ["first", "max"],
    "k": ["k", "n"],
    "changes": ["fields", "updates", "patch"],
    "display": ["screen", "shown"],
    "name": ["label", "title"],
    "timezone": ["tz", "time_zone"],
    "repeat": ["recurrence", "repeats", "frequency"],
    "safe": ["filter", "strict"],
    "formal": ["polite", "formal_tone"],
}


def _alt(part: str, rng: random.Random, p: float) -> str:
    options = SYNONYMS.get(part)
    return rng.choice(options) if options and rng.random() < p else part


def _style(parts: list[str], camel: bool) -> str:
    words = [w for p in parts for w in p.split("_") if w]
    if not camel:
        return "_".join(words)
    return words[0] + "".join(w[:1].upper() + w[1:] for w in words[1:])


def synonym_name(name: str, rng: random.Random, p: float = 0.7, camel: bool = False) -> str:
    return _style([_alt(part, rng, p) for part in name.split("_")], camel)


def renamed(tool: Tool, rng: random.Random) -> tuple[Tool, dict[str, str]]:
    """A copy of ``tool`` under synonym names (tool and parameters), and old -> new parameter names.
    The tool's name always changes; each parameter keeps its name or gets a synonym, never a clash."""
    camel = rng.random() < 0.3
    name = tool.name
    for _ in range(8):
        name = synonym_name(tool.name, rng, camel=camel)
        if name.replace("_", "").lower() != tool.name.replace("_", "").lower():
            break
    mapping: dict[str, str] = {}
    for k in tool.properties:  # a new name never equals another parameter's original, so k is a safe fallback
        new = synonym_name(k, rng, p=0.5, camel=camel)
        clash = new in mapping.values() or (new != k and new in tool.properties)
        mapping[k] = k if clash else new
    params = dict(tool.parameters)
    params["properties"] = {mapping[k]: v for k, v in tool.properties.items()}
    params["required"] = [mapping[k] for k in tool.required]
    return Tool(name=name, description=tool.description, parameters=params, origin="renamed"), mapping
