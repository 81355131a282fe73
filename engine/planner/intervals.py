"""Bounds of aggregated expressions by interval arithmetic: base columns clamped, bounds no row can leave."""

from __future__ import annotations

import math
from dataclasses import dataclass

from sqlglot import exp

from engine import plan as ir
from engine.errors import InvalidSQL, PolicyViolation, Unsupported
from engine.planner.rows import Rows
from engine.planner.sql_forms import ARITHMETIC, is_literal, literal, not_a_number
from engine.planner.temporal import date_part
from engine.sql import fragment

MAX_ROUND_DECIMALS = 15
"""ROUND(x, d) for |d| up to this: a float64 holds about 15 significant digits, so more rounds nothing."""

Interval = tuple[ir.RowExpr, float, float]
"""A row expression and the bounds [low, high] no row's value can leave."""


@dataclass(frozen=True)
class Intervals:
    rows: Rows
    """For CASE conditions, and the names in scope."""

    def interval(self, node: exp.Expression) -> Interval:
        """The expression (base columns clamped to their bounds) and bounds no row can leave."""
        if isinstance(node, exp.Paren):
            return self.interval(node.this)
        if isinstance(node, exp.Column):
            return self._column(node)
        if is_literal(node):
            value = literal(node)
            if isinstance(value.value, bool) or not isinstance(value.value, int | float):
                raise InvalidSQL(f"{fragment(node)} is not a number")
            return value, float(value.value), float(value.value)
        if isinstance(node, exp.Neg):
            expr, low, high = self.interval(node.this)
            return ir.Neg(expr), -high, -low
        if type(node) in ARITHMETIC:
            return self._arith(node)
        part = date_part(self.rows.names, node, clamped=True)
        if part is not None:
            expr, column = part
            values = expr.field.values(*column.date_range)
            return expr, float(values[0]), float(values[-1])
        if isinstance(node, exp.Case):
            return self._case(node)
        if isinstance(node, exp.Round | exp.Cast):
            return self._rounded(node)
        if isinstance(node, exp.Least | exp.Greatest):
            operands = [self.interval(operand) for operand in [node.this, *node.expressions]]
            pick = max if isinstance(node, exp.Greatest) else min
            extreme = ir.Extreme(tuple(o[0] for o in operands), greatest=isinstance(node, exp.Greatest))
            return extreme, pick(o[1] for o in operands), pick(o[2] for o in operands)
        if isinstance(node, exp.Coalesce):
            operands = [self.interval(operand) for operand in [node.this, *node.expressions]]
            return ir.Coalesce(tuple(o[0] for o in operands)), min(o[1] for o in operands), max(o[2] for o in operands)
        raise Unsupported(
            f"{fragment(node)}: inside an aggregate use columns, numbers, + - * /, CASE, LEAST, GREATEST, COALESCE"
        )

    def _column(self, node: exp.Column) -> Interval:
        """A joined attribute between its table's extremes, or a pool column clamped to its declared bounds."""
        names = self.rows.names
        attribute = names.attribute(node)
        if attribute is not None:
            numbers = [value for value in attribute.values if value is not None]
            if not attribute.type.is_numeric or not numbers:
                raise PolicyViolation(f"{fragment(node)}: {attribute.identity} holds no numbers to aggregate")
            return attribute.expr, float(min(numbers)), float(max(numbers))  # type: ignore[type-var, arg-type]
        name, column = names.column(node)
        if not column.type.is_numeric:
            raise PolicyViolation(f"{fragment(node)}: {not_a_number(name, column)}")
        low, high = column.number_bounds
        return ir.Clamp(ir.Col(name), low, high), low, high

    def _arith(self, node: exp.Expression) -> Interval:
        op = ARITHMETIC[type(node)]
        left, left_low, left_high = self.interval(node.this)
        right, right_low, right_high = self.interval(node.expression)
        if op is ir.ArithOp.ADD:
            low, high = left_low + right_low, left_high + right_high
        elif op is ir.ArithOp.SUB:
            low, high = left_low - right_high, left_high - right_low
        else:
            if op is ir.ArithOp.DIV:
                if right_low <= 0 <= right_high:
                    raise Unsupported(
                        f"{fragment(node)}: the divisor's bounds [{right_low:g}, {right_high:g}] include 0, so the "
                        "quotient has no bound; divide by a number, or by a column whose bounds exclude 0"
                    )
                right_low, right_high = 1 / right_high, 1 / right_low
            corners = [a * b for a in (left_low, left_high) for b in (right_low, right_high)]
            low, high = min(corners), max(corners)
        if not (math.isfinite(low) and math.isfinite(high)):
            raise Unsupported(f"{fragment(node)}: the bounds overflow")
        return ir.Arith(op, left, right), low, high

    def _rounded(self, node: exp.Round | exp.Cast) -> Interval:
        """ROUND(x[, d]) and numeric CASTs (to an integer type: rounded); rounding is monotone, so are the bounds."""
        if isinstance(node, exp.Cast):
            target = node.to
            if target.is_type(*exp.DataType.FLOAT_TYPES, exp.DataType.Type.DECIMAL):
                return self.interval(node.this)
            if not target.is_type(*exp.DataType.INTEGER_TYPES):
                raise Unsupported(f"{fragment(node)}: inside an aggregate, CAST to a number type only")
            decimals = 0
        else:
            decimals = _decimals(node)
        expr, low, high = self.interval(node.this)
        return _rounded(expr, decimals), _round_half_away(low, decimals), _round_half_away(high, decimals)

    def _case(self, node: exp.Case) -> Interval:
        if node.this is not None:
            raise Unsupported(
                f"{fragment(node)}: write CASE WHEN <condition> THEN … (simple CASE x WHEN … is not supported)"
            )
        branches = []
        lows, highs = [], []
        for branch in node.args.get("ifs") or []:
            condition = self.rows.predicate(branch.this)
            value, low, high = self.interval(branch.args["true"])
            branches.append((condition, value))
            lows.append(low)
            highs.append(high)
        default = None
        if node.args.get("default") is not None and not isinstance(node.args["default"], exp.Null):
            default, low, high = self.interval(node.args["default"])
            lows.append(low)
            highs.append(high)
        return ir.Case(tuple(branches), default), min(lows), max(highs)


def _decimals(node: exp.Round) -> int:
    """ROUND's places: a whole number within ±MAX_ROUND_DECIMALS (0 when not given)."""
    places = node.args.get("decimals")
    value = literal(places) if places is not None and is_literal(places) else ir.Lit(0)
    if places is not None and not (isinstance(value.value, int) and not isinstance(value.value, bool)):
        raise Unsupported(f"{fragment(node)}: ROUND takes a whole number of decimals")
    decimals = int(value.value)  # type: ignore[arg-type]
    if abs(decimals) > MAX_ROUND_DECIMALS:
        raise Unsupported(f"{fragment(node)}: ROUND takes from {-MAX_ROUND_DECIMALS} to {MAX_ROUND_DECIMALS} decimals")
    return decimals


def _round_half_away(value: float, decimals: int) -> float:
    if decimals < 0:
        return _round_half_away(value / 10.0**-decimals, 0) * 10.0**-decimals
    scale = 10.0**decimals
    return math.copysign(math.floor(abs(value) * scale + 0.5), value) / scale


def _rounded(expr: ir.RowExpr, decimals: int) -> ir.RowExpr:
    """ROUND(x, d); for d < 0 (tens, hundreds) as ROUND(x / 10^-d) * 10^-d, since backends round to places only."""
    if decimals >= 0:
        return ir.Round(expr, decimals)
    step = ir.Lit(10**-decimals)
    return ir.Arith(ir.ArithOp.MUL, ir.Round(ir.Arith(ir.ArithOp.DIV, expr, step), 0), step)
