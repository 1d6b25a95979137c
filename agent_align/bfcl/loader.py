"""Loading BFCL question and possible-answer files into scoring-ready items.

    python -m agent_align stage=score data=bfcl data.bfcl_dir=PATH data.categories=[simple_python,multiple]

``data.bfcl_dir`` is BFCL's data folder (``bfcl_eval/data`` in the gorilla repository): question
files ``BFCL_v4_<category>.json`` (JSON Lines) and ``possible_answer/`` beside them. A category is a
file stem with or without the ``BFCL_vN_`` prefix, so ``live_simple`` works as well as the four
categories shipped in ``../shared/bfcl``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from jsonschema.exceptions import SchemaError

from agent_align.bfcl.schema import bfcl_function_to_openai
from agent_align.errors import UserError, config_error, file_error
from agent_align.jsonl import read_jsonl
from agent_align.tools.library import Tool, call_schema
from agent_align.validation.validator import SchemaChecker

PREFIX_RE = re.compile(r"^BFCL_v(\d+)_(.+?)(\.json)?$")
DIR_FIX = ("set data.bfcl_dir=PATH to BFCL's data folder (bfcl_eval/data in ShishirPatil/gorilla), "
           "which holds possible_answer/")


@dataclass
class BfclItem:
    id: str
    category: str
    kind: str  # simple | multiple | parallel: which AST matching rule applies (BFCL decides by the name)
    messages: list[dict]  # the chat prompt (BFCL's question[0])
    functions: dict[str, dict]  # name -> JSON Schema of its parameters (converted from BFCL types)
    tools: list[dict]  # OpenAI tool definitions, in the file's order
    call_schemas: dict[str, dict]  # name -> our call schema {"tool", "parameters"} for the strict scorer
    answers: list[dict] = field(default_factory=list)  # ground_truth: [{name: {param: [acceptable...]}}]

    def prompt(self) -> dict:
        return {"id": self.id, "messages": self.messages, "tools": self.tools}


def category_kind(category: str) -> str:
    """BFCL's own dispatch: 'parallel' anywhere -> any-order matching, else 'multiple', else simple."""
    if "parallel" in category:
        return "parallel"
    return "multiple" if "multiple" in category else "simple"


def category_name(stem: str) -> str:
    m = PREFIX_RE.match(stem)
    return m.group(2) if m else stem.removesuffix(".json")


def find_category_file(bfcl_dir: Path, category: str) -> Path:
    """``BFCL_v4_simple_python.json`` for ``simple_python`` (newest BFCL_vN_ wins), or the name as given."""
    name = category_name(category)
    if PREFIX_RE.match(category):
        path = bfcl_dir / (category if category.endswith(".json") else category + ".json")
        if path.exists():
            return path
    found = sorted(bfcl_dir.glob(f"BFCL_v*_{name}.json"), key=lambda p: int(PREFIX_RE.match(p.name).group(1)))
    found = [p for p in found if category_name(p.name) == name]
    if found:
        return found[-1]
    available = sorted(category_name(p.name) for p in bfcl_dir.glob("BFCL_v*_*.json"))
    raise file_error(bfcl_dir / f"BFCL_v4_{name}.json", None, f"no question file for category {name!r}",
                     f"categories in {bfcl_dir}: {', '.join(available) or 'none'}; set data.categories=[...]")


def _check_question(row: dict, path: Path) -> None:
    where = (path, row["_line"])
    q = row["question"]
    if not (isinstance(q, list) and q and all(isinstance(turn, list) for turn in q)):
        raise file_error(*where, "'question' must be a list of turns, each a list of messages")
    if len(q) != 1:
        raise file_error(*where, f"{len(q)} turns: multi-turn rows are not AST-scorable",
                         "use single-turn categories (simple_python, multiple, parallel, live_*, ...)")
    for m in q[0]:
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise file_error(*where, f"message {m!r} is not {{'role': str, 'content': str}}")
    fns = row["function"]
    if not (isinstance(fns, list) and fns and all(isinstance(f, dict) and isinstance(f.get("name"), str) for f in fns)):
        raise file_error(*where, "'function' must be a non-empty list of {'name', 'description', 'parameters'}")


def _check_answer(row: dict, path: Path, functions: dict) -> None:
    gt = row["ground_truth"]
    ok = isinstance(gt, list) and gt and all(
        isinstance(c, dict) and len(c) == 1 and isinstance(next(iter(c.values())), dict) for c in gt)
    if not ok:
        raise file_error(path, row["_line"],
                         "'ground_truth' must be a non-empty list of {function name: {param: [values]}}")
    for call in gt:
        (name, params), = call.items()
        if name not in functions:
            raise file_error(path, row["_line"], f"answer calls {name!r}, which the question does not offer "
                             f"({', '.join(functions)})")
        bad = [p for p, acc in params.items() if not isinstance(acc, list)]
        if bad:
            raise file_error(path, row["_line"], f"acceptable values of {bad} are not lists")


def _convert_functions(row: dict, path: Path, checker: SchemaChecker) -> tuple[dict, list, dict]:
    functions, tools, schemas = {}, [], {}
    for fn in row["function"]:
        try:
            tool_def = bfcl_function_to_openai(fn)
        except UserError as exc:
            raise file_error(path, row["_line"], f"function {fn['name']!r}: {exc}") from None
        params = tool_def["function"]["parameters"]
        schema = call_schema(Tool(fn["name"], tool_def["function"]["description"], params, origin="bfcl"))
        try:
            # Checking the (meta-)validity once here, through the scorer's own checker, costs nothing
            # later: the checker caches each compiled schema (1,000 rows share ~1,100 functions).
            checker.check({}, schema)
        except (SchemaError, re.error) as exc:
            raise file_error(path, row["_line"], f"function {fn['name']!r}: parameters are not valid JSON Schema: "
                             f"{getattr(exc, 'message', exc)}") from None
        functions[fn["name"]] = params
        tools.append(tool_def)
        schemas[fn["name"]] = schema
    return functions, tools, schemas


def load_category(bfcl_dir: Path, category: str, checker: SchemaChecker) -> list[BfclItem]:
    qpath = find_category_file(bfcl_dir, category)
    name = category_name(qpath.name)
    apath = bfcl_dir / "possible_answer" / qpath.name
    if not apath.exists():
        raise file_error(apath, None, f"no possible answers for category {name!r}",
                         "only AST categories have them (simple_*, multiple, parallel*, live_*); "
                         "keep BFCL's possible_answer/ folder beside the question files")
    questions = read_jsonl(qpath, "data.bfcl_dir", required=("id", "question", "function"))
    answers = {}
    for row in read_jsonl(apath, "data.bfcl_dir", required=("id", "ground_truth")):
        if row["id"] in answers:
            raise file_error(apath, row["_line"], f"duplicate id {row['id']!r}")
        answers[row["id"]] = row
    items, seen = [], set()
    for row in questions:
        if row["id"] in seen:
            raise file_error(qpath, row["_line"], f"duplicate id {row['id']!r}")
        seen.add(row["id"])
        _check_question(row, qpath)
        if row["id"] not in answers:
            raise file_error(apath, None, f"no answer for question {row['id']!r} ({qpath.name}:{row['_line']})",
                             "question and possible_answer files must come from the same BFCL version")
        functions, tools, schemas = _convert_functions(row, qpath, checker)
        answer = answers[row["id"]]
        _check_answer(answer, apath, functions)
        items.append(BfclItem(id=row["id"], category=name, kind=category_kind(name), messages=row["question"][0],
                              functions=functions, tools=tools, call_schemas=schemas, answers=answer["ground_truth"]))
    extra = sorted(set(answers) - seen)
    if extra:
        raise file_error(apath, answers[extra[0]]["_line"],
                         f"{len(extra)} answers have no question (first: {extra[0]!r})",
                         "question and possible_answer files must come from the same BFCL version")
    return items


def load_bfcl(data_cfg, checker: SchemaChecker | None = None) -> dict[str, list[BfclItem]]:
    """``{category: items}`` for ``data.categories`` in ``data.bfcl_dir``; every problem is a one-line error.
    Pass the ``checker`` the strict scorer will use: it then holds every schema already compiled."""
    checker = checker or SchemaChecker()
    if not data_cfg.bfcl_dir:
        raise config_error("data.bfcl_dir", data_cfg.bfcl_dir, DIR_FIX)
    bfcl_dir = Path(data_cfg.bfcl_dir).expanduser()
    if not bfcl_dir.is_dir():
        raise file_error(bfcl_dir, None, "BFCL data directory not found", DIR_FIX)
    if not data_cfg.categories:
        raise config_error("data.categories", list(data_cfg.categories),
                           "name at least one category, e.g. data.categories=[simple_python,multiple]")
    out: dict[str, list[BfclItem]] = {}
    ids: dict[str, str] = {}
    for category in data_cfg.categories:
        if "java" in category:
            raise config_error("data.categories", list(data_cfg.categories),
                               f"{category!r} is a Java/JavaScript category; "
                               "only Python-language categories are scored")
        items = load_category(bfcl_dir, str(category), checker)
        name = items[0].category
        if name in out:
            raise config_error("data.categories", list(data_cfg.categories), f"{name!r} is listed twice")
        for it in items:
            if it.id in ids:
                raise UserError(f"id {it.id!r} appears in both {ids[it.id]} and {name}; "
                                "ids must be unique across categories")
            ids[it.id] = name
        out[name] = items
    return out
