"""User-facing errors: one line naming the key or file:line, the value, and the fix."""

from __future__ import annotations


class UserError(Exception):
    """An error the user caused and can fix. Printed as one line, exit code 2, no traceback
    unless ``debug=true``."""

    exit_code = 2


def config_error(key: str, value, fix: str) -> UserError:
    return UserError(f"config key '{key}' = {value!r}: {fix}")


def file_error(path, line: int | None, problem: str, fix: str = "") -> UserError:
    where = f"{path}:{line}" if line is not None else f"{path}"
    tail = f" ({fix})" if fix else ""
    problem = " ".join(str(problem).split())  # parsers' messages span lines; ours are one
    return UserError(f"{where}: {problem}{tail}")
