"""The plan's expressions as SQL-like text, for people reading an explanation (``coopdp explain``).

Derived columns (``__derived_0``, ``__key_0``) are written out as the expressions they compute, so
the text names only the pool's columns; a public table's lookup shows its first entries.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from engine import plan as ir

_AGGREGATE_NAMES = {
    ir.AggregateKind.COUNT: "COUNT",
    ir.AggregateKind.SUM: "SUM",
    ir.AggregateKind.AVG: "AVG",
    ir.AggregateKind.QUANTILE: "QUANTILE",
    ir.AggregateKind.VAR_POP: "VAR_POP",
    ir.AggregateKind.VAR_SAMP: "VAR_SAMP",
    ir.AggregateKind.STDDEV_POP: "STDDEV_POP",
    ir.AggregateKind.STDDEV_SAMP: "STDDEV_SAMP",
}
ENTRIES_SHOWN = 5
"""Entries of a public table's lookup written out (the rest are counted)."""


class PlanText:
    """Writes one plan's row, post-processing and aggregate expressions as text."""

    def __init__(self, plan: ir.QueryPlan) -> None:
        self.plan = plan
        self.derived: Mapping[str, ir.RowExpr] = {column.name: column.expr for column in plan.derived}

    def column(self, name: str | None) -> str:
        """A column a part or key reads: the pool's column, or the expression a derived column computes."""
        if name is None:
            return "*"
        return self.row(self.derived[name]) if name in self.derived else name

    def row(self, expr: ir.RowExpr) -> str:
        match expr:
            case ir.Col(name):
                return self.column(name)
            case ir.Lit(value):
                return scalar(value)
            case ir.Compare(op, left, right):
                return f"{self.row(left)} {op.value} {self.row(right)}"
            case ir.Arith(op, left, right):
                return f"({self.row(left)} {op.value} {self.row(right)})"
            case ir.Neg(operand):
                return f"-{self.row(operand)}"
            case ir.And(operands):
                return " AND ".join(self._grouped(operand) for operand in operands)
            case ir.Or(operands):
                return " OR ".join(self._grouped(operand) for operand in operands)
            case ir.Not(ir.IsNull(operand)):
                return f"{self.row(operand)} IS NOT NULL"
            case ir.Not(operand):
                return f"NOT {self._grouped(operand)}"
            case ir.InList(operand, values):
                return f"{self.row(operand)} IN ({', '.join(self.row(value) for value in values)})"
            case ir.Between(operand, low, high):
                return f"{self.row(operand)} BETWEEN {self.row(low)} AND {self.row(high)}"
            case ir.IsNull(operand):
                return f"{self.row(operand)} IS NULL"
            case ir.Like(operand, pattern, case_sensitive):
                return f"{self.row(operand)} {'LIKE' if case_sensitive else 'ILIKE'} {scalar(pattern)}"
            case ir.Clamp(operand, low, high):
                return f"CLAMP({self.row(operand)}, {scalar(low)}, {scalar(high)})"
            case ir.Floor(operand, ceiling):
                return f"{'CEIL' if ceiling else 'FLOOR'}({self.row(operand)})"
            case ir.Round(operand, decimals):
                return f"ROUND({self.row(operand)}, {decimals})"
            case ir.Case(branches, default):
                whens = " ".join(f"WHEN {self.row(test)} THEN {self.row(value)}" for test, value in branches)
                otherwise = f" ELSE {self.row(default)}" if default is not None else ""
                return f"CASE {whens}{otherwise} END"
            case ir.Extreme(operands, greatest):
                return f"{'GREATEST' if greatest else 'LEAST'}({', '.join(self.row(o) for o in operands)})"
            case ir.Coalesce(operands):
                return f"COALESCE({', '.join(self.row(operand) for operand in operands)})"
            case ir.DatePart(operand, field):
                return f"EXTRACT({field.value.upper()} FROM {self.row(operand)})"
            case ir.DateTrunc(operand, unit):
                return f"DATE_TRUNC('{unit.value}', {self.row(operand)})"
            case ir.Lookup(key, entries):
                shown = ", ".join(f"{scalar(k)} → {scalar(v)}" for k, v in entries[:ENTRIES_SHOWN])
                more = f", … ({len(entries)} entries)" if len(entries) > ENTRIES_SHOWN else ""
                return f"LOOKUP({self.row(key)}: {shown}{more})"
        raise TypeError(f"no text for {expr!r}")

    def _grouped(self, expr: ir.RowExpr) -> str:
        """A boolean operand, parenthesised where AND/OR would otherwise read ambiguously."""
        text = self.row(expr)
        return f"({text})" if isinstance(expr, ir.And | ir.Or) else text

    def aggregate(self, aggregate: ir.Aggregate) -> str:
        """The SQL aggregate, e.g. ``AVG(hours)``, ``QUANTILE(age, 0.5)``, ``COUNT(DISTINCT member_id)``."""
        name = _AGGREGATE_NAMES[aggregate.kind]
        first = self.plan.parts[aggregate.parts[0]]
        if first.kind is ir.PartKind.COUNT_UNITS:
            return f"COUNT(DISTINCT {self.plan.contribution.unit_column})"
        if first.kind is ir.PartKind.QUANTILE:
            return f"{name}({self.column(first.column)}, {first.alpha:g})"
        column = aggregate.value.column if aggregate.value else first.column
        return f"{name}({self.column(column)})"

    def post(self, expr: ir.PostExpr) -> str:
        match expr:
            case ir.AggRef(index):
                return self.aggregate(self.plan.aggregates[index])
            case ir.KeyRef(name):
                return self.column(name)
            case ir.Lit(value):
                return scalar(value)
            case ir.PostArith(op, left, right):
                return f"({self.post(left)} {op.value} {self.post(right)})"
            case ir.PostNeg(operand):
                return f"-{self.post(operand)}"
        raise TypeError(f"no text for {expr!r}")

    def predicate(self, predicate: ir.PostPredicate) -> str:
        match predicate:
            case ir.PostCompare(op, left, right):
                return f"{self.post(left)} {op.value} {self.post(right)}"
            case ir.PostAnd(operands):
                return " AND ".join(f"({self.predicate(operand)})" for operand in operands)
            case ir.PostOr(operands):
                return " OR ".join(f"({self.predicate(operand)})" for operand in operands)
            case ir.PostNot(operand):
                return f"NOT ({self.predicate(operand)})"
        raise TypeError(f"no text for {predicate!r}")


def scalar(value: ir.Scalar | None) -> str:
    """A literal as SQL writes it: text quoted, dates as DATE '…', NULL, TRUE/FALSE, numbers as Python's shortest."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, dt.date):
        return f"DATE '{value.isoformat()}'"
    return repr(value)
