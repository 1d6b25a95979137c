"""A compiled checker for the JSON Schema subset that tool-call schemas use.

Why hand-written: ``jsonschema`` re-walks the schema dict on every instance (about 27k outputs/s
here), and no maintained library both compiles a schema and reports *every* error with its keyword,
which the category precedence needs. This compiles a schema once into closures (2020-12 semantics:
``true`` is not an integer, ``5.0`` is) and reports each failing keyword. A schema that uses any
keyword outside ``SUPPORTED`` is not compiled: callers fall back to ``jsonschema`` for it, and a
differential test checks both agree on generated calls.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from agent_align.validation.categories import PRECEDENCE, keyword_category

ANNOTATIONS = {"title", "description", "default", "examples", "$comment", "format", "$schema", "$id",
               "deprecated", "readOnly", "writeOnly"}  # format is an annotation by default in 2020-12
SUPPORTED = ANNOTATIONS | {"type", "const", "enum", "properties", "required", "additionalProperties",
                           "items", "minItems", "maxItems", "minimum", "maximum", "exclusiveMinimum",
                           "exclusiveMaximum", "pattern", "minLength", "maxLength", "multipleOf",
                           "minProperties", "maxProperties"}

Errors = list  # of (rank, path tuple, message)
# (keyword, the instance type it applies to, True for a lower bound)
SIZE_KEYWORDS = (("minItems", list, True), ("maxItems", list, False), ("minProperties", dict, True),
                 ("maxProperties", dict, False), ("minLength", str, True), ("maxLength", str, False))
Check = Callable[[Any, tuple, Errors], None]


class Unsupported(Exception):
    pass


def _is_type(value: Any, t: str) -> bool:
    if t == "string":
        return isinstance(value, str)
    if t == "integer":
        if isinstance(value, bool):
            return False
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if t == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if t == "boolean":
        return isinstance(value, bool)
    if t == "object":
        return isinstance(value, dict)
    if t == "array":
        return isinstance(value, list)
    if t == "null":
        return value is None
    raise Unsupported(f"type {t!r}")


def json_equal(a: Any, b: Any) -> bool:
    """JSON equality: booleans are not numbers, 1 == 1.0, containers compare deeply."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def compile_schema(schema: Any) -> Check:
    """Compile ``schema``; raises Unsupported for keywords outside the subset."""
    if schema is True or schema == {}:
        return lambda v, p, e: None
    if schema is False:
        return lambda v, p, e: e.append((PRECEDENCE["other_schema_error"], p, "false schema"))
    if not isinstance(schema, dict):
        raise Unsupported("schema is not an object")
    unknown = set(schema) - SUPPORTED
    if unknown:
        raise Unsupported(", ".join(sorted(unknown)))
    checks: list[Check] = []

    def rank(kw: str, path: tuple) -> int:
        return PRECEDENCE[keyword_category(kw, path)]

    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        for t in types:
            _is_type(None, t)  # validates the type name at compile time

        def c_type(v, p, e, types=tuple(types)):
            if not any(_is_type(v, t) for t in types):
                e.append((rank("type", p), p, f"{v!r} is not of type {'/'.join(types)}"))
        checks.append(c_type)
    if "const" in schema:
        const = schema["const"]

        def c_const(v, p, e):
            if not json_equal(v, const):
                e.append((rank("const", p), p, f"{v!r} should be {const!r}"))
        checks.append(c_const)
    if "enum" in schema:
        enum = list(schema["enum"])

        def c_enum(v, p, e):
            if not any(json_equal(v, x) for x in enum):
                e.append((rank("enum", p), p, f"{v!r} is not one of {enum}"))
        checks.append(c_enum)
    props = {k: compile_schema(s) for k, s in schema.get("properties", {}).items()}
    required = list(schema.get("required", []))
    addl = schema.get("additionalProperties", True)
    addl_check = None if isinstance(addl, bool) else compile_schema(addl)
    if props or required or addl is not True:

        def c_object(v, p, e):
            if not isinstance(v, dict):
                return
            for k in required:
                if k not in v:
                    e.append((rank("required", p), p, f"'{k}' is a required property"))
            for k, item in v.items():
                sub = props.get(k)
                if sub is not None:
                    sub(item, p + (k,), e)
                elif addl is False:
                    e.append((rank("additionalProperties", p), p, f"unexpected property '{k}'"))
                elif addl_check is not None:
                    addl_check(item, p + (k,), e)
        checks.append(c_object)
    if "items" in schema:
        if not isinstance(schema["items"], (dict, bool)):
            raise Unsupported("items as a list")
        item_check = compile_schema(schema["items"])

        def c_items(v, p, e):
            if isinstance(v, list):
                for i, item in enumerate(v):
                    item_check(item, p + (i,), e)
        checks.append(c_items)
    for kw, kind, lower in SIZE_KEYWORDS:  # minItems/maxItems, minProperties/..., minLength/...
        if kw in schema:
            def c_size(v, p, e, b=schema[kw], kind=kind, lower=lower, kw=kw):
                if isinstance(v, kind) and (len(v) < b if lower else len(v) > b):
                    e.append((rank(kw, p), p, f"size {len(v)} violates {kw} {b}"))
            checks.append(c_size)
    for kw, bad in (("minimum", lambda v, b: v < b), ("maximum", lambda v, b: v > b),
                    ("exclusiveMinimum", lambda v, b: v <= b), ("exclusiveMaximum", lambda v, b: v >= b)):
        if kw in schema:
            def c_bound(v, p, e, b=schema[kw], bad=bad, kw=kw):
                if _num(v) and bad(v, b):
                    e.append((rank(kw, p), p, f"{v!r} violates {kw} {b}"))
            checks.append(c_bound)
    if "multipleOf" in schema:
        def c_mult(v, p, e, m=schema["multipleOf"]):
            if not _num(v):
                return
            if isinstance(m, float):  # same arithmetic as jsonschema, so both agree on floats
                q = v / m
                try:
                    failed = int(q) != q
                except OverflowError:
                    failed = True
            else:
                failed = bool(v % m)
            if failed:
                e.append((rank("multipleOf", p), p, f"{v!r} is not a multiple of {m}"))
        checks.append(c_mult)
    if "pattern" in schema:
        rx = re.compile(schema["pattern"])

        def c_pattern(v, p, e):
            if isinstance(v, str) and not rx.search(v):
                e.append((rank("pattern", p), p, f"{v!r} does not match {rx.pattern!r}"))
        checks.append(c_pattern)

    if len(checks) == 1:
        return checks[0]

    def c_all(v, p, e):
        for c in checks:
            c(v, p, e)
    return c_all
