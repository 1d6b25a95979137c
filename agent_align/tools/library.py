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


def load_tools_file(path: str | Path, key: str = "data.tools_file") -> list[Tool]:
    """Tools from a JSON/JSONL/YAML file: a list of definitions, or ``{"tools": [...]}``.
    BFCL function files (JSONL rows with a ``function`` list) work too."""
    data = read_json_or_yaml(path, key)
    if isinstance(data, dict) and "tools" in data:
        data = data["tools"]
    if isinstance(data, list) and data and all(isinstance(r, dict) and isinstance(r.get("function"), list) for r in data):
        data = [fn for r in data for fn in r["function"]]  # BFCL question rows
    if not isinstance(data, list) or not data:
        raise file_error(path, None, "expected a non-empty list of tool definitions", f"see README, {key}")
    tools, seen = [], set()
    for i, defn in enumerate(data):
        tool = _from_definition(defn, f"{path}: tool #{i}", "file")
        if tool.name in seen:
            continue  # BFCL files repeat functions across questions
        seen.add(tool.name)
        tools.append(tool)
    return tools


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
