"""Failure categories, in precedence order: an output that fails several ways gets the first."""

CATEGORIES = (
    "json_error",  # nothing parses, or the value is not an object (``unstructured`` lands here)
    "wrong_tool",  # a ``const`` on the tool name fails; in a parallel answer, a call in place of an expected one
    "missing_call",  # a parallel answer with fewer calls than the request needs (agent_align/validation/parallel.py)
    "extra_call",  # a parallel answer with more calls than it needs; on BFCL irrelevance, any call
    "missing_required",
    "hallucinated_param",  # additionalProperties
    "type_mismatch",
    "enum_violation",
    "other_schema_error",  # pattern, minimum, minItems, ...
)
PRECEDENCE = {c: i for i, c in enumerate(CATEGORIES)}

# JSON Schema keyword -> category. ``const`` is special-cased: on the tool name it is wrong_tool.
KEYWORD_CATEGORY = {
    "required": "missing_required",
    "additionalProperties": "hallucinated_param",
    "unevaluatedProperties": "hallucinated_param",
    "type": "type_mismatch",
    "enum": "enum_violation",
}


def keyword_category(keyword: str, path: tuple) -> str:
    if keyword == "const":
        return "wrong_tool" if path and path[-1] in ("tool", "name") and len(path) == 1 else "other_schema_error"
    return KEYWORD_CATEGORY.get(keyword, "other_schema_error")
