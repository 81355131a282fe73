"""How the SQL spells what the IR models: operators, literals, and the value type of each policy column.

Small pure functions every pass shares; none reads the policy's bounds or decides a key set.
"""

from __future__ import annotations

import datetime as dt
import math

from sqlglot import exp

from engine import plan as ir
from engine.dates import parse_date
from engine.errors import InvalidSQL, Unsupported
from engine.lookup import AttributeType
from engine.policy import ColumnPolicy, ColumnType
from engine.sql import fragment

COMPARISONS: dict[type[exp.Expression], ir.CompareOp] = {
    exp.EQ: ir.CompareOp.EQ,
    exp.NEQ: ir.CompareOp.NEQ,
    exp.LT: ir.CompareOp.LT,
    exp.LTE: ir.CompareOp.LTE,
    exp.GT: ir.CompareOp.GT,
    exp.GTE: ir.CompareOp.GTE,
}
ARITHMETIC: dict[type[exp.Expression], ir.ArithOp] = {
    exp.Add: ir.ArithOp.ADD,
    exp.Sub: ir.ArithOp.SUB,
    exp.Mul: ir.ArithOp.MUL,
    exp.Div: ir.ArithOp.DIV,
}
COLUMN_KINDS = {
    ColumnType.ID: ir.ColumnKind.NATIVE,
    ColumnType.CATEGORY: ir.ColumnKind.TEXT,
    ColumnType.INT: ir.ColumnKind.INT,
    ColumnType.FLOAT: ir.ColumnKind.FLOAT,
    ColumnType.BOOL: ir.ColumnKind.BOOL,
    ColumnType.DATE: ir.ColumnKind.DATE,
    ColumnType.DATETIME: ir.ColumnKind.DATETIME,
}
"""How a backend reads each policy column type."""
VALUE_TYPES = {
    ColumnType.ID: ir.ValueType.ID,
    ColumnType.CATEGORY: ir.ValueType.STRING,
    ColumnType.INT: ir.ValueType.NUMBER,
    ColumnType.FLOAT: ir.ValueType.NUMBER,
    ColumnType.BOOL: ir.ValueType.BOOL,
    ColumnType.DATE: ir.ValueType.DATE,
    ColumnType.DATETIME: ir.ValueType.DATE,
}
"""The value type a policy column has in a row expression."""
ATTRIBUTE_KINDS = {
    AttributeType.TEXT: (ir.ColumnKind.TEXT, ir.ValueType.STRING),
    AttributeType.INT: (ir.ColumnKind.INT, ir.ValueType.NUMBER),
    AttributeType.FLOAT: (ir.ColumnKind.FLOAT, ir.ValueType.NUMBER),
    AttributeType.BOOL: (ir.ColumnKind.BOOL, ir.ValueType.BOOL),
    AttributeType.DATE: (ir.ColumnKind.DATE, ir.ValueType.DATE),
}
"""How a public table's attribute is read, and its value type."""


def literal(node: exp.Expression) -> ir.Lit:
    if isinstance(node, exp.Null):
        return ir.Lit(None)
    if isinstance(node, exp.Boolean):
        return ir.Lit(bool(node.this))
    if isinstance(node, exp.Neg):
        inner = literal(node.this)
        if isinstance(inner.value, bool) or not isinstance(inner.value, (int, float)):
            raise InvalidSQL(f"cannot negate {fragment(node)}")
        return ir.Lit(-inner.value)
    if not isinstance(node, exp.Literal):
        raise Unsupported(f"{fragment(node)} is not a literal value")
    if node.is_string:
        return ir.Lit(node.this)
    text = node.this
    try:
        number: int | float = int(text)
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            raise InvalidSQL(f"{text!r} is not a number") from None
    if isinstance(number, int) and abs(number) >= 2**63:
        number = float(number)
    if isinstance(number, float) and not math.isfinite(number):
        raise InvalidSQL(f"{text!r} is not a finite number")
    return ir.Lit(number)


def literal_type(value_literal: ir.Lit) -> ir.ValueType:
    value = value_literal.value
    if value is None:
        return ir.ValueType.NULL
    if isinstance(value, bool):
        return ir.ValueType.BOOL
    if isinstance(value, str):
        return ir.ValueType.STRING
    if isinstance(value, dt.date):
        return ir.ValueType.DATE
    return ir.ValueType.NUMBER


def is_literal(node: exp.Expression) -> bool:
    if isinstance(node, exp.Neg):
        return isinstance(node.this, exp.Literal) and not node.this.is_string
    return isinstance(node, (exp.Literal, exp.Boolean, exp.Null))


def not_a_number(name: str, column: ColumnPolicy) -> str:
    if column.type.is_temporal:
        return f"{name} is a {column.type}; aggregate a number from it, e.g. EXTRACT(YEAR FROM {name})"
    return f"{name} is a {column.type} column without bounds; SUM, AVG and quantiles need a bounded number"


def is_date_literal(node: exp.Expression) -> bool:
    """``DATE '2024-01-31'`` (sqlglot reads it as a cast of a string)."""
    return (
        isinstance(node, exp.Cast)
        and node.to.is_type(exp.DataType.Type.DATE)
        and isinstance(node.this, exp.Literal)
        and node.this.is_string
    )


def date_value(text: str) -> dt.date:
    try:
        return parse_date(text)
    except ValueError as error:
        raise InvalidSQL(str(error)) from None


def dated(expr: ir.RowExpr, value_type: ir.ValueType, other: ir.ValueType) -> tuple[ir.RowExpr, ir.ValueType]:
    """A text literal compared with a date is read as a date (``d >= '2024-01-01'``)."""
    if other is ir.ValueType.DATE and isinstance(expr, ir.Lit) and isinstance(expr.value, str):
        return ir.Lit(date_value(expr.value)), ir.ValueType.DATE
    return expr, value_type


def literal_sides(*exprs: ir.RowExpr) -> bool:
    return any(isinstance(expr, ir.Lit) for expr in exprs)


def as_text(expr: ir.RowExpr) -> ir.RowExpr:
    if isinstance(expr, ir.Lit) and expr.value is not None and not isinstance(expr.value, str):
        return ir.Lit(str(expr.value))
    return expr


def check_comparable(node: exp.Expression, left: ir.ValueType, right: ir.ValueType, *, literal: bool) -> None:
    """Refuse comparisons whose types differ (they would fail, or silently never match, on data)."""
    if ir.ValueType.NULL in (left, right) or left == right:
        return
    if (
        literal
        and ir.ValueType.ID in (left, right)
        and {left, right} <= {ir.ValueType.ID, ir.ValueType.STRING, ir.ValueType.NUMBER}
    ):
        return
    raise InvalidSQL(f"cannot compare a {left.value} with a {right.value}: {fragment(node)}")
