"""HAVING, ORDER BY, LIMIT and OFFSET: post-processing of released values, so they cost nothing."""

from __future__ import annotations

from dataclasses import dataclass

from sqlglot import exp

from engine import plan as ir
from engine.errors import InvalidSQL, Unsupported
from engine.planner.output import PostExprs
from engine.planner.sql_forms import COMPARISONS, VALUE_TYPES, is_literal, literal, literal_type
from engine.sql import fragment


def having(select: exp.Select, output: tuple[ir.OutputColumn, ...], post: PostExprs) -> ir.PostPredicate | None:
    clause = select.args.get("having")
    if clause is None:
        return None
    aliases = {column.name.lower(): column.expr for column in output}
    return _Having(post, aliases).predicate(clause.this)


@dataclass(frozen=True)
class _Having:
    """A HAVING condition, where an output alias names its column (unless it is also a group key)."""

    post: PostExprs
    aliases: dict[str, ir.PostExpr]

    def predicate(self, node: exp.Expression) -> ir.PostPredicate:
        """A condition on released values: comparisons of aggregates, keys, aliases and literals."""
        if isinstance(node, exp.Paren):
            return self.predicate(node.this)
        if isinstance(node, (exp.And, exp.Or)):
            operands = (self.predicate(node.this), self.predicate(node.expression))
            return ir.PostAnd(operands) if isinstance(node, exp.And) else ir.PostOr(operands)
        if isinstance(node, exp.Not):
            return ir.PostNot(self.predicate(node.this))
        if type(node) in COMPARISONS:
            left, right = self.operand(node.this), self.operand(node.expression)
            self.check_comparable(node, left, right)
            return ir.PostCompare(COMPARISONS[type(node)], left, right)
        if isinstance(node, exp.Between):
            operand = self.operand(node.this)
            low, high = self.operand(node.args["low"]), self.operand(node.args["high"])
            self.check_comparable(node, operand, low)
            self.check_comparable(node, operand, high)
            return ir.PostAnd(
                (ir.PostCompare(ir.CompareOp.GTE, operand, low), ir.PostCompare(ir.CompareOp.LTE, operand, high))
            )
        if isinstance(node, exp.In) and not node.args.get("query") and node.expressions:
            operand = self.operand(node.this)
            choices = []
            for item in node.expressions:
                if not is_literal(item):
                    raise Unsupported(f"IN needs a list of literal values: {fragment(item)}")
                value = literal(item)
                self.check_comparable(node, operand, value)
                choices.append(ir.PostCompare(ir.CompareOp.EQ, operand, value))
            return ir.PostOr(tuple(choices))
        raise Unsupported(
            f"HAVING {fragment(node)}: compare aggregates, keys and literals (=, <, BETWEEN, IN) with AND/OR/NOT"
        )

    def operand(self, node: exp.Expression) -> ir.PostExpr:
        if isinstance(node, exp.Column) and not node.table and node.name.lower() in self.aliases:
            if node.name not in self.post.grouping.columns:
                return self.aliases[node.name.lower()]
        return self.post.post(node)

    def check_comparable(self, node: exp.Expression, left: ir.PostExpr, right: ir.PostExpr) -> None:
        left_type, right_type = self._type(left), self._type(right)
        if ir.ValueType.NULL not in (left_type, right_type) and left_type != right_type:
            raise InvalidSQL(f"cannot compare a {left_type.value} with a {right_type.value}: {fragment(node)}")

    def _type(self, expr: ir.PostExpr) -> ir.ValueType:
        if isinstance(expr, ir.KeyRef):
            policy = self.post.measures.context.policy
            return self.post.grouping.key_types.get(expr.name) or VALUE_TYPES[policy.columns[expr.name].type]
        if isinstance(expr, ir.Lit):
            return literal_type(expr)
        return ir.ValueType.NUMBER


def order_by(select: exp.Select, output: tuple[ir.OutputColumn, ...], post: PostExprs) -> tuple[ir.OrderItem, ...]:
    order = select.args.get("order")
    if order is None:
        return ()
    items = []
    by_name = {column.name.lower(): column.expr for column in output}
    for ordered in order.expressions:
        node = ordered.this
        if isinstance(node, exp.Column) and not node.table and node.name.lower() in by_name:
            expr = by_name[node.name.lower()]
        elif isinstance(node, exp.Literal) and not node.is_string:
            position = int(node.this) if node.this.isdigit() else 0
            if not 1 <= position <= len(output):
                raise InvalidSQL(f"ORDER BY {node.this}: there are {len(output)} output columns")
            expr = output[position - 1].expr
        else:
            expr = post.post(node)
        items.append(ir.OrderItem(expr, descending=bool(ordered.args.get("desc"))))
    return tuple(items)


def limit(select: exp.Select) -> tuple[int | None, int]:
    """LIMIT and OFFSET: (None, 0) when not written."""
    clause = select.args.get("limit")
    offset = select.args.get("offset")
    return (
        _non_negative_int(clause.expression, "LIMIT") if clause is not None else None,
        _non_negative_int(offset.expression, "OFFSET") if offset is not None else 0,
    )


def _non_negative_int(node: exp.Expression, clause: str) -> int:
    if isinstance(node, exp.Literal) and not node.is_string and node.this.isdigit():
        return int(node.this)
    raise InvalidSQL(f"{clause} needs a non-negative whole number, not {fragment(node)}")
