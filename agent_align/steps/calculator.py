"""A safe calculator for arithmetic expressions: parsed with ``ast`` and walked, never ``eval``'d.

    from agent_align.steps.calculator import calculate
    calculate("(12 + 7) / 3")   # 6.333...
    calculate("__import__('os')")  # raises CalcError

Only numbers, + - * / // % **, unary signs and parentheses are accepted. Exponents, magnitudes and
expression length are bounded so ``9**9**9`` cannot hang the scorer. Hand-written because the
stdlib's ``ast.literal_eval`` refuses arithmetic and no maintained library is this small.
"""

from __future__ import annotations

import ast
import math
import operator
import re

MAX_LEN = 300  # characters
MAX_EXPONENT = 64
MAX_MAGNITUDE = 1e30

_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNOPS = {ast.UAdd: operator.pos, ast.USub: operator.neg}


class CalcError(ValueError):
    """The expression is not plain arithmetic, or its value is out of bounds."""


def _eval(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNOPS:
        return _UNOPS[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise CalcError(f"exponent {right} exceeds {MAX_EXPONENT}")
        try:
            value = _BINOPS[type(node.op)](left, right)
        except ZeroDivisionError:
            raise CalcError("division by zero") from None
        if isinstance(value, complex) or (isinstance(value, float) and not math.isfinite(value)):
            raise CalcError("result is not a finite real number")
        if abs(value) > MAX_MAGNITUDE:
            raise CalcError(f"result exceeds {MAX_MAGNITUDE:g}")
        return value
    raise CalcError(f"not arithmetic: {type(node).__name__}")


def calculate(expression: str) -> float:
    if not isinstance(expression, str):
        raise CalcError(f"expression must be text, got {type(expression).__name__}")
    text = expression.strip().replace("×", "*").replace("÷", "/").replace("^", "**")
    if not text or len(text) > MAX_LEN:
        raise CalcError(f"expression is empty or longer than {MAX_LEN} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise CalcError(f"cannot parse {expression!r}") from None
    return _eval(tree)


def close(a: float, b: float, rel: float = 1e-6, abs_tol: float = 1e-6) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=abs_tol)


# "25 * 40 = 1000" inside a reasoning step: an arithmetic left side and a number on the right.
_EQUATION = re.compile(r"([-+*/().\d\s×÷^]*\d[-+*/().\d\s×÷^]*?)\s*=\s*(-?\d[\d,]*(?:\.\d+)?)")


def check_equations(text: str) -> tuple[int, int]:
    """(checked, wrong): equations ``expr = number`` in ``text`` recomputed with the calculator.
    A lone number on the left (``x = 5``) is not an equation and is skipped."""
    checked = wrong = 0
    for m in _EQUATION.finditer(text):
        lhs, rhs = m.group(1).strip(), float(m.group(2).replace(",", ""))
        if not re.search(r"\d\s*[-+*/×÷^]\s*[\d(]", lhs):
            continue
        try:
            value = calculate(lhs)
        except CalcError:
            continue
        checked += 1
        wrong += not close(value, rhs, rel=1e-4, abs_tol=1e-2)
    return checked, wrong


def parse_number(text: str) -> float | None:
    """The last number in ``text`` (thousands separators allowed), or None."""
    found = re.findall(r"-?\d[\d,]*(?:\.\d+)?", text or "")
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None
