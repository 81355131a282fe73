"""Date parts and truncation of a date or datetime column: EXTRACT, YEAR(d), DATE_TRUNC, CAST(d AS DATE)."""

from __future__ import annotations

import datetime as dt

from sqlglot import exp

from engine import plan as ir
from engine.dates import FIELD_ALIASES, DateField, TruncUnit
from engine.errors import InvalidSQL, Unsupported
from engine.planner.names import Names
from engine.policy import ColumnPolicy, ColumnType
from engine.sql import fragment

DATE_FUNCTIONS: dict[type[exp.Expression], DateField] = {
    exp.Year: DateField.YEAR,
    exp.Quarter: DateField.QUARTER,
    exp.Month: DateField.MONTH,
    exp.Week: DateField.WEEK,
    exp.WeekOfYear: DateField.WEEK,
    exp.Day: DateField.DAY,
    exp.DayOfMonth: DateField.DAY,
    exp.DayOfWeek: DateField.DOW,
    exp.DayOfWeekIso: DateField.ISODOW,
    exp.DayOfYear: DateField.DOY,
    exp.Hour: DateField.HOUR,
    exp.Minute: DateField.MINUTE,
}
"""Function spellings of EXTRACT's parts: YEAR(d), MONTH(d), DAYOFWEEK(d) (0 = Sunday, as EXTRACT(DOW …))."""


def _date_column(names: Names, node: exp.Expression, usage: exp.Expression) -> tuple[str, ColumnPolicy]:
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.Column):
        name, column = names.column(node)
        if column.type.is_temporal:
            return name, column
    raise Unsupported(f"{fragment(usage)}: date parts and DATE_TRUNC take a date or datetime column")


def date_part(names: Names, node: exp.Expression, *, clamped: bool) -> tuple[ir.DatePart, ColumnPolicy] | None:
    """EXTRACT(field FROM d), YEAR(d), MONTH(d), …; with ``clamped``, d is first forced into its range."""
    if isinstance(node, exp.Extract):
        field = FIELD_ALIASES.get(node.this.name.lower())
        if field is None:
            raise Unsupported(f"{fragment(node)}: EXTRACT takes one of {', '.join(f.value.upper() for f in DateField)}")
        operand = node.expression
    elif type(node) in DATE_FUNCTIONS:
        field, operand = DATE_FUNCTIONS[type(node)], node.this
    else:
        return None
    name, column = _date_column(names, operand, node)
    if field.needs_time and column.type is not ColumnType.DATETIME:
        raise InvalidSQL(f"{fragment(node)}: {name} is a date, which has no {field.value}")
    value: ir.RowExpr = ir.Col(name)
    if clamped:
        low, high = column.date_range
        if column.type is ColumnType.DATETIME:
            low, high = dt.datetime.combine(low, dt.time.min), dt.datetime.combine(high, dt.time.max)
        value = ir.Clamp(value, low, high)
    return ir.DatePart(value, field), column


def date_trunc(names: Names, node: exp.Expression) -> tuple[ir.DateTrunc, ColumnPolicy] | None:
    """DATE_TRUNC('month', d) and CAST(d AS DATE): the period's first day, a date."""
    if isinstance(node, exp.Cast) and node.to.is_type(exp.DataType.Type.DATE):
        unit = TruncUnit.DAY
    elif isinstance(node, exp.DateTrunc | exp.TimestampTrunc):
        written = node.args.get("unit")
        units = {unit.value: unit for unit in TruncUnit}
        if not isinstance(written, exp.Literal | exp.Var) or written.name.lower() not in units:
            raise Unsupported(f"{fragment(node)}: DATE_TRUNC takes one of {', '.join(repr(name) for name in units)}")
        unit = units[written.name.lower()]
    else:
        return None
    name, column = _date_column(names, node.this, node)
    return ir.DateTrunc(ir.Col(name), unit), column
