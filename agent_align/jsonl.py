"""Reading and writing run files: JSONL with file:line errors, atomic writes (temp file + rename)."""

from __future__ import annotations

import json
import os
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


def read_jsonl(path: str | os.PathLike, key: str = "", required: Iterable[str] = ()) -> list[dict]:
    """Rows of a JSONL file. Missing/empty files and malformed lines fail naming file:line."""
    p = Path(path)
    hint = f"set {key}=PATH to an existing file" if key else "check the path"
    if not p.exists():
        raise file_error(p, None, "file not found", hint)
    if p.is_dir():
        raise file_error(p, None, "is a directory, expected a JSONL file", hint)
    rows: list[dict] = []
    required = tuple(required)
    with p.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = loads_strict(line)
            except ValueError as exc:
                raise file_error(p, lineno, f"malformed JSON ({exc})", "one JSON object per line") from None
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
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[Any]:
    """Write to a temp file beside ``path`` and rename on success: a killed run never leaves a
    half-written file behind."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as fh:
            yield fh
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
    p = Path(path)
    if not p.exists():
        raise file_error(p, None, "file not found", f"set {key}=PATH to an existing JSON or YAML file")
    text = p.read_text(encoding="utf-8")
    if not text.strip():
        raise file_error(p, None, "file is empty", f"{key} needs tool definitions")
    if p.suffix in (".yaml", ".yml"):
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark else None
            raise file_error(p, line, f"malformed YAML ({getattr(exc, 'problem', exc)})") from None
    if p.suffix == ".jsonl":
        return [strip_private(r) for r in read_jsonl(p, key)]
    try:
        return loads_strict(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # JSON Lines named .json (BFCL's function files)
            return [strip_private(r) for r in read_jsonl(p, key)]
        raise file_error(p, exc.lineno, f"malformed JSON ({exc.msg})") from None
    except ValueError as exc:
        raise file_error(p, None, f"malformed JSON ({exc})") from None


__all__ = ["read_jsonl", "write_jsonl", "write_json", "atomic_open", "loads_strict", "UserError"]
