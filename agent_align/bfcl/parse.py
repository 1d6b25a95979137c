"""Decoding a model's answer into function calls: ``[(name, args), ...]`` or a failure reason.

    parse_calls('[math.factorial(number=5)]')            # ([("math.factorial", {"number": 5})], "")
    parse_calls('{"tool": "f", "parameters": {"a": 1}}')  # ([("f", {"a": 1})], "")

Accepted syntaxes, tried in this order:
- JSON: our call ``{"tool", "parameters"}``, ``{"name", "arguments"|"parameters"}``, OpenAI's
  ``{"function": {"name", "arguments": "<json string>"}}``, a list of any of these, or an object
  with ``tool_calls`` (an OpenAI assistant message);
- BFCL's Python call syntax ``[func(a=1, b="x"), other.func(c=[1, 2])]`` (brackets optional, or one call a line),
  parsed with ``ast`` and never evaluated. As in BFCL's decoder, a bare name or subscript used as a
  value (``data=my_data``) becomes its source text, a variable reference the answers list as a string.
"""

from __future__ import annotations

import ast
import json
import math
import re
from typing import Any

from agent_align.jsonl import MAX_DEPTH, loads_strict, too_deep
from agent_align.validation.extract import MAX_OUTPUT_CHARS, extract_text

Call = tuple[str, dict]
_LOOKS_LIKE_JSON = re.compile(r"\s*\[?\s*\{")


class DecodeError(Exception):
    pass


def _arguments(value: Any, where: str) -> dict:
    if isinstance(value, str):  # OpenAI sends arguments as a JSON string
        try:
            value = loads_strict(value)
        except ValueError as exc:
            raise DecodeError(f"{where}: arguments are not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise DecodeError(f"{where}: arguments are {type(value).__name__}, not an object")
    return value


def _json_call(obj: Any, where: str) -> Call:
    if not isinstance(obj, dict):
        raise DecodeError(f"{where} is {type(obj).__name__}, not a call object")
    if isinstance(obj.get("function"), dict):  # OpenAI tool_calls entry
        obj = obj["function"]
    if "tool" in obj:
        name, args = obj["tool"], obj.get("parameters", {})
    elif "name" in obj:
        name, args = obj["name"], obj.get("arguments", obj.get("parameters", {}))
    else:
        raise DecodeError(f"{where} has no 'tool' or 'name' key (keys: {sorted(obj)})")
    if not isinstance(name, str):
        raise DecodeError(f"{where}: function name {name!r} is not a string")
    return name, _arguments(args, where)


def calls_from_json(obj: Any) -> list[Call]:
    if isinstance(obj, dict) and "tool_calls" in obj:
        obj = obj["tool_calls"]
    if isinstance(obj, list):
        if not obj:
            raise DecodeError("empty list of calls")
        return [_json_call(c, f"call #{i}") for i, c in enumerate(obj)]
    return [_json_call(obj, "the answer")]


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    raise DecodeError(f"call target {ast.unparse(node)!r} is not a (dotted) function name")


def _value(node: ast.AST) -> Any:
    """A JSON value from an expression node: literals via ast.literal_eval, containers recursively."""
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_value(e) for e in node.elts]
    if isinstance(node, ast.Dict):
        out = {}
        for k, v in zip(node.keys, node.values):
            key = _value(k) if k is not None else None
            if not isinstance(key, str):
                raise DecodeError(f"dict key {ast.unparse(k) if k else '**'} is not a string")
            out[key] = _value(v)
        return out
    if isinstance(node, (ast.Name, ast.Subscript, ast.Attribute)):
        return ast.unparse(node)  # a variable reference; BFCL's answers spell these as strings
    if isinstance(node, (ast.Constant, ast.UnaryOp)):
        try:
            value = ast.literal_eval(node)
        except ValueError:
            raise DecodeError(f"{ast.unparse(node)!r} is not a literal") from None
        if value is None or isinstance(value, (bool, int, float, str)):
            if isinstance(value, float) and not math.isfinite(value):
                raise DecodeError(f"{ast.unparse(node)} is not a JSON number")
            return value
        raise DecodeError(f"{ast.unparse(node)!r} is a {type(value).__name__}, not a JSON value")
    raise DecodeError(f"{ast.unparse(node)!r} is not a literal (expressions are never evaluated)")


def _python_call(node: ast.AST) -> Call:
    if not isinstance(node, ast.Call):
        raise DecodeError(f"{ast.unparse(node)!r} is not a function call")
    name = _dotted(node.func)
    if node.args:
        raise DecodeError(f"{name}: positional arguments; BFCL calls name every argument (a=1)")
    args = {}
    for kw in node.keywords:
        if kw.arg is None:
            raise DecodeError(f"{name}: **kwargs unpacking is not a call argument")
        args[kw.arg] = _value(kw.value)
    return name, args


def calls_from_python(text: str) -> list[Call]:
    """``[f(a=1), g(b=2)]``, ``f(a=1)``, or one call per line."""
    try:
        tree = ast.parse(text.strip())
    except SyntaxError as exc:
        raise DecodeError(f"neither JSON nor Python call syntax ({exc.msg}, line {exc.lineno})") from None
    if not tree.body:
        raise DecodeError("empty answer")
    if not all(isinstance(s, ast.Expr) for s in tree.body):
        raise DecodeError("expected only function calls, found other Python statements")
    nodes = [s.value for s in tree.body]
    if len(nodes) == 1 and isinstance(nodes[0], (ast.List, ast.Tuple)):
        nodes = nodes[0].elts
    if not nodes:
        raise DecodeError("empty list of calls")
    return [_python_call(n) for n in nodes]


def parse_calls(output: Any, fmt: str = "json") -> tuple[list[Call] | None, str]:
    """(calls, "") or (None, why). ``output`` is the model's text, or an already-decoded JSON value."""
    try:
        if not isinstance(output, str):
            return calls_from_json(output), ""
        if len(output) > MAX_OUTPUT_CHARS:
            return None, f"answer is {len(output)} characters; at most {MAX_OUTPUT_CHARS} are parsed"
        text, why = extract_text(output, fmt)
        if text is None:
            return None, why
        if too_deep(text):
            return None, f"answer nested deeper than {MAX_DEPTH} levels"
        try:
            obj = loads_strict(text)
        except ValueError as json_exc:
            try:
                return calls_from_python(text), ""
            except DecodeError:
                if _LOOKS_LIKE_JSON.match(text):  # meant as JSON: its error says more than Python's
                    return None, f"invalid JSON ({json_exc})"
                raise
        return calls_from_json(obj), ""
    except DecodeError as exc:
        return None, str(exc)
    except (RecursionError, MemoryError):  # CPython's parser gives up on deep nesting with either
        return None, "answer nested too deeply"


def as_json(calls: list[Call]) -> str:
    """Calls as a JSON list in our format, for prediction files."""
    return json.dumps([{"tool": n, "parameters": a} for n, a in calls], ensure_ascii=False)
