"""The SELECT list: expressions over aggregates, group keys and literals, evaluated on noisy values after release."""

from __future__ import annotations

from dataclasses import dataclass

from sqlglot import exp

from engine import plan as ir
from engine.errors import InvalidSQL, PolicyViolation, Unsupported
from engine.planner.aggregates import Measures, aggregate_kind
from engine.planner.keys import Grouping
from engine.planner.sql_forms import ARITHMETIC, is_literal, literal
from engine.sql import default_name, fragment


@dataclass(frozen=True)
class PostExprs:
    """Translates expressions over released values; the aggregates they name are added to ``measures``."""

    grouping: Grouping
    measures: Measures

    def post(self, node: exp.Expression) -> ir.PostExpr:
        """An expression over aggregates and group keys, evaluated after noise."""
        if isinstance(node, exp.Paren):
            return self.post(node.this)
        if aggregate_kind(node) is not None:
            return ir.AggRef(self.measures.aggregate(node))
        computed_keys = self.grouping.computed_keys
        if node.sql() in computed_keys:  # a computed GROUP BY key (CASE labels, FLOOR bins)
            return ir.KeyRef(computed_keys[node.sql()])
        if isinstance(node, exp.Column):
            return self._key(node)
        if is_literal(node):
            return literal(node)
        if type(node) in ARITHMETIC:
            return ir.PostArith(ARITHMETIC[type(node)], self.post(node.this), self.post(node.expression))
        if isinstance(node, exp.Neg):
            return ir.PostNeg(self.post(node.this))
        raise Unsupported(f"{fragment(node)} is not supported in the SELECT list")

    def _key(self, node: exp.Column) -> ir.PostExpr:
        """A column outside aggregates: it must be a GROUP BY key (rows are never released)."""
        names = self.measures.context.names
        attribute = names.attribute(node)
        if attribute is not None:
            if attribute.identity not in self.grouping.computed_keys:
                raise InvalidSQL(f"column {fragment(node)} must appear in GROUP BY or be inside an aggregate")
            return ir.KeyRef(self.grouping.computed_keys[attribute.identity])
        name, _ = names.column(node)
        if name not in self.grouping.columns:
            raise InvalidSQL(
                f"column {name} must appear in GROUP BY or be inside an aggregate (rows are never released)"
            )
        return ir.KeyRef(name)


def select_list(select: exp.Select, post: PostExprs) -> tuple[ir.OutputColumn, ...]:
    output: list[ir.OutputColumn] = []
    for item in select.expressions:
        if isinstance(item, exp.Star) or (isinstance(item, exp.Column) and isinstance(item.this, exp.Star)):
            raise PolicyViolation("SELECT * is refused: rows are never released; select aggregates")
        node = item.this if isinstance(item, exp.Alias) else item
        name = item.alias if isinstance(item, exp.Alias) else default_name(node)
        if name.lower() in (column.name.lower() for column in output):
            raise InvalidSQL(f"two output columns are named {name!r}: give one an alias")
        output.append(ir.OutputColumn(name, post.post(node)))
    if not post.measures.aggregates:
        raise PolicyViolation("the query has no aggregate: add COUNT, SUM or AVG (rows are never released)")
    return tuple(output)
