"""QueryPlan → Polars LazyFrame → exact bounded aggregates.

Reading, filtering and clamping to fixed point are done here; the bounding
itself (``engine.backends.bounding``, shared with the Spark backend) runs on
Polars expressions that this module supplies. Its member-level bounding, two
levels of aggregation (per member and group, then per group), is the least
work any member-level bound needs, and it streams.

NULL and NaN values of a numeric column are NULL: COUNT(col), SUM and AVG
skip them, as SQL does. ±inf are clamped to the bounds. Sources are read with
the declared types, per file and per value (``engine.backends.polars_read``):
values that cannot be read as the declared type become NULL.
"""

from __future__ import annotations

import datetime as dt
import itertools
import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import polars as pl

from engine import plan as ir
from engine.backends import bounding
from engine.backends import draw as hashing
from engine.backends.base import ExactAggregates, MemberProfile
from engine.backends.polars_read import KINDS, check_pool, read_pool, stored_files
from engine.backends.shared import (
    SAME_TYPE_ARITHMETIC,
    fixed_name,
    key_type,
    like_regex,
    part_name,
    value_columns,
)
from engine.dates import DateField, TruncUnit

_DATE_FIELDS: dict[DateField, Callable[[pl.Expr], pl.Expr]] = {
    DateField.YEAR: lambda d: d.dt.year(),
    DateField.QUARTER: lambda d: d.dt.quarter(),
    DateField.MONTH: lambda d: d.dt.month(),
    DateField.WEEK: lambda d: d.dt.week(),
    DateField.DAY: lambda d: d.dt.day(),
    DateField.DOW: lambda d: d.dt.weekday() % 7,
    DateField.ISODOW: lambda d: d.dt.weekday(),
    DateField.DOY: lambda d: d.dt.ordinal_day(),
    DateField.HOUR: lambda d: d.dt.hour(),
    DateField.MINUTE: lambda d: d.dt.minute(),
}
_TRUNC_EVERY = {
    TruncUnit.YEAR: "1y",
    TruncUnit.QUARTER: "1q",
    TruncUnit.MONTH: "1mo",
    TruncUnit.WEEK: "1w",
    TruncUnit.DAY: "1d",
}
_ARITH: dict[ir.ArithOp, Callable[[pl.Expr, pl.Expr], pl.Expr]] = {
    **SAME_TYPE_ARITHMETIC,
    ir.ArithOp.DIV: lambda a, b: a.cast(pl.Float64) / b.cast(pl.Float64),
}
_ORDER = "__order"
_KEY_DTYPES: dict[type, pl.DataType] = {
    bool: pl.Boolean(),
    int: pl.Int64(),
    float: pl.Float64(),
    dt.date: pl.Date(),
    str: pl.String(),
}


class PolarsBackend:
    """Runs plans on Polars, streaming."""

    def check_schema(self, plan: ir.QueryPlan) -> None:
        """Fail before charging if the pool cannot serve the plan (metadata only, no rows).

        Every column the plan reads must be stored, in some file, in a type that
        has a text: every value then reads as its declared kind or as NULL
        (``polars_read``), so no cast can fail once the budget is charged.
        """
        check_pool(plan, stored_files(plan.source))

    def execute(self, plan: ir.QueryPlan, seed: int | None = None) -> ExactAggregates:
        frame = bounded_aggregates(plan, secrets.randbits(63) if seed is None else seed)
        result = frame.collect(engine="streaming")
        if plan.group_keys:
            keys = [tuple(row) for row in result.select([key.column for key in plan.group_keys]).iter_rows()]
        else:
            keys = [()] * result.height
        parts = [_group_values(result.get_column(part_name(index)), part) for index, part in enumerate(plan.parts)]
        return ExactAggregates(keys=keys, parts=parts)

    def profile(self, plan: ir.QueryPlan) -> MemberProfile:
        return member_profile(plan)


def _group_values(column: pl.Series, part: ir.Part) -> list[Any]:
    """One integer per group; for a quantile, each group's values as a NumPy array (no Python object per value)."""
    if part.kind is ir.PartKind.QUANTILE:
        return [values.to_numpy() for values in column]
    return column.to_list()


def bounded_aggregates(plan: ir.QueryPlan, seed: int) -> pl.LazyFrame:
    """The lazy query: one row per public group key (all of them), one Int64 column per part."""
    frame, integer_unit = _prepared(plan)
    bounded = bounding.bounded(frame, plan, seed, integer_unit, _PolarsPrimitives(grouped=bool(plan.group_keys)))
    return _with_all_keys(bounded, plan)


def member_profile(plan: ir.QueryPlan) -> MemberProfile:
    """The members' statistics (``bounding.member_profile``), from one read of the pool."""
    frame, _ = _prepared(plan)
    profiles = bounding.member_profile(frame, plan, _PolarsPrimitives(grouped=True))
    collected = pl.collect_all(list(profiles.values()), engine="streaming")
    return MemberProfile(
        {
            name: {int(value): int(members) for value, members in table.iter_rows() if value is not None}
            for name, table in zip(profiles, collected, strict=True)
        }
    )


def _prepared(plan: ir.QueryPlan) -> tuple[pl.LazyFrame, bool]:
    """The plan's rows, read, filtered and clamped to fixed point; and whether the unit is stored as integers."""
    frame = read_pool(plan.source, stored_files(plan.source))
    read_types = frame.collect_schema()
    if plan.where is not None:
        frame = frame.filter(_row_expr(plan.where))
    if plan.derived:
        frame = frame.with_columns(_row_expr(d.expr).cast(_derived_type(d)).alias(d.name) for d in plan.derived)
    for key in plan.group_keys:
        keep = pl.col(key.column).is_not_null() if key.values is None else pl.col(key.column).is_in(list(key.values))
        frame = frame.filter(keep)
    kinds = dict(plan.source.columns)
    frame = frame.with_columns(
        _fixed_point(value, kinds.get(name, ir.ColumnKind.FLOAT)) for name, value in value_columns(plan).items()
    )
    unit = plan.contribution.unit_column
    return frame, unit is not None and read_types.get(unit, pl.String()).is_integer()


def _derived_type(derived: ir.DerivedColumn) -> pl.DataType:
    target = KINDS[derived.kind]
    assert target is not None, "a computed column has a declared kind"
    return target


def _fixed_point(value: ir.FixedPoint, kind: ir.ColumnKind) -> pl.Expr:
    """Clamp to the bounds in integer fixed-point units (NULL stays NULL).

    Integers are clamped as they are; floats are scaled, clamped, then
    truncated, which keeps them inside the integer bounds.
    """
    column = pl.col(value.column)
    if kind is ir.ColumnKind.INT and value.scale == 1:
        return column.clip(value.lower, value.upper).alias(fixed_name(value.column))
    scaled = column.cast(pl.Float64) * value.scale
    return scaled.clip(value.lower, value.upper).cast(pl.Int64).alias(fixed_name(value.column))


def _with_all_keys(bounded: pl.LazyFrame, plan: ir.QueryPlan) -> pl.LazyFrame:
    """Every public key appears, empty groups with zeros, in the policy's key order.

    Neither which groups appear nor their order may depend on the data: a
    missing or reordered empty group would leak. With private keys only the
    observed groups come back (sorted); the threshold decides which are released.
    """
    filled = [
        pl.col(part_name(i)).fill_null(pl.lit([], dtype=pl.List(pl.Int64)) if part.kind is ir.PartKind.QUANTILE else 0)
        for i, part in enumerate(plan.parts)
    ]
    if not plan.group_keys:
        return bounded.with_columns(filled)
    if plan.private_keys:
        return bounded.with_columns(filled).sort([key.column for key in plan.group_keys])
    key_sets = [key.values or () for key in plan.group_keys]
    combinations = list(zip(*itertools.product(*key_sets), strict=True))  # the first key varies slowest
    grid = pl.LazyFrame(
        [
            pl.Series(key.column, list(values), dtype=_KEY_DTYPES[key_type(key_set)])
            for key, key_set, values in zip(plan.group_keys, key_sets, combinations, strict=True)
        ]
    ).with_row_index(_ORDER)
    joined = grid.join(bounded, on=[key.column for key in plan.group_keys], how="left").sort(_ORDER).drop(_ORDER)
    return joined.with_columns(filled)


class _UInt64Words:
    """``draw.Arithmetic`` over Polars ``UInt64`` expressions (Polars integer arithmetic wraps)."""

    def constant(self, value: int) -> pl.Expr:
        return pl.lit(value, dtype=pl.UInt64)

    def xor(self, left: pl.Expr, right: pl.Expr) -> pl.Expr:
        return left.xor(right)

    def add(self, left: pl.Expr, right: pl.Expr) -> pl.Expr:
        return left + right

    def times(self, word: pl.Expr, constant: int) -> pl.Expr:
        return word * pl.lit(constant, dtype=pl.UInt64)

    def shift_right(self, word: pl.Expr, bits: int) -> pl.Expr:
        return word // pl.lit(2**bits, dtype=pl.UInt64)


_UINT64 = _UInt64Words()


def _with_word(frame: pl.LazyFrame, column: str, stored: pl.DataType, name: str) -> pl.LazyFrame:
    """Add ``name``: the column's words (``draw.reference_word``): integers as themselves, else by their text.

    Every step is its own column, as ``draw.mix`` asks.
    """
    null_word = pl.lit(hashing.NULL_WORD, dtype=pl.UInt64)
    if stored.is_integer():
        return frame.with_columns(
            pl.col(column).cast(pl.Int64).reinterpret(signed=False).fill_null(null_word).alias(name)
        )
    text = pl.col(column).cast(pl.String)
    chunks = text.str.encode("hex").str.extract_all(f".{{1,{hashing.HEX_DIGITS_PER_CHUNK}}}")
    chunk = pl.element().str.to_integer(base=16).cast(pl.UInt64)
    inputs = chunks.list.eval(hashing.chunk_input(chunk, pl.int_range(pl.len(), dtype=pl.UInt64), _UINT64))
    frame = frame.with_columns(inputs.alias(name))
    frame = frame.with_columns(pl.col(name).list.eval(hashing.mix(pl.element(), _UINT64)).list.sum().alias(name))
    frame = frame.with_columns(
        hashing.text_input(pl.col(name), text.str.len_bytes().cast(pl.UInt64), _UINT64).alias(name)
    )
    return frame.with_columns(hashing.mix(pl.col(name), _UINT64).fill_null(null_word).alias(name))


def _with_draw(frame: pl.LazyFrame, seed: int, words: Sequence[str], name: str) -> pl.LazyFrame:
    """Add ``name``: the draw of the word columns ``words``, one column step per word."""
    for step in hashing.draw_steps(seed, [pl.col(word) for word in words], pl.col(name), _UINT64):
        frame = frame.with_columns(step.alias(name))
    return frame


class _PolarsPrimitives:
    """``bounding.Primitives`` over Polars lazy frames and expressions.

    Aggregations run inside ``group_by().agg()``, or (without keys) in a
    ``select``, where a list must be imploded to stay one value: ``grouped`` says which.
    """

    def __init__(self, grouped: bool) -> None:
        self._grouped = grouped

    def column(self, name: str) -> pl.Expr:
        return pl.col(name)

    def literal(self, value: int) -> pl.Expr:
        return pl.lit(value)

    def int64(self, value: pl.Expr) -> pl.Expr:
        return value.cast(pl.Int64)

    def minus(self, value: pl.Expr, constant: int) -> pl.Expr:
        return value - constant

    def add(self, left: pl.Expr, right: pl.Expr) -> pl.Expr:
        return left + right

    def subtract(self, left: pl.Expr, right: pl.Expr) -> pl.Expr:
        return left - right

    def times(self, left: pl.Expr, right: pl.Expr) -> pl.Expr:
        return left * right

    def floor_divide(self, numerator: pl.Expr, divisor: pl.Expr) -> pl.Expr:
        return numerator // divisor

    def remainder(self, value: pl.Expr, divisor: pl.Expr) -> pl.Expr:
        return value % divisor

    def least(self, value: pl.Expr, cap: int) -> pl.Expr:
        return pl.min_horizontal(value, cap)

    def positive(self, value: pl.Expr) -> pl.Expr:
        return value > 0

    def when(self, condition: pl.Expr, then: pl.Expr, otherwise: pl.Expr) -> pl.Expr:
        return pl.when(condition).then(then).otherwise(otherwise)

    def integer_word(self, value: pl.Expr) -> pl.Expr:
        return value.reinterpret(signed=False)

    def position(self, column: str, values: tuple[object, ...]) -> pl.Expr:
        positions = list(range(len(values)))
        return pl.col(column).replace_strict(list(values), positions, return_dtype=pl.UInt64)

    def occurrence(self, within: Sequence[str]) -> pl.Expr:
        return pl.int_range(pl.len(), dtype=pl.UInt64).over(within)

    def running_sum(self, value: pl.Expr, within: str, order: Sequence[str]) -> pl.Expr:
        return value.cum_sum().over(within, order_by=list(order))

    def total(self, value: pl.Expr, within: str) -> pl.Expr:
        return value.sum().over(within)

    def head(self, values: pl.Expr, count: pl.Expr) -> pl.Expr:
        return values.list.head(count)

    def count_rows(self) -> pl.Expr:
        return pl.len().cast(pl.Int64)

    def count(self, value: pl.Expr) -> pl.Expr:
        return value.count().cast(pl.Int64)

    def sum(self, value: pl.Expr) -> pl.Expr:
        return value.sum()

    def largest(self, value: pl.Expr) -> pl.Expr:
        return value.max()

    def median(self, value: pl.Expr) -> pl.Expr:
        # the two middle values as integers (a float median would round fixed-point values past 2^53)
        lower, higher = value.quantile(0.5, interpolation="lower"), value.quantile(0.5, interpolation="higher")
        return (lower.cast(pl.Int64) + higher.cast(pl.Int64)) // 2

    def values(self, value: pl.Expr) -> pl.Expr:
        return self._one_list(value.drop_nulls())

    def smallest(self, value: pl.Expr, order: pl.Expr, count: int) -> pl.Expr:
        return value.sort_by(order).drop_nulls().head(count)

    def pooled(self, lists: pl.Expr) -> pl.Expr:
        return self._one_list(lists.explode().drop_nulls())

    def _one_list(self, values: pl.Expr) -> pl.Expr:
        return values if self._grouped else values.implode()

    def with_columns(self, frame: pl.LazyFrame, columns: Mapping[str, pl.Expr]) -> pl.LazyFrame:
        return frame.with_columns(expression.alias(name) for name, expression in columns.items())

    def aggregate(self, frame: pl.LazyFrame, keys: Sequence[str], columns: Mapping[str, pl.Expr]) -> pl.LazyFrame:
        expressions = [expression.alias(name) for name, expression in columns.items()]
        return frame.group_by(keys).agg(expressions) if keys else frame.select(expressions)

    def keep_first(self, frame: pl.LazyFrame, within: str, order: str, count: int) -> pl.LazyFrame:
        drawn = pl.col(order)
        if count == 1:  # the common case: a minimum per member is far cheaper than a rank
            return frame.filter(drawn == drawn.min().over(within)).filter(pl.col(within).is_first_distinct())
        return frame.filter(drawn.rank("ordinal").over(within) <= count)

    def keep_where(self, frame: pl.LazyFrame, condition: pl.Expr) -> pl.LazyFrame:
        return frame.filter(condition)

    def with_word(self, frame: pl.LazyFrame, column: str, integer: bool, name: str) -> pl.LazyFrame:
        return _with_word(frame, column, pl.Int64() if integer else pl.String(), name)

    def with_draw(self, frame: pl.LazyFrame, seed: int, words: Sequence[str], name: str) -> pl.LazyFrame:
        return _with_draw(frame, seed, words, name)


def _row_expr(expr: ir.RowExpr) -> pl.Expr:
    """Compile a WHERE expression; SQL's three-valued logic maps onto Polars' NULLs."""
    match expr:
        case ir.Col(name, as_text):
            return pl.col(name).cast(pl.String) if as_text else pl.col(name)
        case ir.Lit(value):
            return pl.lit(value)
        case ir.Compare(op, left, right):
            return ir.COMPARISONS[op](_row_expr(left), _row_expr(right))
        case ir.Arith(op, left, right):
            return _ARITH[op](_row_expr(left), _row_expr(right))
        case ir.Neg(operand):
            return -_row_expr(operand)
        case ir.And(operands):
            return pl.all_horizontal(_row_expr(operand) for operand in operands)
        case ir.Or(operands):
            return pl.any_horizontal(_row_expr(operand) for operand in operands)
        case ir.Not(operand):
            return ~_row_expr(operand)
        case ir.InList(operand, values):
            present = [lit.value for lit in values if lit.value is not None]
            # One equality per value, not is_in: Polars refuses is_in across number kinds (age IN (1.5), hours IN (1)).
            matched = pl.any_horizontal(_row_expr(operand) == value for value in present) if present else pl.lit(False)
            # x IN (…, NULL) is NULL, not false, where x matches nothing (SQL semantics).
            if len(present) < len(values):
                matched = pl.when(matched).then(True).otherwise(None)
            return pl.when(_row_expr(operand).is_null()).then(None).otherwise(matched)
        case ir.Between(operand, low, high):
            compared = _row_expr(operand)
            return (compared >= _row_expr(low)) & (compared <= _row_expr(high))
        case ir.IsNull(operand):
            return _row_expr(operand).is_null()
        case ir.Like(operand, pattern, case_sensitive):
            return _row_expr(operand).str.contains(like_regex(pattern, case_sensitive))
        case ir.Clamp(operand, low, high):
            return _row_expr(operand).clip(low, high)
        case ir.Round(operand, decimals):
            return _row_expr(operand).cast(pl.Float64).round(decimals, mode="half_away_from_zero")
        case ir.Floor(operand, ceiling):
            number = _row_expr(operand).cast(pl.Float64)
            return number.ceil() if ceiling else number.floor()
        case ir.Case(branches, default):
            (first_condition, first_value), *rest = branches
            chained: Any = pl.when(_row_expr(first_condition)).then(_row_expr(first_value))
            for condition, label in rest:
                chained = chained.when(_row_expr(condition)).then(_row_expr(label))
            return chained.otherwise(_row_expr(default) if default is not None else pl.lit(None))
        case ir.Extreme(operands, greatest):
            combine = pl.max_horizontal if greatest else pl.min_horizontal
            return combine(_row_expr(operand) for operand in operands)
        case ir.Coalesce(operands):
            return pl.coalesce(_row_expr(operand) for operand in operands)
        case ir.DatePart(operand, field):
            return _DATE_FIELDS[field](_row_expr(operand)).cast(pl.Int64)
        case ir.DateTrunc(operand, unit):
            return _row_expr(operand).dt.truncate(_TRUNC_EVERY[unit]).cast(pl.Date)
        case ir.Lookup(key, entries):
            keys, values = zip(*entries, strict=True)
            return _row_expr(key).replace_strict(list(keys), list(values), default=None)
    raise AssertionError(f"unknown row expression {expr!r}")
