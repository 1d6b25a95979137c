"""The two BFCL scorers: BFCL's AST match against the possible answers, and our strict schema check.

    from agent_align.bfcl.checker import check_ast, check_strict
    check_ast(item, calls).passed, check_strict(item, calls).category

AST match follows BFCL's published checker (bfcl_eval/eval_checker/ast_eval/ast_checker.py):
the right function; schema-required parameters present; every given parameter in the schema and in
the answer; types (an int is accepted for a float, a float is not an integer, a bool is not an int);
values among the acceptable ones after string normalisation; an answer parameter whose list holds
``""`` may be omitted, one without it may not (BFCL's ``missing_optional``). Written here rather than
imported because BFCL's package pulls in every model handler; two deliberate differences, both
accepting only answers BFCL's own acceptable lists allow: nested values are checked at any depth with
the same rules (BFCL stops at one level), and parallel calls are matched by a perfect bipartite
matching (BFCL matches greedily, which can miss a valid order).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from agent_align.bfcl.loader import BfclItem
from agent_align.bfcl.parse import Call
from agent_align.validation.categories import PRECEDENCE
from agent_align.validation.validator import SchemaChecker, Verdict

AST_ERRORS = ("decoder_failed", "wrong_count", "wrong_func_name", "missing_required", "missing_optional",
              "unexpected_param", "type_error", "value_error", "cannot_find_match",
              "irrelevance_call", "relevance_no_call")  # irrelevance: a call was made; relevance: none was
_STRIP = re.compile(r"[ ,./\-_*^]")


@dataclass(frozen=True)
class AstResult:
    passed: bool
    error: str | None = None  # one of AST_ERRORS
    detail: str = ""
    sub_error: str | None = None  # cannot_find_match: why the closest call did not match

    @classmethod
    def fail(cls, error: str, detail: str, sub_error: str | None = None) -> "AstResult":
        return cls(False, error, detail, sub_error)


OK = AstResult(True)


def normalize(text: str) -> str:
    """BFCL's string standardisation: "April 1, 2024" == "april 1 2024"; quotes unified."""
    return _STRIP.sub("", text).lower().replace("'", '"')


def resolve_name(name: str, offered) -> str:
    """``math_factorial`` -> ``math.factorial`` when exactly one offered name matches: OpenAI-style APIs
    forbid dots, so BFCL offers those models underscored names and maps them back the same way."""
    if name in offered:
        return name
    hits = [n for n in offered if n.replace(".", "_") == name]
    return hits[0] if len(hits) == 1 else name


def _is_type(value: Any, t: str) -> bool:
    if t == "integer":
        return type(value) is int  # neither a bool nor a float counts
    if t == "number":
        return type(value) in (int, float)
    return {"string": str, "boolean": bool, "array": list, "object": dict}.get(t, type(None)) is type(value)


def type_problem(value: Any, schema: dict, path: str) -> str:
    """'' when ``value`` has the schema's type at every depth; no ``type`` means any value."""
    t = schema.get("type")
    if t is not None:
        types = t if isinstance(t, list) else [t]
        if not any(_is_type(value, x) for x in types):
            return f"{path}: expected {'/'.join(types)}, got {type(value).__name__} {value!r}"
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(value):
            problem = type_problem(v, schema["items"], f"{path}[{i}]")
            if problem:
                return problem
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for k, v in value.items():
            problem = type_problem(v, props[k], f"{path}.{k}") if k in props else ""
            if problem:
                return problem
    return ""


def matches(value: Any, candidate: Any, schema: dict) -> bool:
    """One acceptable answer. A dict answer maps each key to a list of acceptable values (``""`` =
    may be omitted); a list answer is compared element by element; strings after normalisation."""
    if isinstance(candidate, dict):
        if not isinstance(value, dict):
            return False
        props = schema.get("properties", {})
        for k, v in value.items():
            if k not in candidate:
                return False
            acceptable = candidate[k] if isinstance(candidate[k], list) else [candidate[k]]
            if not any(matches(v, c, props.get(k, {})) for c in acceptable):
                return False
        return all(k in value or (isinstance(acc, list) and "" in acc) for k, acc in candidate.items())
    if isinstance(candidate, list):
        items = schema.get("items") if isinstance(schema.get("items"), dict) else {}
        return (isinstance(value, list) and len(value) == len(candidate)
                and all(matches(v, c, items) for v, c in zip(value, candidate)))
    if isinstance(candidate, str):
        return isinstance(value, str) and normalize(value) == normalize(candidate)
    if isinstance(candidate, bool) or isinstance(value, bool):
        return type(candidate) is type(value) and candidate == value
    if isinstance(candidate, (int, float)):
        return type(value) in (int, float) and value == candidate
    return value is None and candidate is None


def _typed_like(value: Any, answer: Any) -> bool:
    """BFCL's type test for "variables": the value's type is the answer's (list items: the first item's)."""
    if isinstance(answer, list) and isinstance(value, list):
        return not answer or all(_typed_like(v, answer[0]) for v in value)
    return isinstance(value, dict) if isinstance(answer, dict) else type(value) is type(answer)


def _json_equal(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def check_call(call: Call, expected: dict, params_schema: dict) -> AstResult:
    """BFCL's simple_function_checker: one decoded call against one ``{name: {param: [acceptable]}}``."""
    (want, answer), = expected.items()
    name, args = call
    if name != want:
        return AstResult.fail("wrong_func_name", f"expected {want!r}, got {name!r}")
    props = params_schema.get("properties", {})
    for p in params_schema.get("required", []):
        if p not in args:
            return AstResult.fail("missing_required", f"{name}: required parameter {p!r} missing")
    for p, value in args.items():
        if p not in props or p not in answer:
            why = "not in the schema" if p not in props else "in the schema but in no acceptable answer"
            return AstResult.fail("unexpected_param", f"{name}: parameter {p!r} {why}")
        acceptable = answer[p]
        problem = type_problem(value, props[p], f"{name}.{p}")
        if problem:
            # BFCL's "variable" rule: a value typed like the answers (a variable name the answers spell
            # as a string, a None default) passes the type check and must then equal an answer.
            typed = next((a for a in acceptable if a != ""), None)
            if typed is None or not _typed_like(value, typed):
                return AstResult.fail("type_error", problem)
            if not any(matches(value, a, {}) if isinstance(value, (list, dict)) else _json_equal(value, a)
                       for a in acceptable):
                return AstResult.fail("value_error", f"{name}.{p}: {value!r} not among {acceptable}")
            continue
        if not any(matches(value, c, props[p]) for c in acceptable):
            return AstResult.fail("value_error", f"{name}.{p}: {value!r} not among {acceptable}")
    for p, acceptable in answer.items():
        if p not in args and "" not in acceptable:
            return AstResult.fail("missing_optional", f"{name}: {p!r} is optional in the schema, "
                                  "but the answer needs it")
    return OK


def first_acceptable(candidate: Any) -> Any:
    """The plain value an acceptable answer stands for: dict answers map keys to acceptable lists, so
    take the first non-empty value of each key and leave out keys that may be omitted."""
    if isinstance(candidate, dict):
        return {k: first_acceptable(next(a for a in acc if a != "")) for k, acc in candidate.items()
                if isinstance(acc, list) and "" not in acc}
    if isinstance(candidate, list):
        return [first_acceptable(c) for c in candidate]
    return candidate


def reference_calls(item: BfclItem) -> list[Call]:
    """The answer built from the possible answers: the first acceptable value of each parameter,
    optional ones (``""`` listed, not schema-required) left out. Scores 100% AST by construction."""
    calls = []
    for expected in item.answers:
        (name, answer), = expected.items()
        required = set(item.functions[name].get("required", []))
        calls.append((name, {p: first_acceptable(next(a for a in acc if a != "")) for p, acc in answer.items()
                             if p in required or "" not in acc}))
    return calls


def _perfect_matching(ok: list[list[bool]]) -> list[int]:
    """Kuhn's augmenting paths: ``owner[j]`` = expected call matched to output call j, or -1."""
    owner = [-1] * (len(ok[0]) if ok else 0)

    def augment(i: int, seen: set) -> bool:
        for j, good in enumerate(ok[i]):
            if good and j not in seen:
                seen.add(j)
                if owner[j] < 0 or augment(owner[j], seen):
                    owner[j] = i
                    return True
        return False

    for i in range(len(ok)):
        augment(i, set())
    return owner


def check_ast(item: BfclItem, calls: list[Call] | None, decode_error: str = "") -> AstResult:
    """BFCL's ast_checker for one row: simple and multiple need exactly one call of the answer's
    function; parallel categories need one call per answer, in any order. As BFCL's relevance checker,
    an irrelevance row passes when no call decodes (prose, an empty answer) and a relevance row when
    one does, whatever its arguments."""
    if item.kind == "irrelevance":
        return OK if not calls else AstResult.fail("irrelevance_call", f"no call expected, got {_names(calls)}")
    if item.kind == "relevance":
        return OK if calls else AstResult.fail("relevance_no_call", f"a call expected, none decoded: {decode_error}")
    if calls is None:
        return AstResult.fail("decoder_failed", decode_error)
    calls = [(resolve_name(n, item.functions), a) for n, a in calls]
    answers = item.answers
    if len(calls) != len(answers):
        return AstResult.fail("wrong_count", f"expected {len(answers)} call(s), got {len(calls)}")
    if item.kind != "parallel":
        want = next(iter(answers[0]))
        return check_call(calls[0], answers[0], item.functions[want])
    results = [[check_call(c, a, item.functions[next(iter(a))]) for c in calls] for a in answers]
    owner = _perfect_matching([[r.passed for r in row] for row in results])
    if all(o >= 0 for o in owner):
        return OK
    # Explain the first call left over by the closest expected call it fails: the one it agrees with most.
    j = owner.index(-1)
    failed = [i for i in range(len(answers)) if not results[i][j].passed]  # never empty: the matching is maximum
    i = max(failed, key=lambda i: (_agreement(calls[j], answers[i], item), -i))
    sub = results[i][j]
    return AstResult.fail("cannot_find_match", f"call #{j} matches no expected call; closest is expected #{i}: "
                          f"{sub.detail}", sub.error)


def _names(calls: list[Call]) -> str:
    return ", ".join(name for name, _ in calls)


def _agreement(call: Call, expected: dict, item: BfclItem) -> int:
    """How many arguments of ``call`` are acceptable for ``expected`` (-1: another function)."""
    (want, answer), = expected.items()
    if call[0] != want:
        return -1
    props = item.functions[want].get("properties", {})
    return sum(1 for p, v in call[1].items() if p in answer and any(matches(v, c, props.get(p, {})) for c in answer[p]))


def check_strict(item: BfclItem, calls: list[Call] | None, checker: SchemaChecker, decode_error: str = "") -> Verdict:
    """Our strict scorer: every call valid for its function's closed call schema, and as many calls
    as the answer has (too few: missing_call, too many: extra_call). The row's category is the
    highest-precedence failure among its calls. Irrelevance rows pass with no call; any call there is
    an extra_call (the expected set is empty). Relevance rows need at least one call."""
    if item.kind == "irrelevance":
        return Verdict(True, None) if not calls else Verdict(False, "extra_call",
                                                             f"no call expected, got {_names(calls)}")
    if calls is None:
        return Verdict(False, "json_error", decode_error)
    worst: Verdict | None = None
    for i, (name, args) in enumerate(calls):
        name = resolve_name(name, item.call_schemas)
        schema = item.call_schemas.get(name)
        if schema is None:
            v = Verdict(False, "wrong_tool", f"call #{i}: {name!r} is not offered ({', '.join(item.call_schemas)})")
        else:
            v = checker.check({"tool": name, "parameters": args}, schema)
            v = v if v.passed else Verdict(False, v.category, f"call #{i} {name}: {v.detail}")
        if not v.passed and (worst is None or PRECEDENCE[v.category] < PRECEDENCE[worst.category]):
            worst = v
    if item.kind != "relevance" and len(calls) != len(item.answers):
        category = "missing_call" if len(calls) < len(item.answers) else "extra_call"
        if worst is None or PRECEDENCE[category] < PRECEDENCE[worst.category]:
            worst = Verdict(False, category, f"expected {len(item.answers)} call(s), got {len(calls)}")
    return worst or Verdict(True, None)
