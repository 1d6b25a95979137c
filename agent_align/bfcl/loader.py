"""Loading BFCL question and possible-answer files into scoring-ready items.

    python -m agent_align stage=score data=bfcl data.bfcl_dir=PATH data.categories=[simple_python,multiple]

``data.bfcl_dir`` is BFCL's data folder (``bfcl_eval/data`` in the gorilla repository): question
files ``BFCL_v4_<category>.json`` (JSON Lines) and ``possible_answer/`` beside them. A category is a
file stem with or without the ``BFCL_vN_`` prefix, so ``live_simple`` works as well as the four
categories shipped in ``../shared/bfcl``.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path

from jsonschema.exceptions import SchemaError

from agent_align.bfcl.schema import bfcl_function_to_openai
from agent_align.errors import UserError, config_error, file_error
from agent_align.jsonl import read_jsonl
from agent_align.tools.library import Tool, call_schema
from agent_align.validation.validator import SchemaChecker

NO_ANSWER_KINDS = ("irrelevance", "relevance")
# BFCL's data comes from its own wheel (1.9 MB), installed without its dependencies
PACKAGE, DISTRIBUTION, VERSION = "bfcl_eval", "bfcl-eval", "2026.3.23"
INSTALL = f"pip install --no-deps {DISTRIBUTION}=={VERSION}"
PREFIX_RE = re.compile(r"^BFCL_v(\d+)_(.+?)(\.json)?$")
DIR_FIX = ("set data.bfcl_dir=PATH to BFCL's data folder (bfcl_eval/data in ShishirPatil/gorilla), "
           "which holds possible_answer/, or unset it to use the installed bfcl-eval package's")


@dataclass
class BfclItem:
    id: str
    category: str
    kind: str  # simple | multiple | parallel | irrelevance | relevance: the matching rule (by the name, as BFCL)
    messages: list[dict]  # the chat prompt (BFCL's question[0])
    functions: dict[str, dict]  # name -> JSON Schema of its parameters (converted from BFCL types)
    tools: list[dict]  # OpenAI tool definitions, in the file's order
    call_schemas: dict[str, dict]  # name -> our call schema {"tool", "parameters"} for the strict scorer
    answers: list[dict] = field(default_factory=list)  # ground_truth: [{name: {param: [acceptable...]}}]; [] for
    # irrelevance/relevance, which have no possible answers

    def prompt(self) -> dict:
        return {"id": self.id, "messages": self.messages, "tools": self.tools}


def category_kind(category: str) -> str:
    """BFCL's own dispatch by name: irrelevance (passes with no call), relevance (passes with any call),
    'parallel' anywhere -> any-order matching, else 'multiple', else simple."""
    if "irrelevance" in category:
        return "irrelevance"
    if "relevance" in category:
        return "relevance"
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


def _check_question(row: dict, path: Path, kind: str) -> None:
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
    named = all(isinstance(f, dict) and isinstance(f.get("name"), str) for f in fns) if isinstance(fns, list) else False
    if not (named and (fns or kind in NO_ANSWER_KINDS)):
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


def _unique(questions: list[dict], qpath: Path, kind: str) -> list[dict]:
    seen = set()
    for row in questions:
        if row["id"] in seen:
            raise file_error(qpath, row["_line"], f"duplicate id {row['id']!r}")
        seen.add(row["id"])
        _check_question(row, qpath, kind)  # live_irrelevance offers no function in some rows
    return questions


def _item(row: dict, qpath: Path, name: str, kind: str, checker: SchemaChecker, answers: list) -> BfclItem:
    functions, tools, schemas = _convert_functions(row, qpath, checker)
    return BfclItem(id=row["id"], category=name, kind=kind, messages=row["question"][0], functions=functions,
                    tools=tools, call_schemas=schemas, answers=answers)


def load_category(bfcl_dir: Path, category: str, checker: SchemaChecker, limit: int = 0) -> list[BfclItem]:
    qpath = find_category_file(bfcl_dir, category)
    name = category_name(qpath.name)
    kind = category_kind(name)
    apath = bfcl_dir / "possible_answer" / qpath.name
    if kind not in NO_ANSWER_KINDS and not apath.exists():  # irrelevance: scored by whether a call is made
        raise file_error(apath, None, f"no possible answers for category {name!r}",
                         "AST categories have them (simple_*, multiple, parallel*, live_*; irrelevance needs none); "
                         "keep BFCL's possible_answer/ folder beside the question files")
    questions = read_jsonl(qpath, "data.bfcl_dir", required=("id", "question", "function"))
    if kind in NO_ANSWER_KINDS:
        return [_item(row, qpath, name, kind, checker, []) for row in _unique(questions, qpath, kind)[: limit or None]]
    answers = {}
    for row in read_jsonl(apath, "data.bfcl_dir", required=("id", "ground_truth")):
        if row["id"] in answers:
            raise file_error(apath, row["_line"], f"duplicate id {row['id']!r}")
        answers[row["id"]] = row
    for row in _unique(questions, qpath, kind):
        if row["id"] not in answers:
            raise file_error(apath, None, f"no answer for question {row['id']!r} ({qpath.name}:{row['_line']})",
                             "question and possible_answer files must come from the same BFCL version")
    items = []
    for row in questions[: limit or None]:
        item = _item(row, qpath, name, kind, checker, answers[row["id"]]["ground_truth"])
        _check_answer(answers[row["id"]], apath, item.functions)
        items.append(item)
    extra = sorted(set(answers) - {row["id"] for row in questions})
    if extra:
        raise file_error(apath, answers[extra[0]]["_line"],
                         f"{len(extra)} answers have no question (first: {extra[0]!r})",
                         "question and possible_answer files must come from the same BFCL version")
    return items


def default_bfcl_dir() -> Path:
    """``bfcl_eval/data`` of the installed bfcl-eval package, located without importing it: importing
    needs its dependencies (numpy==1.26.4 and dozens of API clients), and the data needs none of them."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"data.bfcl_dir is unset and the {DISTRIBUTION} package, which ships BFCL's data, is not "
                        f"installed: run `{INSTALL}`, or set data.bfcl_dir=PATH to BFCL's data folder")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def load_bfcl(data_cfg, checker: SchemaChecker | None = None, categories=None, key: str = "data.categories",
              limit: int = 0) -> dict[str, list[BfclItem]]:
    """``{category: items}`` for ``categories`` (default ``data.categories``; ``key`` names the config key in
    errors) in ``data.bfcl_dir`` (unset: the bfcl-eval package's); every problem is a one-line error.
    ``limit`` > 0 keeps the first N questions of each category (only those are converted and compiled).
    Pass the ``checker`` the strict scorer will use: it then holds every schema already compiled."""
    checker = checker or SchemaChecker()
    categories = list(data_cfg.categories if categories is None else categories)
    bfcl_dir = Path(data_cfg.bfcl_dir).expanduser() if data_cfg.bfcl_dir else default_bfcl_dir()
    if not bfcl_dir.is_dir():
        raise file_error(bfcl_dir, None, "BFCL data directory not found", DIR_FIX)
    if not categories:
        raise config_error(key, categories, f"name at least one category, e.g. {key}=[simple_python,multiple]")
    out: dict[str, list[BfclItem]] = {}
    ids: dict[str, str] = {}
    for category in categories:
        if "java" in category:
            raise config_error(key, categories, f"{category!r} is a Java/JavaScript category; "
                               "only Python-language categories are scored")
        items = load_category(bfcl_dir, str(category), checker, limit)
        name = items[0].category
        if name in out:
            raise config_error(key, categories, f"{name!r} is listed twice")
        for it in items:
            if it.id in ids:
                raise UserError(f"id {it.id!r} appears in both {ids[it.id]} and {name}; "
                                "ids must be unique across categories")
            ids[it.id] = name
        out[name] = items
    return out
