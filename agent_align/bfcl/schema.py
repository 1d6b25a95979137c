"""BFCL function definitions -> JSON Schema (2020-12) and OpenAI tool definitions.

    from agent_align.bfcl.schema import bfcl_function_to_openai
    bfcl_function_to_openai({"name": "f", "parameters": {"type": "dict", "properties": {...}}})

BFCL writes Python type names: dict -> object, float -> number, tuple -> array, any -> no type
constraint. Keys that are not JSON Schema keywords (BFCL's ``"optional": true``) are dropped, so the
result validates with any JSON Schema implementation and renders in any chat template.
"""

from __future__ import annotations

from typing import Any

from agent_align.errors import UserError

# BFCL type name -> JSON Schema type name; None means "any value" (the key is dropped).
TYPE_MAP: dict[str, str | None] = {
    "dict": "object", "object": "object", "float": "number", "number": "number", "integer": "integer",
    "string": "string", "boolean": "boolean", "array": "array", "tuple": "array", "any": None, "null": "null",
}
# JSON Schema 2020-12 keywords that tool schemas use; anything else is a BFCL-only annotation and dropped.
KEYWORDS = {
    "type", "properties", "required", "items", "additionalProperties", "enum", "const", "description", "title",
    "default", "examples", "format", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
    "minLength", "maxLength", "pattern", "minItems", "maxItems", "uniqueItems", "minProperties", "maxProperties",
    "anyOf", "oneOf", "allOf", "not", "prefixItems", "$comment", "deprecated",
}
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")


def _json_type(bfcl_type: Any, where: str) -> str | list[str] | None:
    names = bfcl_type if isinstance(bfcl_type, list) else [bfcl_type]
    out = []
    for name in names:
        if not isinstance(name, str) or name not in TYPE_MAP:
            raise UserError(f"BFCL parameters: unknown type {name!r} at {where} (valid: {', '.join(TYPE_MAP)}); "
                            "only Python-language BFCL categories are supported")
        if TYPE_MAP[name] is None:
            return None  # "any" anywhere in a union means no constraint
        out.append(TYPE_MAP[name])
    return out if isinstance(bfcl_type, list) else out[0]


def to_json_schema(schema: Any, where: str = "parameters") -> Any:
    """Convert one BFCL (sub)schema, recursively through properties, items and combinators."""
    if isinstance(schema, bool):
        return schema
    if not isinstance(schema, dict):
        raise UserError(f"BFCL parameters: expected an object at {where}, got {type(schema).__name__}")
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key not in KEYWORDS:
            continue
        if key == "type":
            json_type = _json_type(value, where)
            if json_type is not None:
                out["type"] = json_type
        elif key == "properties":
            if not isinstance(value, dict):
                raise UserError(f"BFCL parameters: 'properties' at {where} must be an object")
            out["properties"] = {k: to_json_schema(v, f"{where}.{k}") for k, v in value.items()}
        elif key in ("items", "not") or (key == "additionalProperties" and isinstance(value, dict)):
            out[key] = to_json_schema(value, f"{where}.{key}")
        elif key in _SUBSCHEMA_LISTS:
            out[key] = [to_json_schema(v, f"{where}.{key}[{i}]") for i, v in enumerate(value)]
        else:
            out[key] = value
    return out


def bfcl_parameters_to_json_schema(params: dict) -> dict:
    """A BFCL ``parameters`` object (``"type": "dict"``) as a JSON Schema of type object."""
    out = to_json_schema(params)
    out["type"] = "object"
    out.setdefault("properties", {})
    return out


def bfcl_function_to_openai(fn: dict) -> dict:
    """``{"type": "function", "function": {"name", "description", "parameters"}}`` for chat templates."""
    return {"type": "function", "function": {
        "name": fn["name"], "description": str(fn.get("description", "")),
        "parameters": bfcl_parameters_to_json_schema(fn.get("parameters") or {"type": "dict", "properties": {}})}}
