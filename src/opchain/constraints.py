"""Constraints on parameter settings: a small expression language, parsed and never run as code.

pySPACE filters a grid with ``constraints`` it ``eval``s; opchain reads the same kind of text
(``fold < folds``, ``components >= pca.components``) with Python's parser and walks the tree
itself, accepting only: names (``pca.components`` is one dotted name, looked up whole, never an
attribute), numbers, strings, ``True``/``False``/``None``, comparisons (chained too:
``0 <= fold < folds``), ``and``/``or``/``not``, ``+ - * / // %`` on numbers, and parentheses.
Anything else (calls, attributes of values, subscripts, lambdas, comprehensions, ``**``, names
starting with ``_``) is refused when the text is parsed, so a constraint can only read the values
it is given.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from opchain.errors import OpchainError

__all__ = ["Constraint", "ConstraintError", "parse"]

MAX_LENGTH = 1000  # characters: a constraint is a line
MAX_DEPTH = 50  # nested operations: checking and evaluating recurse once per level

Function = Callable[..., Any]
_COMPARE: dict[type, tuple[str, Function]] = {
    ast.Eq: ("==", operator.eq),
    ast.NotEq: ("!=", operator.ne),
    ast.Lt: ("<", operator.lt),
    ast.LtE: ("<=", operator.le),
    ast.Gt: (">", operator.gt),
    ast.GtE: (">=", operator.ge),
}
_ARITHMETIC: dict[type, tuple[str, Function]] = {
    ast.Add: ("+", operator.add),
    ast.Sub: ("-", operator.sub),
    ast.Mult: ("*", operator.mul),
    ast.Div: ("/", operator.truediv),
    ast.FloorDiv: ("//", operator.floordiv),
    ast.Mod: ("%", operator.mod),
    ast.USub: ("-", operator.neg),
    ast.UAdd: ("+", operator.pos),
}
_LOGIC = (ast.And, ast.Or, ast.Not)
_SAFE_CONSTANTS = (int, float, str, bool, type(None))


class ConstraintError(OpchainError):
    """A constraint that cannot be parsed or evaluated; the message says why, not where (the
    caller adds the file and line)."""


@dataclass(frozen=True)
class Constraint:
    """A parsed constraint: its text, its checked tree and the names it reads."""

    text: str
    tree: ast.expr
    names: tuple[str, ...]  # in order of first appearance

    def holds(self, values: Mapping[str, Any]) -> bool:
        """Whether the constraint holds for ``values`` (name -> value). ConstraintError names a
        missing value or an operation the values do not support (``'a' < 3``, ``1 / 0``)."""
        return bool(_evaluate(self.tree, values))


def parse(text: Any) -> Constraint:
    """Parse ``text`` into a Constraint, or raise ConstraintError saying what is not allowed."""
    if not isinstance(text, str) or not text.strip():
        raise ConstraintError(f"a constraint must be a non-empty string, not {text!r}")
    if len(text) > MAX_LENGTH:
        raise ConstraintError(f"{_short(text)}: longer than {MAX_LENGTH} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as error:
        raise ConstraintError(f"{_short(text)} is not a valid expression ({error.msg})") from None
    except (ValueError, RecursionError, MemoryError) as error:  # a NUL, absurd nesting
        raise ConstraintError(f"{_short(text)} is not a valid expression ({error})") from None
    if _depth(tree) > MAX_DEPTH:
        raise ConstraintError(f"{_short(text)}: nested deeper than {MAX_DEPTH} levels")
    names: dict[str, None] = {}
    _check(tree, text, names)
    return Constraint(text, tree, tuple(names))


def dotted_name(node: ast.AST) -> str | None:
    """``a`` or ``a.b.c`` if ``node`` is a name or a chain of attributes on a name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id, *reversed(parts)])


def _depth(tree: ast.AST) -> int:
    """How deeply the nodes of ``tree`` nest (without recursion: the tree may be deep)."""
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack += [(child, depth + 1) for child in ast.iter_child_nodes(node)]
    return deepest


def _check(node: ast.AST, text: str, names: dict[str, None]) -> None:
    """Refuse every node outside the language; collect the names (dotted ones whole)."""
    name = dotted_name(node)
    if name is not None:
        if any(part.startswith("_") for part in name.split(".")):
            raise ConstraintError(f"{_part(text, node)}: a name may not start with '_'")
        names[name] = None
        return
    if isinstance(node, ast.Constant) and isinstance(node.value, _SAFE_CONSTANTS):
        return
    if isinstance(node, ast.BoolOp | ast.UnaryOp | ast.BinOp | ast.Compare):
        ops = node.ops if isinstance(node, ast.Compare) else [node.op]
        for op in ops:
            if not isinstance(op, _LOGIC) and type(op) not in _COMPARE | _ARITHMETIC:
                raise ConstraintError(
                    f"{_part(text, node)} uses an operator that is not allowed "
                    "(only == != < <= > >=, and or not, + - * / // %)"
                )
        for child in ast.iter_child_nodes(node):  # operands; the operators are not expressions
            if isinstance(child, ast.expr):
                _check(child, text, names)
        return
    raise ConstraintError(
        f"{_part(text, node)} is not allowed (a constraint holds names, numbers, strings, "
        "comparisons, and/or/not and arithmetic)"
    )


def _evaluate(node: ast.expr, values: Mapping[str, Any]) -> Any:
    name = dotted_name(node)
    if name is not None:
        if name not in values:
            raise ConstraintError(f"no value for '{name}'")
        return values[name]
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.BoolOp):  # short-circuits, as Python's and/or
        result: Any = None
        for operand in node.values:
            result = _evaluate(operand, values)
            if bool(result) == isinstance(node.op, ast.Or):
                return result
        return result
    if isinstance(node, ast.UnaryOp):
        operand = _evaluate(node.operand, values)
        return not operand if isinstance(node.op, ast.Not) else _arithmetic(node.op, operand)
    if isinstance(node, ast.BinOp):
        return _arithmetic(node.op, _evaluate(node.left, values), _evaluate(node.right, values))
    assert isinstance(node, ast.Compare)  # _check allowed nothing else
    left = _evaluate(node.left, values)
    for op, right_node in zip(node.ops, node.comparators, strict=True):
        right = _evaluate(right_node, values)
        symbol, compare = _COMPARE[type(op)]
        try:
            if not compare(left, right):
                return False
        except TypeError:
            raise ConstraintError(f"cannot compare {left!r} {symbol} {right!r}") from None
        left = right
    return True


def _arithmetic(op: ast.AST, *operands: Any) -> Any:
    """Arithmetic on numbers only: on strings, ``*`` could build a string of any size."""
    symbol, function = _ARITHMETIC[type(op)]
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in operands):
        shown = " and ".join(repr(v) for v in operands)
        raise ConstraintError(f"{symbol} needs numbers, not {shown}")
    try:
        return function(*operands)
    except ArithmeticError as error:  # 1 / 0, an integer too large for a float
        shown = f" {symbol} ".join(repr(v) for v in operands)
        raise ConstraintError(f"{shown}: {error}") from None


def _short(text: str) -> str:
    return repr(text if len(text) <= 60 else f"{text[:57]}...")


def _part(text: str, node: ast.AST) -> str:
    """The constraint, and the part of it an error is about if that is not all of it."""
    part = ast.unparse(node)
    return _short(text) if part == text.strip() else f"{_short(text)}: {_short(part)}"
