"""The tools an agent is offered, per ``env.subdomain_mode``, and how each call is served.

Modes for the API tools (retrieval and FINAL are the same in all three):
  slot_filling  one typed tool per endpoint: {"tool": "get_employee", "parameters": {"name": "Mei Sato"}}
  rest          one generic tool over HTTP:  {"tool": "call_api", "parameters": {"endpoint": "/hr/employees",
                                                                                 "params": {"name": "Mei Sato"}}}
  selection     choose, then fill:           {"tool": "select_endpoint", "parameters": {"endpoint": "get_employee"}}
                                             {"tool": "call_endpoint", "parameters": {"endpoint": "get_employee",
                                                                                      "arguments": {"name": "Mei Sato"}}}
Every executed call is also described by its *target*, independent of the mode: ("rag", collection),
("api", endpoint), ("select", endpoint) or ("final", None); policies and the expert work on targets.
"""

from __future__ import annotations

import re

from agent_align.env.backends import rest_get
from agent_align.env.world import ENDPOINTS, ENDPOINTS_BY_NAME, ENDPOINTS_BY_PATH, SUBDOMAINS, ApiError, World
from agent_align.errors import UserError
from agent_align.tools.library import Tool, call_schema
from agent_align.validation.validator import SchemaChecker, Verdict

FINAL = "FINAL"
RETRIEVE = "retrieve_documents"
CANNOT_ANSWER = "I cannot answer this question with the tools available."
MODES = ("slot_filling", "rest", "selection")
AVAILABILITY = ("both_api_rag", "only_rag", "only_api", "neither_api_rag")

_POLICY_RAG = re.compile(r"Do not use the tool \$retrieve_documents\$ for the collection \$(\w+)\$\.?", re.I)
_POLICY_API = re.compile(r"Do not use the \$(\w+)\$ API\.?", re.I)


def parse_policy(text: str, collections: list[str], where: str = "tool_usage") -> list[tuple[str, str]]:
    """The enforceable rules in a textual ``tool_usage`` policy: [("rag", collection) | ("api", subdomain)]."""
    rules = [("rag", m) for m in _POLICY_RAG.findall(text or "")] + [("api", m) for m in _POLICY_API.findall(text or "")]
    rest = _POLICY_API.sub("", _POLICY_RAG.sub("", text or "")).strip()
    if rest:
        raise UserError(f"{where}: cannot enforce policy text {rest!r}; write sentences like 'Do not use the tool "
                        f"$retrieve_documents$ for the collection $hr_policies$.' or 'Do not use the $sales$ API.'")
    for kind, name in rules:
        valid = collections if kind == "rag" else SUBDOMAINS
        if name not in valid:
            raise UserError(f"{where}: policy names unknown {'collection' if kind == 'rag' else 'API'} {name!r}; "
                            f"valid: {', '.join(valid)}")
    return rules


def policy_text(rules: list[tuple[str, str]]) -> str:
    return " ".join(f"Do not use the tool $retrieve_documents$ for the collection ${n}$." if k == "rag"
                    else f"Do not use the ${n}$ API." for k, n in rules)


def violates(rules: list[tuple[str, str]], target: tuple[str, str | None], collection: str | None) -> bool:
    kind, name = target
    for rk, rn in rules:
        if rk == "rag" and kind == "rag" and collection == rn:
            return True
        if rk == "api" and kind == "api" and ENDPOINTS_BY_NAME[name].subdomain == rn:
            return True
    return False


def _obj(props: dict, required: list[str]) -> dict:
    return {"type": "object", "properties": props, "required": required}


class Toolset:
    """Tool definitions and execution for one mode over one world (shared by all episodes of a run)."""

    def __init__(self, mode: str, world: World, index, top_k: int, rest_base_url: str | None = None,
                 http_timeout_s: float = 10.0):
        self.mode, self.world, self.index, self.top_k = mode, world, index, top_k
        self.rest_base_url, self.timeout = rest_base_url, http_timeout_s
        self.checker = SchemaChecker()
        catalogue = "; ".join(f"{e.name} ({', '.join(e.params)}): {e.description}" for e in ENDPOINTS)
        paths = "; ".join(f"{e.path} ({', '.join(e.params)}): {e.description}" for e in ENDPOINTS)
        self.final = Tool(FINAL, "End the task with your answer. If the offered tools cannot give the answer, "
                                 f"answer '{CANNOT_ANSWER}'", _obj({"answer": {"type": "string"}}, ["answer"]))
        self.retrieve = Tool(RETRIEVE, "Search a document collection; returns the best matching documents.",
                             _obj({"collection": {"type": "string", "enum": list(index.collections)},
                                   "query": {"type": "string"}}, ["collection", "query"]))
        if mode == "slot_filling":
            self.api = [Tool(e.name, e.description, e.parameters_schema()) for e in ENDPOINTS]
        elif mode == "rest":
            self.api = [Tool("call_api", f"GET an endpoint of the company REST API with query params. {paths}",
                             _obj({"endpoint": {"type": "string", "enum": sorted(ENDPOINTS_BY_PATH)},
                                   "params": {"type": "object"}}, ["endpoint", "params"]))]
        elif mode == "selection":
            names = [e.name for e in ENDPOINTS]
            self.api = [Tool("select_endpoint", f"Choose an API endpoint; the reply gives its parameters. {catalogue}",
                             _obj({"endpoint": {"type": "string", "enum": names}}, ["endpoint"])),
                        Tool("call_endpoint", "Call an endpoint chosen with select_endpoint.",
                             _obj({"endpoint": {"type": "string", "enum": names}, "arguments": {"type": "object"}},
                                  ["endpoint", "arguments"]))]
        else:
            raise UserError(f"config key 'env.subdomain_mode' = {mode!r}: valid values: {', '.join(MODES)}")
        self.all_tools = {t.name: t for t in [self.retrieve, *self.api, self.final]}
        self.schemas = {name: call_schema(t) for name, t in self.all_tools.items()}

    def offered(self, availability: str) -> list[Tool]:
        tools = {"both_api_rag": [self.retrieve, *self.api], "only_rag": [self.retrieve], "only_api": list(self.api),
                 "neither_api_rag": []}[availability]
        return tools + [self.final]

    def check(self, call: dict, offered: list[str]) -> Verdict:
        """Schema verdict for a parsed call object, with the validator's categories."""
        name = call.get("tool")
        if isinstance(name, str) and name in self.all_tools and name not in offered:
            return Verdict(False, "wrong_tool", f"tool {name!r} is not available in this task; offered: {offered}")
        if not isinstance(name, str) or name not in self.all_tools:
            return Verdict(False, "wrong_tool", f"unknown tool {name!r}; offered: {offered}")
        verdict = self.checker.check(call, self.schemas[name])
        if verdict.passed and name == "call_endpoint":  # the chosen endpoint's own schema, as slot_filling has it
            ep = ENDPOINTS_BY_NAME[call["parameters"]["endpoint"]]
            inner = self.checker.check(call["parameters"]["arguments"], {**ep.parameters_schema(),
                                                                         "additionalProperties": False})
            if not inner.passed:
                where = inner.detail[len("(root)"):] if inner.detail.startswith("(root)") else "." + inner.detail
                return Verdict(False, inner.category, "arguments" + where)
        return verdict

    def target(self, call: dict) -> tuple[str, str | None]:
        name, p = call["tool"], call["parameters"]
        if name == FINAL:
            return ("final", None)
        if name == RETRIEVE:
            return ("rag", p["collection"])
        if name == "call_api":
            return ("api", ENDPOINTS_BY_PATH[p["endpoint"]].name)
        if name == "select_endpoint":
            return ("select", p["endpoint"])
        if name == "call_endpoint":
            return ("api", p["endpoint"])
        return ("api", name)

    def execute(self, call: dict, selected: set[str]):
        """(result, doc ids or None). ``ApiError`` when the call reached the tool and failed."""
        name, p = call["tool"], call["parameters"]
        if name == RETRIEVE:
            docs = self.index.search(p["collection"], p["query"], self.top_k)
            return docs, [d["id"] for d in docs]
        if name == "select_endpoint":
            ep = ENDPOINTS_BY_NAME[p["endpoint"]]
            selected.add(ep.name)
            return {"endpoint": ep.name, "description": ep.description, "parameters": ep.params}, None
        if name == "call_endpoint":
            if p["endpoint"] not in selected:
                raise ApiError(f"call_endpoint: select the endpoint first with select_endpoint({p['endpoint']!r})")
            return self.world.call_endpoint(p["endpoint"], p["arguments"]), None
        if name == "call_api":
            return rest_get(self.rest_base_url, p["endpoint"], p["params"], self.timeout), None
        return self.world.call_endpoint(name, p), None

    def api_args(self, call: dict) -> dict:
        p = call["parameters"]
        return {"call_api": lambda: p["params"], "call_endpoint": lambda: p["arguments"]}.get(call["tool"], lambda: p)()

    def concrete(self, step: dict, selected: set[str]) -> dict:
        """The call that performs a ground-truth step (``{"kind": "rag"|"api"|"final", ...}``) in this mode."""
        if step["kind"] == "final":
            return {"tool": FINAL, "parameters": {"answer": step["answer"]}}
        if step["kind"] == "rag":
            return {"tool": RETRIEVE, "parameters": {"collection": step["collection"], "query": step["query"]}}
        ep, args = ENDPOINTS_BY_NAME[step["endpoint"]], dict(step["args"])
        if self.mode == "slot_filling":
            return {"tool": ep.name, "parameters": args}
        if self.mode == "rest":
            return {"tool": "call_api", "parameters": {"endpoint": ep.path, "params": args}}
        if ep.name not in selected:
            return {"tool": "select_endpoint", "parameters": {"endpoint": ep.name}}
        return {"tool": "call_endpoint", "parameters": {"endpoint": ep.name, "arguments": args}}
