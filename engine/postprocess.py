"""Turn noisy parts into the released table: aggregates, SELECT arithmetic, ORDER BY, LIMIT.

Everything here reads noisy values and the plan only, so it costs no privacy.
Counts are clamped at zero, sums of non-negative columns too, and averages
into their column's bounds; an average whose noisy count is below one is NULL.
"""

from __future__ import annotations

import datetime as dt
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field

from engine import plan as ir
from engine import quantiles
from engine.mechanisms import ALPHA, NoisePlan

Value = str | int | float | bool | None
"""A released cell (dates are released as ISO text)."""


@dataclass(frozen=True)
class Table:
    columns: list[str]
    rows: list[list[Value]]
    accuracy: dict[str, float | None]
    notes: list[str] = field(default_factory=list)
    """Cells the arithmetic made NULL (an overflow or a division by zero), by column name."""


def accuracy(
    plan: ir.QueryPlan, noise: NoisePlan, noisy: Sequence[Sequence[int]] | None = None
) -> dict[str, float | None]:
    """Per noisy output column, the 95% half-width for one cell (the worst cell).

    COUNT and SUM come straight from the noise scale. AVG depends on the
    noisy count, so it is known only once released (``noisy``); arithmetic
    between aggregates has none (None).
    """
    result: dict[str, float | None] = {}
    for column in plan.output:
        if isinstance(column.expr, (ir.KeyRef, ir.Lit)):
            continue
        aggregate = plan.aggregates[column.expr.index] if isinstance(column.expr, ir.AggRef) else None
        part = measured_part(plan, column)
        if part is not None:
            result[column.name] = noise.accuracy(part)
        elif aggregate is not None and aggregate.kind is ir.AggregateKind.AVG:
            result[column.name] = None if noisy is None else _average_accuracy(aggregate, noise, noisy)
        else:
            result[column.name] = None
    return result


def measured_part(plan: ir.QueryPlan, column: ir.OutputColumn) -> int | None:
    """The part whose noise alone is ``column``'s accuracy (COUNT, SUM), or None when it needs more.

    AVG's accuracy needs the noisy count, quantiles' is in rows of rank, and
    spreads' and arithmetic's are not computed: none is known before release.
    """
    if not isinstance(column.expr, ir.AggRef):
        return None
    aggregate = plan.aggregates[column.expr.index]
    kind = aggregate.kind
    if kind.is_spread or kind in (ir.AggregateKind.QUANTILE, ir.AggregateKind.AVG):
        return None
    return aggregate.parts[0]


def rank_accuracy(plan: ir.QueryPlan, noise: NoisePlan) -> dict[str, int]:
    """Per quantile output column, the 95% bound on one cell's error in rows of rank (see NoisePlan.rank_accuracy)."""
    result = {}
    for column in plan.output:
        if isinstance(column.expr, ir.AggRef):
            aggregate = plan.aggregates[column.expr.index]
            if aggregate.kind is ir.AggregateKind.QUANTILE:
                result[column.name] = math.ceil(noise.rank_accuracy(aggregate.parts[0]))
    return result


def _average_accuracy(aggregate: ir.Aggregate, noise: NoisePlan, noisy: Sequence[Sequence[int]]) -> float | None:
    """Half-width for ``centred_sum / count`` from each part's interval at α/2 (a union bound).

    With count error ≤ a₁ and centred-sum error ≤ a₂, the mean's error is at
    most (a₂ + M·a₁) / noisy count, M the largest centred value; never more
    than the width of the bounds, since both means lie inside them.
    """
    value = aggregate.value
    assert value is not None
    count_part, sum_part = aggregate.parts
    count_error = noise.accuracy(count_part, ALPHA / 2)
    sum_error = noise.accuracy(sum_part, ALPHA / 2)
    width = (value.upper - value.lower) / value.scale
    per_cell = [
        min((sum_error + value.centered_magnitude / value.scale * count_error) / count, width)
        for count in noisy[count_part]
        if count >= 1
    ]
    return max(per_cell) if per_cell else None


def build_table(
    plan: ir.QueryPlan, noise: NoisePlan, keys: Sequence[tuple[object, ...]], noisy: Sequence[Sequence[int]]
) -> Table:
    key_names = [key.column for key in plan.group_keys]
    noisy = quantiles.in_order(plan.parts, noisy)
    rows = []
    for group, key in enumerate(keys):
        aggregates = [
            _aggregate(aggregate, [noisy[part][group] for part in aggregate.parts]) for aggregate in plan.aggregates
        ]
        keys_by_name = {name: _json_key(value) for name, value in zip(key_names, key, strict=True)}
        if plan.having is not None and not _holds(plan.having, aggregates, keys_by_name):
            continue
        rows.append(
            (
                [_evaluate(column.expr, aggregates, keys_by_name) for column in plan.output],
                [_defined(_evaluate(item.expr, aggregates, keys_by_name)) for item in plan.order_by],
            )
        )
    for position in reversed(range(len(plan.order_by))):
        descending = plan.order_by[position].descending
        rows.sort(key=lambda row: _sort_key(row[1][position], descending), reverse=descending)
    selected = [row for row, _ in rows][plan.offset :]
    if plan.limit is not None:
        selected = selected[: plan.limit]
    columns = [column.name for column in plan.output]
    undefined = [name for position, name in enumerate(columns) if any(_undefined(row[position]) for row in selected)]
    return Table(
        columns,
        [[_defined(cell) for cell in row] for row in selected],
        {name: _defined(half_width) for name, half_width in accuracy(plan, noise, noisy).items()},  # type: ignore[misc]
        [f"{name}: NULL where arithmetic on the noisy values overflowed or divided by zero" for name in undefined],
    )


def _undefined(value: Value) -> bool:
    """±inf or NaN: what arithmetic on noisy values gives on overflow or a zero divisor."""
    return isinstance(value, float) and not math.isfinite(value)


def _defined(value: Value) -> Value:
    """Released cells are finite or NULL, so every JSON document is strict JSON."""
    return None if _undefined(value) else value


def _json_key(value: object) -> object:
    """Date keys are released as ISO text (``2024-03-01``), which sorts and compares as the dates do."""
    return value.isoformat() if isinstance(value, dt.date) else value


def _aggregate(aggregate: ir.Aggregate, values: list[int]) -> Value:
    value = aggregate.value
    if aggregate.kind is ir.AggregateKind.COUNT:
        return max(values[0], 0)
    assert value is not None
    if aggregate.kind is ir.AggregateKind.SUM:
        total = values[0] / value.scale if value.scale != 1 else values[0]
        return max(total, 0) if value.lower >= 0 else total
    if aggregate.kind.is_spread:
        return _spread(aggregate, values)
    if aggregate.kind is ir.AggregateKind.QUANTILE:
        return round(values[0] / value.scale, 6)  # without fixed-point residue (6 digits: finer than the intervals)
    count, centered_sum = values
    if count < 1:
        return None
    mean = (value.center + centered_sum / count) / value.scale
    return min(max(mean, value.lower / value.scale), value.upper / value.scale)


def _spread(aggregate: ir.Aggregate, values: list[int]) -> Value:
    """Variance from noisy count n, centred sum s and sum of centred squares q: q/n − (s/n)², kept in range.

    Values in [L, U] have a variance between 0 and ((U − L)/2)²; the sample
    variance scales by n/(n − 1). NULL when the noisy count is too small.
    """
    value, squares = aggregate.value, aggregate.squares
    assert value is not None and squares is not None
    count, centered_sum, square_sum = values
    sample = aggregate.kind in (ir.AggregateKind.VAR_SAMP, ir.AggregateKind.STDDEV_SAMP)
    if count < (2 if sample else 1):
        return None
    mean = centered_sum / value.scale / count
    variance = square_sum / squares.scale / count - mean * mean
    if sample:
        variance *= count / (count - 1)
    largest = ((value.upper - value.lower) / value.scale / 2) ** 2
    variance = min(max(variance, 0.0), largest)
    stddev = aggregate.kind in (ir.AggregateKind.STDDEV_POP, ir.AggregateKind.STDDEV_SAMP)
    return math.sqrt(variance) if stddev else variance


def _evaluate(expr: ir.PostExpr, aggregates: list[Value], keys: dict[str, object]) -> Value:
    match expr:
        case ir.AggRef(index):
            return aggregates[index]
        case ir.KeyRef(name):
            return keys[name]  # type: ignore[return-value]
        case ir.Lit(value):
            return value.isoformat() if isinstance(value, dt.date) else value
        case ir.PostNeg(operand):
            inner = _evaluate(operand, aggregates, keys)
            return None if inner is None else -_number(inner)
        case ir.PostArith(op, left, right):
            return _arith(op, _evaluate(left, aggregates, keys), _evaluate(right, aggregates, keys))
    raise AssertionError(f"unknown post-processing expression {expr!r}")


def _holds(predicate: ir.PostPredicate, aggregates: list[Value], keys: dict[str, object]) -> bool:
    """SQL's three-valued logic collapsed at the end: NULL (None) keeps no row."""
    return _truth(predicate, aggregates, keys) is True


def _truth(predicate: ir.PostPredicate, aggregates: list[Value], keys: dict[str, object]) -> bool | None:
    match predicate:
        case ir.PostCompare(op, left, right):
            a, b = _defined(_evaluate(left, aggregates, keys)), _defined(_evaluate(right, aggregates, keys))
            return None if a is None or b is None else ir.COMPARISONS[op](a, b)
        case ir.PostAnd(operands):
            values = [_truth(operand, aggregates, keys) for operand in operands]
            return False if False in values else (None if None in values else True)
        case ir.PostOr(operands):
            values = [_truth(operand, aggregates, keys) for operand in operands]
            return True if True in values else (None if None in values else False)
        case ir.PostNot(operand):
            value = _truth(operand, aggregates, keys)
            return None if value is None else not value
    raise AssertionError(f"unknown HAVING condition {predicate!r}")


def _number(value: Value) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    raise TypeError("not a number")


_OPERATIONS = {
    ir.ArithOp.ADD: operator.add,
    ir.ArithOp.SUB: operator.sub,
    ir.ArithOp.MUL: operator.mul,
    ir.ArithOp.DIV: operator.truediv,
}
_INT64 = 2**63


def _arith(op: ir.ArithOp, left: Value, right: Value) -> Value:
    """SQL arithmetic on released numbers; NaN where it has no finite answer (later NULL, with a note)."""
    if left is None or right is None:
        return None
    a, b = _number(left), _number(right)
    if op is ir.ArithOp.DIV and b == 0:
        return math.nan
    try:
        result = _OPERATIONS[op](a, b)
        return float(result) if isinstance(result, int) and abs(result) >= _INT64 else result
    except OverflowError:  # an int too large for a float
        return math.nan


def _sort_key(value: Value, descending: bool) -> tuple[bool, Value]:
    """NULLs sort last in both directions."""
    missing = value is None
    return (not missing if descending else missing, 0 if missing else value)
