"""QueryPlan → Polars LazyFrame → exact bounded aggregates.

Member-level bounding is done by aggregating each member's rows per group
first (row count, non-NULL count and integer sum of the clamped values), then
capping: counts at ``max_rows_per_group`` and sums at the member's (floored)
mean times that capped count. Groups beyond ``max_groups`` per member are
dropped at random: the smallest draws of the per-query seeded hash of
``engine.backends.draw``, which the Spark backend computes bit for bit the
same. This two-level aggregation is the least work any member-level bound
needs, and it streams.

NULL and NaN values of a numeric column are NULL: COUNT(col), SUM and AVG
skip them, as SQL does. ±inf are clamped to the bounds. Sources are read with
the declared types, per file and per value (``engine.backends.polars_read``):
values that cannot be read as the declared type become NULL.
"""

from __future__ import annotations

import datetime as dt
import itertools
import secrets
from collections.abc import Callable
from typing import Any

import polars as pl

from engine import plan as ir
from engine.backends import draw as hashing
from engine.backends.base import ExactAggregates
from engine.backends.polars_read import KINDS, check_pool, read_pool, stored_files
from engine.backends.shared import (
    COPY_WORD,
    GROUP_DRAW,
    ROWS,
    SAME_TYPE_ARITHMETIC,
    UNIT_WORD,
    VALUE_WORD,
    counted_columns,
    fixed_name,
    key_type,
    like_regex,
    part_name,
    quantile_parts,
    sample_draw_name,
    value_columns,
)
from engine.dates import DateField, TruncUnit
from engine.sensitivity import chooses_groups

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


def _group_values(column: pl.Series, part: ir.Part) -> list[Any]:
    """One integer per group; for a quantile, each group's values as a NumPy array (no Python object per value)."""
    if part.kind is ir.PartKind.QUANTILE:
        return [values.to_numpy() for values in column]
    return column.to_list()


def bounded_aggregates(plan: ir.QueryPlan, seed: int) -> pl.LazyFrame:
    """The lazy query: one row per public group key (all of them), one Int64 column per part."""
    frame = read_pool(plan.source, stored_files(plan.source))
    read_types = frame.collect_schema()
    if plan.where is not None:
        frame = frame.filter(_row_expr(plan.where))
    if plan.derived:
        frame = frame.with_columns(_row_expr(d.expr).cast(KINDS[d.kind]).alias(d.name) for d in plan.derived)
    for key in plan.group_keys:
        keep = pl.col(key.column).is_not_null() if key.values is None else pl.col(key.column).is_in(list(key.values))
        frame = frame.filter(keep)
    columns = value_columns(plan)
    kinds = dict(plan.source.columns)
    frame = frame.with_columns(
        _fixed_point(value, kinds.get(name, ir.ColumnKind.FLOAT)) for name, value in columns.items()
    )
    keys = [key.column for key in plan.group_keys]
    unit = plan.contribution.unit_column
    if unit is None:
        bounded = _aggregate(frame, keys, _row_level_parts(plan))
    else:
        unit_dtype = read_types.get(unit, pl.String())
        frame = _with_sample_draws(frame, plan, unit_dtype, seed)
        per_member = frame.group_by([unit, *keys]).agg(_member_statistics(plan, columns))
        per_member = per_member.with_columns(_member_level_parts(plan))
        if chooses_groups(plan):
            per_member = _with_word(per_member, unit, unit_dtype, UNIT_WORD)
            per_member = _with_key_words(per_member, plan)
            words = [UNIT_WORD, *(_key_word_name(i) for i in range(len(keys)))]
            per_member = _with_draw(per_member, seed, words, GROUP_DRAW)
            per_member = _keep_random_groups(per_member, unit, pl.col(GROUP_DRAW), plan.contribution.max_groups)
        bounded = _aggregate(per_member, keys, [_combine(plan, i) for i in range(len(plan.parts))])
    return _with_all_keys(bounded, plan)


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


def _row_level_parts(plan: ir.QueryPlan) -> list[pl.Expr]:
    """Each row is a unit: counts and sums over rows need no capping."""
    expressions = []
    for index, part in enumerate(plan.parts):
        if part.kind is ir.PartKind.COUNT_ROWS:
            expression = pl.len().cast(pl.Int64)
        elif part.kind is ir.PartKind.COUNT_VALUES:
            assert part.counted_column is not None
            expression = pl.col(part.counted_column).count().cast(pl.Int64)
        elif part.kind is ir.PartKind.QUANTILE:
            assert part.value is not None
            values = pl.col(fixed_name(part.value.column)).drop_nulls()
            expression = values if plan.group_keys else values.implode()
        else:
            assert part.value is not None
            fixed = pl.col(fixed_name(part.value.column))
            if part.kind is ir.PartKind.CENTERED_SUM:
                fixed = fixed - part.value.center
            expression = fixed.sum()
        expressions.append(expression.alias(part_name(index)))
    return expressions


def _with_sample_draws(frame: pl.LazyFrame, plan: ir.QueryPlan, unit_dtype: pl.DataType, seed: int) -> pl.LazyFrame:
    """Per row, for each quantile part: the draw that orders a member's values in a group (smallest kept).

    The draw hashes the seed, the member, the value and which copy of that
    value it is (1st, 2nd, … within the member and group), so equal values
    are drawn independently and the kept values are a uniform sample.
    """
    quantiles = quantile_parts(plan)
    unit = plan.contribution.unit_column
    if not quantiles or unit is None:
        return frame
    keys = [key.column for key in plan.group_keys]
    frame = _with_word(frame, unit, unit_dtype, UNIT_WORD)
    for index, part in quantiles:
        assert part.value is not None
        fixed = fixed_name(part.value.column)
        frame = frame.with_columns(
            pl.col(fixed).reinterpret(signed=False).alias(VALUE_WORD),
            pl.int_range(pl.len(), dtype=pl.UInt64).over([unit, *keys, fixed]).alias(COPY_WORD),
        )
        frame = _with_draw(frame, seed, [UNIT_WORD, VALUE_WORD, COPY_WORD], sample_draw_name(index))
    return frame


def _member_statistics(plan: ir.QueryPlan, columns: dict[str, ir.FixedPoint]) -> list[pl.Expr]:
    """Per member and group: rows; per column a part reads, non-NULL rows; per summed column, the sum.

    For a quantile, up to ``max_rows_per_group`` of the member's values: those with the smallest draws.
    """
    statistics = [pl.len().cast(pl.Int64).alias(ROWS)]
    cap = plan.contribution.max_rows_per_group
    for index, part in enumerate(plan.parts):
        if part.kind is ir.PartKind.QUANTILE:
            assert part.value is not None
            fixed = pl.col(fixed_name(part.value.column))
            sampled = fixed.sort_by(pl.col(sample_draw_name(index))).drop_nulls().head(cap)
            statistics.append(sampled.alias(part_name(index)))
    statistics += [pl.col(name).count().cast(pl.Int64).alias(f"__n_{name}") for name in counted_columns(plan)]
    statistics += [pl.col(fixed_name(name)).sum().alias(f"__s_{name}") for name in columns]
    return statistics


def _member_level_parts(plan: ir.QueryPlan) -> list[pl.Expr]:
    """Cap one member's contribution to one group: at most ``max_rows_per_group`` rows' worth.

    Sums become the member's floored mean (inside the bounds) times the capped
    count, so a member adds at most ``cap × magnitude`` to a group.
    """
    cap = plan.contribution.max_rows_per_group
    expressions = []
    for index, part in enumerate(plan.parts):
        if part.kind is ir.PartKind.QUANTILE:
            continue  # already bounded: the member's sampled values
        if part.kind is ir.PartKind.COUNT_ROWS:
            expression = pl.min_horizontal(pl.col(ROWS), cap)
        elif part.kind is ir.PartKind.COUNT_UNITS:
            expression = pl.lit(1)  # this member, in this group
        elif part.kind is ir.PartKind.COUNT_VALUES:
            expression = pl.min_horizontal(pl.col(f"__n_{part.counted_column}"), cap)
        else:
            assert part.value is not None
            column = part.value.column
            count = pl.col(f"__n_{column}")
            center = part.value.center if part.kind is ir.PartKind.CENTERED_SUM else 0
            mean = pl.col(f"__s_{column}") // count - center
            expression = pl.when(count > 0).then(mean * pl.min_horizontal(count, cap)).otherwise(0)
        expressions.append(expression.cast(pl.Int64).alias(part_name(index)))
    return expressions


def _combine(plan: ir.QueryPlan, index: int) -> pl.Expr:
    """Members' bounded contributions to a group: summed, or (quantiles) pooled into one list."""
    column = pl.col(part_name(index))
    if plan.parts[index].kind is not ir.PartKind.QUANTILE:
        return column.sum()
    pooled = column.explode().drop_nulls()
    return pooled if plan.group_keys else pooled.implode()


def _keep_random_groups(frame: pl.LazyFrame, unit: str, draw: pl.Expr, max_groups: int) -> pl.LazyFrame:
    """Keep at most ``max_groups`` groups per member: those with the smallest draws (the seed is new every query)."""
    if max_groups == 1:  # the common case: a minimum per member is far cheaper than a rank
        return frame.filter(draw == draw.min().over(unit)).filter(pl.col(unit).is_first_distinct())
    return frame.filter(draw.rank("ordinal").over(unit) <= max_groups)


def _aggregate(frame: pl.LazyFrame, keys: list[str], expressions: list[pl.Expr]) -> pl.LazyFrame:
    return frame.group_by(keys).agg(expressions) if keys else frame.select(expressions)


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


def _with_draw(frame: pl.LazyFrame, seed: int, words: list[str], name: str) -> pl.LazyFrame:
    """Add ``name``: the draw of the word columns ``words``, one column step per word."""
    for step in hashing.draw_steps(seed, [pl.col(word) for word in words], pl.col(name), _UINT64):
        frame = frame.with_columns(step.alias(name))
    return frame


def _key_word_name(index: int) -> str:
    return f"__word_key_{index}"


def _with_key_words(frame: pl.LazyFrame, plan: ir.QueryPlan) -> pl.LazyFrame:
    """Per group key, its word: a public key's position in the policy's key set; a private key's text word."""
    for index, key in enumerate(plan.group_keys):
        if key.values is None:
            frame = _with_word(frame, key.column, pl.String(), _key_word_name(index))
        else:
            positions = list(range(len(key.values)))
            word = pl.col(key.column).replace_strict(list(key.values), positions, return_dtype=pl.UInt64)
            frame = frame.with_columns(word.alias(_key_word_name(index)))
    return frame


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
