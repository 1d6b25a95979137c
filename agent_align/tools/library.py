"""The built-in tool library, user tool files, and call schemas.

A tool is declared in OpenAI function-calling format::

    {"type": "function", "function": {"name": ..., "description": ..., "parameters": {JSON Schema}}}

Its *call schema* (what an output must satisfy) closes both levels::

    {"type": "object", "properties": {"tool": {"type": "string", "const": NAME},
                                      "parameters": {...params, "additionalProperties": false}},
     "required": ["tool", "parameters"], "additionalProperties": false}
"""

from __future__ import annotations

import copy
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from agent_align.errors import UserError, file_error
from agent_align.jsonl import read_json_or_yaml
from agent_align.validation.validator import is_valid_schema

HERE = Path(__file__).parent
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")


@dataclass
class Tool:
    name: str
    description: str
    parameters: dict  # JSON Schema of the arguments (type object)
    templates: list[str] = field(default_factory=list)  # request phrasings; empty -> generic ones
    optional_phrases: dict[str, str] = field(default_factory=dict)
    origin: str = "builtin"  # builtin | file | procedural | bfcl
    where: str = ""  # file:line of the definition, for error messages

    def openai(self) -> dict:
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}

    @property
    def required(self) -> list[str]:
        return list(self.parameters.get("required", []))

    @property
    def properties(self) -> dict:
        return self.parameters.get("properties", {})


def call_schema(tool: Tool) -> dict:
    params = copy.deepcopy(tool.parameters)
    params["type"] = "object"
    params.setdefault("properties", {})
    params["additionalProperties"] = False
    return {"type": "object",
            "properties": {"tool": {"type": "string", "const": tool.name}, "parameters": params},
            "required": ["tool", "parameters"], "additionalProperties": False}


def _from_definition(defn: Any, where: str, origin: str) -> Tool:
    """Accepts ``{"type": "function", "function": {...}}`` or the bare ``{"name", ...}`` form."""
    if not isinstance(defn, dict):
        raise UserError(f"{where}: tool definition must be an object, got {type(defn).__name__}")
    fn = defn.get("function", defn) if defn.get("type", "function") == "function" else None
    if not isinstance(fn, dict) or "name" not in fn:
        raise UserError(f"{where}: expected {{\"type\": \"function\", \"function\": {{\"name\", \"description\", "
                        f"\"parameters\"}}}} (OpenAI function-calling format)")
    name = fn["name"]
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise UserError(f"{where}: tool name {name!r} is not a valid identifier (letters, digits, _ . -)")
    params = fn.get("parameters", {"type": "object", "properties": {}})
    if isinstance(params, dict) and params.get("type") == "dict":
        from agent_align.bfcl.schema import bfcl_parameters_to_json_schema  # BFCL's type names

        params = bfcl_parameters_to_json_schema(params)
        origin = "bfcl"
    if not isinstance(params, dict) or params.get("type", "object") != "object":
        raise UserError(f"{where}: tool {name!r}: 'parameters' must be a JSON Schema of type object")
    problem = is_valid_schema(params)
    if problem:
        raise UserError(f"{where}: tool {name!r}: invalid JSON Schema in 'parameters': {problem}")
    missing = [r for r in params.get("required", []) if r not in params.get("properties", {})]
    if missing:
        raise UserError(f"{where}: tool {name!r}: required {missing} not declared in 'properties'")
    return Tool(name=name, description=str(fn.get("description", "")), parameters=params, origin=origin)


_NAME_LINE = re.compile(r"""["']?name["']?[ \t]*:[ \t]*["']?([A-Za-z_][A-Za-z0-9_.-]*)""")


def _name_lines(path: str | Path) -> dict[str, list[int]]:
    """Line numbers of each ``name: X`` in a tools file, in order (JSON, JSONL and YAML alike):
    the parsers keep no positions, and errors must name file:line."""
    from agent_align.jsonl import read_text

    lines: dict[str, list[int]] = {}
    text = read_text(path)
    for m in _NAME_LINE.finditer(text):
        lines.setdefault(m.group(1), []).append(text.count("\n", 0, m.start()) + 1)
    return lines


def load_tools_file(path: str | Path, key: str = "data.tools_file") -> list[Tool]:
    """Tools from a JSON/JSONL/YAML file: a list of definitions, or ``{"tools": [...]}``.
    BFCL function files (JSONL rows with a ``function`` list) work too. A name defined twice is an
    error naming file:line, except in BFCL question files, which repeat functions across questions."""
    data = read_json_or_yaml(path, key)
    if isinstance(data, dict) and "tools" in data:
        data = data["tools"]
    bfcl_rows = (isinstance(data, list) and data
                 and all(isinstance(r, dict) and isinstance(r.get("function"), list) for r in data))
    if bfcl_rows:
        data = [fn for r in data for fn in r["function"]]  # BFCL question rows
    if not isinstance(data, list) or not data:
        raise file_error(path, None, "expected a non-empty list of tool definitions", f"see README, {key}")
    positions = _name_lines(path)
    tools: list[Tool] = []
    seen: dict[str, tuple[Tool, Any]] = {}
    occurrences: Counter = Counter()
    for i, defn in enumerate(data):
        name = _defn_name(defn)
        found = positions.get(name, []) if isinstance(name, str) else []
        nth = occurrences[name] if isinstance(name, str) else 0
        occurrences[name if isinstance(name, str) else None] += 1
        line = found[nth] if nth < len(found) else None
        where = f"{path}:{line}" if line else f"{path}: tool #{i}"
        tool = _from_definition(defn, where, "file")
        tool.where = where
        if tool.name in seen:
            first, _ = seen[tool.name]
            if bfcl_rows:
                continue  # BFCL question files repeat names across questions (even with other descriptions)
            raise UserError(f"{where}: tool '{tool.name}' is defined twice (first at {first.where}); "
                            "tool names must be unique in a tools file")
        seen[tool.name] = (tool, defn)
        tools.append(tool)
    return tools


def _defn_name(defn: Any) -> Any:
    fn = defn.get("function", defn) if isinstance(defn, dict) else None
    return fn.get("name") if isinstance(fn, dict) else None


@lru_cache(maxsize=1)
def _builtin_cached() -> tuple[Tool, ...]:
    defs = json.loads((HERE / "builtin_tools.json").read_text())
    phr = yaml.safe_load((HERE / "phrasings.yaml").read_text())
    tools = []
    for i, d in enumerate(defs):
        t = _from_definition(d, f"builtin_tools.json: tool #{i}", "builtin")
        p = phr.get(t.name, {})
        t.templates = list(p.get("templates", []))
        t.optional_phrases = dict(p.get("optional", {}))
        tools.append(t)
    return tuple(tools)


def load_builtin_tools() -> list[Tool]:
    return [copy.deepcopy(t) for t in _builtin_cached()]


def load_tools(tools_file: str | None, include_builtin: bool = True) -> list[Tool]:
    """The built-in library, plus (or replaced by) the tools of ``data.tools_file``."""
    tools = load_builtin_tools() if include_builtin else []
    if tools_file:
        extra = load_tools_file(tools_file)
        names = {t.name for t in extra}
        tools = [t for t in tools if t.name not in names] + extra
    return tools
