"""Row expressions and their types (WHERE, CASE conditions): ill-typed SQL is refused before any data is read."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlglot import exp

from engine import plan as ir
from engine.errors import InvalidSQL, Unsupported
from engine.planner.names import Names
from engine.planner.sql_forms import (
    ARITHMETIC,
    ATTRIBUTE_KINDS,
    COMPARISONS,
    VALUE_TYPES,
    as_text,
    check_comparable,
    date_value,
    dated,
    is_date_literal,
    is_literal,
    literal,
    literal_sides,
    literal_type,
)
from engine.planner.temporal import date_part, date_trunc
from engine.policy import ColumnType
from engine.sql import fragment

MAX_LIKE_PATTERN = 1_000
"""Characters in a LIKE pattern; far longer ones exceed the regex engines' size limits (Polars fails past ~5,000)."""


@dataclass(frozen=True)
class Rows:
    """Translates row conditions and values into typed row expressions."""

    names: Names
    is_aggregate: Callable[[exp.Expression], bool]
    """Whether a node is an aggregate (refused in a row condition); the aggregates pass knows which they are."""

    def predicate(self, node: exp.Expression) -> ir.RowExpr:
        expr, value_type = self.row(node)
        if value_type not in (ir.ValueType.BOOL, ir.ValueType.NULL):
            raise InvalidSQL(f"WHERE needs a true/false condition, not {fragment(node)}")
        return expr

    def row(self, node: exp.Expression) -> tuple[ir.RowExpr, ir.ValueType]:
        """A row expression and its type; refuses ill-typed comparisons up front."""
        if isinstance(node, exp.Paren):
            return self.row(node.this)
        value = self._value(node)
        if value is not None:
            return value
        if type(node) in COMPARISONS:
            left, right = self.comparable(node, node.this, node.expression)
            return ir.Compare(COMPARISONS[type(node)], left, right), ir.ValueType.BOOL
        if type(node) in ARITHMETIC:
            left = self.numeric(node.this)
            right = self.numeric(node.expression)
            return ir.Arith(ARITHMETIC[type(node)], left, right), ir.ValueType.NUMBER
        if isinstance(node, exp.Neg):
            return ir.Neg(self.numeric(node.this)), ir.ValueType.NUMBER
        if isinstance(node, (exp.And, exp.Or)):
            operands = (self.predicate(node.this), self.predicate(node.expression))
            combined = ir.And(operands) if isinstance(node, exp.And) else ir.Or(operands)
            return combined, ir.ValueType.BOOL
        if isinstance(node, exp.Not):
            return ir.Not(self.predicate(node.this)), ir.ValueType.BOOL
        if isinstance(node, exp.In):
            return self._in_list(node), ir.ValueType.BOOL
        if isinstance(node, exp.Between):
            operand, low = self.comparable(node, node.this, node.args["low"])
            _, high = self.comparable(node, node.this, node.args["high"])
            return ir.Between(operand, low, high), ir.ValueType.BOOL
        if isinstance(node, exp.Is):
            if not isinstance(node.expression, exp.Null):
                raise Unsupported(f"only IS NULL / IS NOT NULL are supported, not {fragment(node)}")
            operand, _ = self.row(node.this)
            return ir.IsNull(operand), ir.ValueType.BOOL
        if isinstance(node, (exp.Like, exp.ILike)):
            return self._like(node), ir.ValueType.BOOL
        if self.is_aggregate(node):
            raise InvalidSQL(f"aggregates are not allowed in WHERE: {fragment(node)}")
        raise Unsupported(f"{fragment(node)} is not supported in a row condition")

    def _value(self, node: exp.Expression) -> tuple[ir.RowExpr, ir.ValueType] | None:
        """A column, a literal, a date part or a truncated date; None for any other node."""
        if isinstance(node, exp.Column):
            attribute = self.names.attribute(node)
            if attribute is not None:
                return attribute.expr, ATTRIBUTE_KINDS[attribute.type][1]
            name, column = self.names.column(node)
            return ir.Col(name, as_text=column.type is ColumnType.ID), VALUE_TYPES[column.type]
        if isinstance(node, (exp.Literal, exp.Boolean, exp.Null, exp.Neg)) and is_literal(node):
            value = literal(node)
            return value, literal_type(value)
        if is_date_literal(node):
            return ir.Lit(date_value(node.this.this)), ir.ValueType.DATE
        part = date_part(self.names, node, clamped=False)
        if part is not None:
            return part[0], ir.ValueType.NUMBER
        truncated = date_trunc(self.names, node)
        if truncated is not None:
            return truncated[0], ir.ValueType.DATE
        return None

    def comparable(
        self, node: exp.Expression, left: exp.Expression, right: exp.Expression
    ) -> tuple[ir.RowExpr, ir.RowExpr]:
        """Both sides of a comparison, type-checked; literals compared with an id become text."""
        left_expr, left_type = self.row(left)
        right_expr, right_type = self.row(right)
        left_expr, left_type = dated(left_expr, left_type, right_type)
        right_expr, right_type = dated(right_expr, right_type, left_type)
        check_comparable(node, left_type, right_type, literal=literal_sides(left_expr, right_expr))
        if ir.ValueType.ID in (left_type, right_type):
            return as_text(left_expr), as_text(right_expr)
        return left_expr, right_expr

    def numeric(self, node: exp.Expression) -> ir.RowExpr:
        expr, value_type = self.row(node)
        if value_type not in (ir.ValueType.NUMBER, ir.ValueType.NULL):
            raise InvalidSQL(f"arithmetic needs numbers: {fragment(node)} is not a number")
        return expr

    def _in_list(self, node: exp.In) -> ir.RowExpr:
        if node.args.get("query") or node.args.get("unnest") or node.args.get("field"):
            raise Unsupported(f"IN needs a list of literal values: {fragment(node)}")
        operand, operand_type = self.row(node.this)
        values = []
        for item in node.expressions:
            if not (is_literal(item) or is_date_literal(item)):
                raise Unsupported(f"IN needs a list of literal values: {fragment(item)}")
            written, written_type = self.row(item)
            value, value_type = dated(written, written_type, operand_type)
            assert isinstance(value, ir.Lit)
            check_comparable(node, operand_type, value_type, literal=True)
            values.append(as_text(value) if operand_type is ir.ValueType.ID else value)
        return ir.InList(operand, tuple(values))  # type: ignore[arg-type]  # as_text keeps a literal a literal

    def _like(self, node: exp.Like | exp.ILike) -> ir.RowExpr:
        if node.args.get("escape"):
            raise Unsupported("LIKE … ESCAPE is not supported")
        operand, operand_type = self.row(node.this)
        if operand_type not in (ir.ValueType.STRING, ir.ValueType.ID):
            raise InvalidSQL(f"LIKE needs a text column: {fragment(node)}")
        pattern = node.expression
        if not (isinstance(pattern, exp.Literal) and pattern.is_string):
            raise Unsupported(f"LIKE needs a literal pattern: {fragment(node)}")
        if len(pattern.this) > MAX_LIKE_PATTERN:
            raise Unsupported(
                f"{fragment(node)}: the LIKE pattern is {len(pattern.this)} characters long; the limit is "
                f"{MAX_LIKE_PATTERN}"
            )
        like = ir.Like(operand, pattern.this, case_sensitive=isinstance(node, exp.Like))
        return ir.Not(like) if node.args.get("negate") else like
