"""Binned GROUP BY keys, ``FLOOR(e) * w + c``: integer arithmetic around one FLOOR or CEIL, and each bin's label."""

from __future__ import annotations

import operator
from collections.abc import Callable

from sqlglot import exp

from engine import plan as ir
from engine.errors import Unsupported
from engine.planner.sql_forms import ARITHMETIC, is_literal, literal
from engine.sql import fragment

MAX_EXACT_INTEGER = 2**53
"""Bin labels and the arithmetic that makes them stay within this, where float64 and int64 agree exactly."""
_EVALUATE: dict[type[exp.Expression], Callable[[int, int], int]] = {
    exp.Add: operator.add,
    exp.Sub: operator.sub,
    exp.Mul: operator.mul,
}


def integer(node: exp.Expression) -> ir.Lit:
    value = literal(node) if is_literal(node) else None
    if value is None or isinstance(value.value, bool) or not isinstance(value.value, int):
        raise Unsupported(f"{fragment(node)}: around FLOOR/CEIL use whole numbers")
    return value


def bin_expression(node: exp.Expression, binned: exp.Expression, floored: ir.RowExpr) -> ir.RowExpr:
    """The key as a row expression: integer arithmetic around the one FLOOR/CEIL."""
    if node is binned:
        return floored
    if isinstance(node, exp.Paren):
        return bin_expression(node.this, binned, floored)
    if isinstance(node, exp.Neg):
        return ir.Neg(bin_expression(node.this, binned, floored))
    if type(node) in (exp.Add, exp.Sub, exp.Mul):
        left, right = node.this, node.expression
        if binned in left.walk():
            return ir.Arith(ARITHMETIC[type(node)], bin_expression(left, binned, floored), integer(right))
        return ir.Arith(ARITHMETIC[type(node)], integer(left), bin_expression(right, binned, floored))
    raise Unsupported(f"GROUP BY {fragment(node)}: around FLOOR/CEIL use + - * with whole numbers only")


def bin_label(node: exp.Expression, binned: exp.Expression, value: int) -> int:
    """The key one bin gets: the GROUP BY expression evaluated with FLOOR(…) = ``value``.

    Every step must stay within ±2^53, where the backends' float64 arithmetic and the int64 keys agree exactly.
    """
    if isinstance(node, exp.Paren):
        return bin_label(node.this, binned, value)
    if node is binned:
        label = value
    elif isinstance(node, exp.Neg):
        label = -bin_label(node.this, binned, value)
    else:
        left, right = node.this, node.expression
        evaluate = _EVALUATE[type(node)]
        if binned in left.walk():
            label = evaluate(bin_label(left, binned, value), int(integer(right).value))  # type: ignore[arg-type]
        else:
            label = evaluate(int(integer(left).value), bin_label(right, binned, value))  # type: ignore[arg-type]
    if abs(label) > MAX_EXACT_INTEGER:
        raise Unsupported(f"GROUP BY {fragment(node)}: the bin labels leave ±2^53, where numbers stop being exact")
    return label
