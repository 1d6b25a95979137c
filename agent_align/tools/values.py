"""Sampling argument values that satisfy a parameter schema, and writing them into requests.

Pools are keyed by words in the parameter name so that "city" gets cities and "subject" gets
subject lines; anything else gets a generic phrase. Patterns are satisfied by trying the known
value generators below; a pattern none of them satisfies raises ``NoSampler`` so the generator can
skip that tool and say why.
"""

from __future__ import annotations

import random
import re
from typing import Any, Callable

CITIES = ["Berlin", "Paris", "Tokyo", "Nairobi", "Lima", "Toronto", "Oslo", "Madrid", "Seoul", "Austin",
          "Lisbon", "Dublin", "Cairo", "Sydney", "Denver", "Prague", "Zurich", "Chennai", "Bogota", "Hanoi"]
NAMES = ["Alice Moreau", "Bob Tanaka", "Chen Wei", "Dana Okafor", "Eli Novak", "Farah Haddad", "Gus Ribeiro",
         "Hana Kim", "Ivan Petrov", "Jo Lindqvist"]
TITLES = ["Review PR", "Quarterly planning", "Fix login bug", "Team sync", "Budget review", "Write release notes",
          "Call the landlord", "Renew passport", "Design review", "Onboarding session", "Update roadmap",
          "Pay electricity bill", "Prepare slides", "Client demo", "Dentist appointment", "Code freeze"]
QUERIES = ["best hiking trails near Denver", "python asyncio tutorial", "leave policy 2025", "remote work rules",
           "electric car tax credit", "how to repot a cactus", "GPU prices this week", "expense approval limits",
           "latest football scores", "vegan lasagna recipe", "parental leave", "travel reimbursement"]
SENTENCES = ["The meeting moved to Friday", "Please send the signed contract", "Lunch is on me today",
             "The build is green again", "Can we talk tomorrow", "Thanks for the quick fix",
             "Good morning everyone", "See you at the airport"]
WORDS = ["alpha", "urgent", "finance", "travel", "q3", "backend", "personal", "home", "design", "ops"]
DOMAINS = ["example.com", "acme.io", "corp.org", "mail.net"]
EXPRESSIONS = ["25 * 40", "(12 + 7) / 3", "1024 - 256 * 2", "3.5 * 4 + 1", "(100 - 15) * 0.2", "81 / 9 + 6",
               "7 * (8 - 3)", "2 + 2 * 2"]
COLLECTIONS = ["company_docs", "hr_policies", "engineering_wiki", "legal_contracts", "product_faq"]
SKUS = ["SKU-1001", "SKU-2040", "SKU-3310", "SKU-4555", "SKU-5120", "SKU-6789"]
TIMEZONES = ["Europe/Berlin", "America/Denver", "Asia/Tokyo", "Africa/Nairobi", "America/Lima"]

POOLS: list[tuple[tuple[str, ...], list[str]]] = [
    (("city", "location", "office"), CITIES),
    (("name", "assignee", "owner", "user", "person"), NAMES),
    (("title", "subject", "event", "task"), TITLES),
    (("query", "search", "topic", "keyword"), QUERIES),
    (("body", "message", "text", "note", "comment", "content"), SENTENCES),
    (("expression", "formula"), EXPRESSIONS),
    (("collection", "index", "corpus"), COLLECTIONS),
    (("sku", "product"), SKUS),
    (("timezone", "zone"), TIMEZONES),
    (("tag", "label", "category"), WORDS),
]


class NoSampler(Exception):
    """No known generator produces strings matching this pattern."""


def _email(rng: random.Random) -> str:
    first = rng.choice(NAMES).split()[0].lower()
    return f"{first}@{rng.choice(DOMAINS)}"


PATTERN_GENERATORS: list[Callable[[random.Random], str]] = [
    lambda r: f"20{r.randint(24, 27)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}",  # date
    lambda r: f"{r.randint(7, 19):02d}:{r.choice(['00', '15', '30', '45'])}",  # time
    lambda r: "".join(r.choice("ABCDEFGHJKLMNPRSTUVWXZ") for _ in range(3)),  # IATA / ISO 4217
    lambda r: "".join(r.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(r.randint(2, 4))),  # ticker
    _email,
    lambda r: f"ORD-{r.randint(0, 999999):06d}",
    lambda r: f"CUST-{r.randint(0, 9999):04d}",
    lambda r: f"{r.randint(0, 99999):05d}",  # zip
    lambda r: f"+1-{r.randint(200, 999)}-{r.randint(100, 999)}-{r.randint(1000, 9999)}",  # phone
    lambda r: f"{r.choice(WORDS)}-{r.randint(1, 999)}",  # slug
]
_PATTERN_CACHE: dict[str, list[int]] = {}


def _pattern_value(pattern: str, rng: random.Random) -> str:
    ok = _PATTERN_CACHE.get(pattern)
    if ok is None:
        rx = re.compile(pattern)
        probe = random.Random(12345)
        ok = [i for i, g in enumerate(PATTERN_GENERATORS) if all(rx.search(g(probe)) for _ in range(8))]
        _PATTERN_CACHE[pattern] = ok
    if not ok:
        raise NoSampler(f"no value generator matches pattern {pattern!r}")
    return PATTERN_GENERATORS[ok[0]](rng)


def pool_for(name: str) -> list[str] | None:
    low = name.lower()
    for keys, pool in POOLS:
        if any(k in low for k in keys):
            return pool
    return None


def sample_value(schema: dict, rng: random.Random, name: str = "") -> Any:
    """A value that satisfies ``schema`` (the subset tool schemas use)."""
    if "enum" in schema:
        return rng.choice(schema["enum"])
    if "const" in schema:
        return schema["const"]
    if "examples" in schema and schema["examples"]:
        return rng.choice(schema["examples"])
    t = schema.get("type", "string")
    if isinstance(t, list):
        t = next((x for x in t if x != "null"), "string")
    if t == "string":
        if "pattern" in schema:
            return _pattern_value(schema["pattern"], rng)
        if schema.get("format") == "email":
            return _email(rng)
        if schema.get("format") == "date":
            return PATTERN_GENERATORS[0](rng)
        pool = pool_for(name) or (TITLES + WORDS)
        return rng.choice(pool)
    if t == "integer":
        lo = int(schema.get("minimum", schema.get("exclusiveMinimum", 0) + ("exclusiveMinimum" in schema)))
        hi = int(schema.get("maximum", schema.get("exclusiveMaximum", lo + 101) - ("exclusiveMaximum" in schema)))
        hi = max(hi, lo)
        return rng.randint(lo, min(hi, lo + 500))
    if t == "number":
        lo = float(schema.get("minimum", schema.get("exclusiveMinimum", 0.0)))
        hi = float(schema.get("maximum", schema.get("exclusiveMaximum", lo + 1000.0)))
        v = round(rng.uniform(lo, hi), 2)
        return max(v, round(lo + 0.01, 2)) if "exclusiveMinimum" in schema or v < lo else v
    if t == "boolean":
        return rng.random() < 0.5
    if t == "array":
        items = schema.get("items", {"type": "string"})
        lo = int(schema.get("minItems", 1))
        hi = int(schema.get("maxItems", lo + 2))
        n = rng.randint(lo, max(lo, min(hi, lo + 2)))
        out: list = []
        for _ in range(n * 3):
            if len(out) == n:
                break
            v = sample_value(items, rng, name.rstrip("s"))
            if v not in out:
                out.append(v)
        return out
    if t == "object":
        return sample_object(schema, rng, optional_p=0.5)
    if t == "null":
        return None
    return rng.choice(WORDS)  # no type constraint ("any")


def sample_object(schema: dict, rng: random.Random, optional_p: float) -> dict:
    props = schema.get("properties", {})
    required = set(schema.get("required", []))
    out = {}
    for k, sub in props.items():
        if k in required or rng.random() < optional_p:
            out[k] = sample_value(sub, rng, k)
    min_props = int(schema.get("minProperties", 0))
    for k, sub in props.items():  # top up to minProperties with the first optional ones
        if len(out) >= min_props:
            break
        if k not in out:
            out[k] = sample_value(sub, rng, k)
    return {k: out[k] for k in props if k in out}


def words(name: str) -> str:
    """'departure_date' -> 'departure date'."""
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name).replace("_", " ").replace(".", " ").replace("-", " ").lower()


def render_value(value: Any, schema: dict) -> str:
    """How a value appears in a request: free text in single quotes, codes/enums/numbers bare."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value) if isinstance(value, float) else str(value)
    if isinstance(value, str):
        if "enum" in schema or "pattern" in schema or schema.get("format"):
            return value
        return f"'{value}'"
    if isinstance(value, list):
        item_schema = schema.get("items", {})
        return ", ".join(render_value(v, item_schema) for v in value) if value else "nothing"
    if isinstance(value, dict):
        props = schema.get("properties", {})
        parts = [f"{words(k)} {render_value(v, props.get(k, {}))}" for k, v in value.items()]
        return "(" + ", ".join(parts) + ")"
    return str(value)
