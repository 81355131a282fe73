"""The aggregates pass: each SQL aggregate as the exact bounded parts it is computed from after noise.

Adding an aggregate: its kind in the IR (``AggregateKind``, and a ``PartKind``
if it needs a new statistic), its SQL spelling in ``AGGREGATES``, and its parts
in ``Measures.aggregate``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlglot import exp

from engine import plan as ir
from engine.errors import InvalidSQL, PolicyViolation, Unsupported
from engine.planner.context import PlanContext
from engine.planner.sql_forms import ATTRIBUTE_KINDS, is_literal, literal, not_a_number
from engine.policy import ColumnType
from engine.sensitivity import fixed_point
from engine.sql import fragment

AGGREGATES: dict[type[exp.Expression], ir.AggregateKind] = {
    exp.Count: ir.AggregateKind.COUNT,
    exp.Sum: ir.AggregateKind.SUM,
    exp.Avg: ir.AggregateKind.AVG,
    exp.VariancePop: ir.AggregateKind.VAR_POP,
    exp.Variance: ir.AggregateKind.VAR_SAMP,
    exp.StddevPop: ir.AggregateKind.STDDEV_POP,
    exp.Stddev: ir.AggregateKind.STDDEV_SAMP,
    exp.StddevSamp: ir.AggregateKind.STDDEV_SAMP,
    exp.Median: ir.AggregateKind.QUANTILE,
    exp.Quantile: ir.AggregateKind.QUANTILE,
    exp.ApproxQuantile: ir.AggregateKind.QUANTILE,
    exp.WithinGroup: ir.AggregateKind.QUANTILE,
    exp.Min: ir.AggregateKind.QUANTILE,
    exp.Max: ir.AggregateKind.QUANTILE,
}
EXTREME_QUANTILES: dict[type[exp.Expression], float] = {exp.Min: 0.05, exp.Max: 0.95}
"""MIN and MAX are answered as these DP quantiles (an exact extreme is one member's value)."""


def aggregate_kind(node: exp.Expression) -> ir.AggregateKind | None:
    if isinstance(node, exp.Anonymous) and node.name.upper() == "VAR":
        return ir.AggregateKind.VAR_SAMP
    return AGGREGATES.get(type(node))


def is_aggregate(node: exp.Expression) -> bool:
    return aggregate_kind(node) is not None


@dataclass
class Measures:
    """The aggregates a query names (in the SELECT list, HAVING or ORDER BY) and the parts they read."""

    context: PlanContext
    parts: list[ir.Part] = field(default_factory=list)
    aggregates: list[ir.Aggregate] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def part(self, part: ir.Part) -> int:
        """The index of ``part``, added once however many aggregates read it."""
        if part not in self.parts:
            self.parts.append(part)
        return self.parts.index(part)

    def aggregate(self, node: exp.Expression) -> int:
        """The index of the aggregate ``node`` spells, added once."""
        kind = aggregate_kind(node)
        assert kind is not None
        argument = node.expressions[0] if isinstance(node, exp.Anonymous) and len(node.expressions) == 1 else node.this
        if isinstance(argument, exp.Distinct):
            return self._index(self._count_distinct(node, argument))
        extra = node.expressions[1:] if isinstance(node, exp.Anonymous) else node.expressions
        if extra or argument is None or any(node.args.get(key) for key in ("filter", "ignore_nulls")):
            raise Unsupported(f"{fragment(node)}: extra aggregate arguments are not supported")
        if kind is ir.AggregateKind.QUANTILE:
            aggregate = self._quantile(node)
        elif kind is ir.AggregateKind.COUNT:
            aggregate = self._count(argument)
        else:
            value = self._fixed_point(node, argument)
            if kind is ir.AggregateKind.SUM:
                aggregate = ir.Aggregate(kind, (self.part(ir.Part(ir.PartKind.SUM, value=value)),), value)
            elif kind.is_spread:
                aggregate = self._spread(kind, argument, value)
            else:
                count = self.part(ir.Part(ir.PartKind.COUNT_VALUES, counted_column=value.column))
                centered = self.part(ir.Part(ir.PartKind.CENTERED_SUM, value=value))
                aggregate = ir.Aggregate(kind, (count, centered), value)
        return self._index(aggregate)

    def _index(self, aggregate: ir.Aggregate) -> int:
        if aggregate not in self.aggregates:
            self.aggregates.append(aggregate)
        return self.aggregates.index(aggregate)

    def _spread(self, kind: ir.AggregateKind, argument: exp.Expression, value: ir.FixedPoint) -> ir.Aggregate:
        """Variance parts: count, centred sum, and the sum of squared centred values (bounded by the half-width²)."""
        expr = self.context.intervals.interval(argument)[0]
        centred = ir.Arith(ir.ArithOp.SUB, expr, ir.Lit(value.center / value.scale))
        half_width = value.centered_magnitude / value.scale
        name = self.context.reads.derive(ir.Arith(ir.ArithOp.MUL, centred, centred))
        squares = fixed_point(name, 0.0, half_width**2, integer=False)
        count = self.part(ir.Part(ir.PartKind.COUNT_VALUES, counted_column=value.column))
        centered_sum = self.part(ir.Part(ir.PartKind.CENTERED_SUM, value=value))
        square_sum = self.part(ir.Part(ir.PartKind.SUM, value=squares))
        return ir.Aggregate(kind, (count, centered_sum, square_sum), value, squares)

    def _quantile(self, node: exp.Expression) -> ir.Aggregate:
        """MEDIAN(x), QUANTILE(x, p), APPROX_QUANTILE(x, p), PERCENTILE_CONT(p) WITHIN GROUP (ORDER BY x)."""
        if type(node) in EXTREME_QUANTILES:
            if node.expressions:
                raise Unsupported(f"{fragment(node)}: MIN/MAX of one value only")
            alpha = EXTREME_QUANTILES[type(node)]
            self.notes.append(
                f"{fragment(node)} is answered as the {alpha:g} quantile by a DP mechanism, not as the exact extreme"
            )
            argument = node.this
        else:
            argument, alpha = _quantile_argument(node)
        value = self._fixed_point(node, argument)
        part = self.part(ir.Part(ir.PartKind.QUANTILE, value=value, alpha=alpha))
        return ir.Aggregate(ir.AggregateKind.QUANTILE, (part,), value)

    def _count_distinct(self, node: exp.Expression, argument: exp.Distinct) -> ir.Aggregate:
        """COUNT(DISTINCT unit): members per group, one each, so the bound needs no row cap."""
        columns = argument.expressions
        unit = self.context.policy.unit_column
        if not isinstance(node, exp.Count) or len(columns) != 1 or not isinstance(columns[0], exp.Column):
            raise Unsupported(f"{fragment(node)}: only COUNT(DISTINCT <privacy unit>) is supported")
        name, _ = self.context.names.column(columns[0])
        if unit is None or name != unit:
            raise Unsupported(
                f"{fragment(node)}: COUNT(DISTINCT) is answered only for the privacy unit"
                f"{f' ({unit})' if unit else ' of a member-level dataset'}; one member can hold many distinct "
                "values of another column, so their count has no bound the policy sets: use COUNT(column) instead"
            )
        return ir.Aggregate(ir.AggregateKind.COUNT, (self.part(ir.Part(ir.PartKind.COUNT_UNITS)),))

    def _count(self, argument: exp.Expression) -> ir.Aggregate:
        names = self.context.names
        if isinstance(argument, exp.Star) or (isinstance(argument, exp.Literal) and not argument.is_string):
            part = ir.Part(ir.PartKind.COUNT_ROWS)
        elif isinstance(argument, exp.Column) and (attribute := names.attribute(argument)) is not None:
            name = self.context.reads.derive(attribute.expr, ATTRIBUTE_KINDS[attribute.type][0])
            part = ir.Part(ir.PartKind.COUNT_VALUES, counted_column=name)
        elif isinstance(argument, exp.Column):
            name, _ = names.column(argument)
            part = ir.Part(ir.PartKind.COUNT_VALUES, counted_column=name)
        else:
            name, _, _ = self._derived(argument)
            part = ir.Part(ir.PartKind.COUNT_VALUES, counted_column=name)
        return ir.Aggregate(ir.AggregateKind.COUNT, (self.part(part),))

    def _fixed_point(self, node: exp.Expression, argument: exp.Expression) -> ir.FixedPoint:
        if isinstance(argument, exp.Column) and self.context.names.attribute(argument) is None:
            name, column = self.context.names.column(argument)
            if not column.type.is_numeric:
                raise PolicyViolation(f"{fragment(node)}: {not_a_number(name, column)}")
            low, high = column.number_bounds
            integer = column.type is ColumnType.INT
        else:
            name, low, high = self._derived(argument)
            integer = False
        return fixed_point(name, low, high, integer)

    def _derived(self, node: exp.Expression) -> tuple[str, float, float]:
        """A derived per-row column for an aggregated expression, with bounds by interval arithmetic."""
        expr, low, high = self.context.intervals.interval(node)
        return self.context.reads.derive(expr), low, high


def _quantile_argument(node: exp.Expression) -> tuple[exp.Expression, float]:
    """The value a quantile aggregate ranks, and which quantile (0.5 unless written)."""
    if isinstance(node, exp.Median):
        argument, alpha_node = node.this, None
    elif isinstance(node, exp.WithinGroup):
        percentile, order = node.this, node.expression
        if not isinstance(percentile, exp.PercentileCont | exp.PercentileDisc) or len(order.expressions) != 1:
            raise Unsupported(f"{fragment(node)}: write PERCENTILE_CONT(p) WITHIN GROUP (ORDER BY x)")
        if order.expressions[0].args.get("desc"):
            raise Unsupported(f"{fragment(node)}: order the values ascending")
        argument, alpha_node = order.expressions[0].this, percentile.this
    else:
        argument, alpha_node = node.this, node.args.get("quantile")
    alpha = 0.5
    if alpha_node is not None:
        written = literal(alpha_node) if is_literal(alpha_node) else None
        if written is None or isinstance(written.value, bool) or not isinstance(written.value, int | float):
            raise InvalidSQL(f"{fragment(node)}: the quantile must be a number between 0 and 1")
        alpha = float(written.value)
    if not 0 < alpha < 1:
        raise InvalidSQL(f"{fragment(node)}: the quantile must be strictly between 0 and 1")
    return argument, alpha
