"""Reading and writing run files: JSONL with file:line errors, atomic writes (temp file + rename)."""

from __future__ import annotations

import json
import os
import shutil
import re
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from agent_align.errors import UserError, file_error


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def loads_strict(text: str) -> Any:
    """json.loads that rejects NaN/Infinity, which Python accepts but JSON does not."""
    return json.loads(text, parse_constant=_reject_constant)


# Nesting levels a value in a user file or a model's call may have. Tool schemas need fewer than
# 15; anything deeper would exhaust Python's recursion in the parser or the checkers.
MAX_DEPTH = 64
BOM = b"\xef\xbb\xbf"
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_LEAF_PAIR = re.compile(r"\[\]|\{\}")


def too_deep(text: str, limit: int = MAX_DEPTH) -> bool:
    """True when the JSON ``text`` nests more than ``limit`` levels. By hand because neither json nor
    any maintained parser takes a depth limit: strings are cut out, then each round removes the
    innermost bracket pairs (all in C), so ``limit`` rounds decide it without parsing."""
    if text.count("[") + text.count("{") <= limit:
        return False
    s = _NOT_BRACKET.sub("", _STRING.sub("", text))
    for _ in range(limit):
        shorter = _LEAF_PAIR.sub("", s)
        if shorter == s:  # empty, or unbalanced: the parser reports that
            return False
        s = shorter
    return bool(s) and _LEAF_PAIR.search(s) is not None


def tree_problem(obj: Any, limit: int = MAX_DEPTH, max_nodes: int = 5_000_000) -> str:
    """'' when a parsed value nests at most ``limit`` levels and has at most ``max_nodes`` values
    (YAML aliases can make a small file expand to billions), else the problem."""
    stack, nodes = [(obj, 1)], 0
    while stack:
        value, depth = stack.pop()
        nodes += 1
        if nodes > max_nodes:
            return f"more than {max_nodes} values (YAML aliases?)"
        if isinstance(value, dict):
            children = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > limit:
            return f"nested deeper than {limit} levels"
        stack.extend((c, depth + 1) for c in children)
    return ""


def read_text(path: str | os.PathLike, key: str = "", what: str = "file") -> str:
    """The text of a user file: a regular file, UTF-8 without a byte-order mark. Each problem is one
    UserError naming file (and line, for bad bytes)."""
    p = Path(path)
    hint = f"set {key}=PATH to an existing {what}" if key else "check the path"
    if not p.exists():
        raise file_error(p, None, "file not found", hint)
    if p.is_dir():
        raise file_error(p, None, f"is a directory, expected a {what}", hint)
    if not p.is_file():  # a FIFO or a device would block or never end
        raise file_error(p, None, f"is not a regular file, expected a {what}", hint)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise file_error(p, None, f"cannot be read ({exc.strerror})", "check its permissions") from None
    if data.startswith(BOM):
        raise file_error(p, 1, "starts with a UTF-8 byte-order mark", "save it as UTF-8 without BOM")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise file_error(p, line, f"not valid UTF-8 (byte {data[exc.start]:#04x} at offset {exc.start})",
                         "save it as UTF-8") from None


def parse_json_text(text: str, path, line: int | None) -> Any:
    """One JSON value; too deep or malformed -> UserError naming path:line."""
    if too_deep(text):
        raise file_error(path, line, f"JSON nested deeper than {MAX_DEPTH} levels")
    try:
        return loads_strict(text)
    except RecursionError:
        raise file_error(path, line, f"JSON nested deeper than {MAX_DEPTH} levels") from None
    except json.JSONDecodeError as exc:
        where = line if line is not None else exc.lineno
        raise file_error(path, where, f"malformed JSON ({exc.msg})", "one JSON object per line") from None
    except ValueError as exc:
        raise file_error(path, line, f"malformed JSON ({exc})") from None


def read_jsonl(path: str | os.PathLike, key: str = "", required: Iterable[str] = ()) -> list[dict]:
    """Rows of a JSONL file. Missing/empty files and malformed lines fail naming file:line."""
    p = Path(path)
    hint = f"set {key}=PATH to an existing file" if key else "check the path"
    text = read_text(p, key, "JSONL file")
    rows: list[dict] = []
    required = tuple(required)
    for lineno, line in enumerate(text.split("\n"), 1):  # only \n ends a row: JSON strings may hold U+2028
        if not line.strip():
            continue
        row = parse_json_text(line, p, lineno)
        if not isinstance(row, dict):
            raise file_error(p, lineno, f"expected a JSON object, got {type(row).__name__}")
        missing = [k for k in required if k not in row]
        if missing:
            raise file_error(p, lineno, f"missing key(s) {missing}", f"every row needs {list(required)}")
        row.setdefault("_line", lineno)
        rows.append(row)
    if not rows:
        raise file_error(p, None, "file is empty", hint)
    return rows


def strip_private(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith("_")}


@contextmanager
def _signals_deferred() -> Iterator[None]:
    deferred = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, deferred)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[Any]:
    """Write to a temp file beside ``path`` and rename on success: a killed run never leaves a
    half-written file behind."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    # the pid in the name lets a resumed run tell a dead writer's leftover from a live one's file;
    # SIGINT/SIGTERM wait until `tmp` is known, so the cleanup below always has its name
    with _signals_deferred():
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.{os.getpid()}-", suffix=".tmp")
    try:
        # backslashreplace: a lone surrogate (JSON allows "\ud800") is written back as that same escape
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8",
                       errors=None if "b" in mode else "backslashreplace") as fh:
            yield fh
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """A temp directory beside ``path`` that replaces ``path`` when the block ends without error (a
    checkpoint, a cached model): a killed run never leaves a half-written one. Named like atomic_open's
    temp files, so a resumed run removes a dead writer's leftover (preflight.clean_stale_temp)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with _signals_deferred():
        tmp = Path(tempfile.mkdtemp(dir=p.parent, prefix=f".{p.name}.{os.getpid()}-", suffix=".tmp"))
    try:
        yield tmp
        if p.exists():
            shutil.rmtree(p)
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    n = 0
    with atomic_open(path) as fh:
        for row in rows:
            fh.write(json.dumps(strip_private(row), ensure_ascii=False) + "\n")
            n += 1
    return n


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_open(path) as fh:
        json.dump(obj, fh, indent=2, ensure_ascii=False)
        fh.write("\n")


def read_json_or_yaml(path: str | os.PathLike, key: str) -> Any:
    """A JSON, JSONL or YAML document (by suffix), checked like ``read_jsonl``: one UserError with
    file:line for a missing, empty, non-UTF-8, malformed or too deeply nested file."""
    p = Path(path)
    text = read_text(p, key, "JSON or YAML file")
    if not text.strip():
        raise file_error(p, None, "file is empty", f"{key} needs content")
    if p.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark else None
            raise file_error(p, line, f"malformed YAML ({getattr(exc, 'problem', None) or exc})") from None
        except RecursionError:
            raise file_error(p, None, f"YAML nested deeper than {MAX_DEPTH} levels") from None
        problem = tree_problem(data)
        if problem:
            raise file_error(p, None, f"YAML {problem}")
        return data
    if p.suffix == ".jsonl":
        return [strip_private(r) for r in read_jsonl(p, key)]
    try:
        return parse_json_text(text, p, None)
    except UserError as exc:
        if "(Extra data)" not in str(exc):
            raise
    return [strip_private(r) for r in read_jsonl(p, key)]  # JSON Lines named .json (BFCL's function files)


__all__ = ["read_jsonl", "read_text", "read_json_or_yaml", "too_deep", "MAX_DEPTH", "write_jsonl", "write_json", "atomic_open", "loads_strict", "UserError"]
