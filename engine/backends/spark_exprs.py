"""QueryPlan row expressions → Spark Columns, with Polars' semantics where Spark's differ.

The Polars backend is the reference; each place where Spark SQL would
silently answer differently is spelled out here:

* division by zero gives ±inf or NaN (IEEE, as Polars), not NULL;
* FLOOR and CEIL stay floating point (Spark's return BIGINT, which saturates);
* ROUND scales, rounds half away from zero and scales back (as Polars), which
  is not Spark's decimal rounding of the shortest printed form (1.005 → 1.0);
* LEAST and GREATEST skip NaN like NULL (Spark orders NaN above everything);
* clamping leaves NaN alone (Spark would compare NaN above the upper bound);
* a NaN that must become an integer fails the query, as Polars' strict cast does.

Every function here needs pyspark; the module is only imported once a
dataset asks for Spark.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from functools import reduce

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from engine import plan as ir
from engine.backends import draw as hashing
from engine.backends.shared import SAME_TYPE_ARITHMETIC, like_regex
from engine.dates import DateField, TruncUnit

_ARITH: dict[ir.ArithOp, Callable[[Column, Column], Column]] = {
    **SAME_TYPE_ARITHMETIC,
    ir.ArithOp.DIV: lambda a, b: ieee_divide(a.cast("double"), b.cast("double")),
}
_DATE_FIELDS: dict[DateField, Callable[[Column], Column]] = {
    DateField.YEAR: F.year,
    DateField.QUARTER: F.quarter,
    DateField.MONTH: F.month,
    DateField.WEEK: F.weekofyear,  # ISO 8601, as Polars' dt.week()
    DateField.DAY: F.dayofmonth,
    DateField.DOW: lambda d: F.dayofweek(d) - 1,  # Spark: Sunday = 1
    DateField.ISODOW: lambda d: F.weekday(d) + 1,  # Spark: Monday = 0
    DateField.DOY: F.dayofyear,
    DateField.HOUR: F.hour,
    DateField.MINUTE: F.minute,
}
_TRUNC_UNITS = {
    TruncUnit.YEAR: "year",
    TruncUnit.QUARTER: "quarter",
    TruncUnit.MONTH: "month",
    TruncUnit.WEEK: "week",  # to Monday, as Polars' "1w"
    TruncUnit.DAY: "day",
}
EXACT_INTEGERS = 2.0**52
"""Doubles at least this large are whole numbers already."""
LONG_RANGE = 2.0**63


def row_expr(expr: ir.RowExpr) -> Column:
    """Compile one row expression; SQL's three-valued logic is Spark's own."""
    match expr:
        case ir.Col(name, as_text):
            return F.col(name).cast("string") if as_text else F.col(name)
        case ir.Lit(value):
            return F.lit(value)
        case ir.Compare(op, left, right):
            return ir.COMPARISONS[op](row_expr(left), row_expr(right))
        case ir.Arith(op, left, right):
            return _ARITH[op](row_expr(left), row_expr(right))
        case ir.Neg(operand):
            return -row_expr(operand)
        case ir.And(operands):
            return reduce(lambda a, b: a & b, (row_expr(operand) for operand in operands))
        case ir.Or(operands):
            return reduce(lambda a, b: a | b, (row_expr(operand) for operand in operands))
        case ir.Not(operand):
            return ~row_expr(operand)
        case ir.InList(operand, values):
            return _in_list(row_expr(operand), values)
        case ir.Between(operand, low, high):
            compared = row_expr(operand)
            return (compared >= row_expr(low)) & (compared <= row_expr(high))
        case ir.IsNull(operand):
            return row_expr(operand).isNull()
        case ir.Like(operand, pattern, case_sensitive):
            return row_expr(operand).rlike(like_regex(pattern, case_sensitive))
        case ir.Clamp(operand, low, high):
            return clamp(row_expr(operand), low, high)
        case ir.Round(operand, decimals):
            return _round(row_expr(operand).cast("double"), decimals)
        case ir.Floor(operand, ceiling):
            return _floor(row_expr(operand).cast("double"), ceiling)
        case ir.Case(branches, default):
            (first_condition, first_value), *rest = branches
            chained = F.when(row_expr(first_condition), row_expr(first_value))
            for condition, label in rest:
                chained = chained.when(row_expr(condition), row_expr(label))
            return chained.otherwise(row_expr(default)) if default is not None else chained
        case ir.Extreme(operands, greatest):
            return _extreme([row_expr(operand) for operand in operands], greatest)
        case ir.Coalesce(operands):
            return F.coalesce(*(row_expr(operand) for operand in operands))
        case ir.DatePart(operand, field):
            return _DATE_FIELDS[field](row_expr(operand)).cast("long")
        case ir.DateTrunc(operand, unit):
            return F.date_trunc(_TRUNC_UNITS[unit], row_expr(operand)).cast("date")
        case ir.Lookup(key, entries):
            table = F.create_map(*(F.lit(item) for entry in entries for item in entry))
            return F.element_at(table, row_expr(key))  # NULL where the key has no entry (non-ANSI)
    raise AssertionError(f"unknown row expression {expr!r}")


def ieee_divide(numerator: Column, divisor: Column) -> Column:
    """``a / b`` on doubles with IEEE results for a zero divisor (Spark's is NULL)."""
    negative_zero = F.when(divisor == 0, divisor.cast("string").startswith("-"))
    signed = F.when(negative_zero, -numerator).otherwise(numerator)
    nan, inf = F.lit(float("nan")), F.lit(float("inf"))
    by_zero = F.when(F.isnan(signed) | (signed == 0), nan).when(signed > 0, inf).otherwise(-inf)
    return (
        F.when(divisor.isNull() | numerator.isNull(), F.lit(None).cast("double"))
        .when(divisor == 0, by_zero)
        .otherwise(numerator / divisor)
    )


def clamp(value: Column, low: float | dt.date, high: float | dt.date) -> Column:
    """Force into ``[low, high]``; NULL and NaN pass through unchanged."""
    clamped = F.when(value < low, F.lit(low)).when(value > high, F.lit(high)).otherwise(value)
    return clamped if isinstance(low, dt.date) else F.when(F.isnan(value), value).otherwise(clamped)


def to_long(value: Column, what: str) -> Column:
    """Truncate a double to BIGINT, failing the query on NaN or out of range (Polars' strict cast)."""
    invalid = F.isnan(value) | (F.abs(value) >= LONG_RANGE)
    return F.when(invalid, F.raise_error(F.lit(f"{what}: a value is NaN or out of the integer range"))).otherwise(
        value.cast("long")
    )


def _in_list(operand: Column, values: tuple[ir.Lit, ...]) -> Column:
    present = [lit.value for lit in values if lit.value is not None]
    # One equality per value, as the Polars backend (numbers of different kinds compare by value).
    matched = reduce(lambda a, b: a | b, (operand == value for value in present)) if present else F.lit(False)
    if len(present) < len(values):  # x IN (…, NULL) is NULL, not false, where x matches nothing
        matched = F.when(matched, F.lit(True))
    return F.when(operand.isNull(), F.lit(None).cast("boolean")).otherwise(matched)


def _floor(number: Column, ceiling: bool) -> Column:
    whole = F.ceil(number) if ceiling else F.floor(number)
    keep = F.isnan(number) | (F.abs(number) >= EXACT_INTEGERS)
    return F.when(keep, number).otherwise(whole.cast("double"))


def _round(number: Column, decimals: int) -> Column:
    """Half away from zero at ``decimals`` places, computed as Polars does: scale, round, scale back."""
    scale = 10.0**decimals
    scaled = number * scale
    rounded = F.when(F.abs(scaled) >= EXACT_INTEGERS, scaled).otherwise(F.round(scaled, 0)) / scale
    finite = ~F.isnan(rounded) & (F.abs(rounded) != float("inf"))
    return F.when(finite, rounded).otherwise(number)


def _extreme(operands: list[Column], greatest: bool) -> Column:
    """LEAST/GREATEST ignoring NULL and NaN; NaN only when nothing else is there."""
    without_nan = [F.when(~F.isnan(operand), operand) for operand in operands]
    combined = F.greatest(*without_nan) if greatest else F.least(*without_nan)
    any_nan = reduce(lambda a, b: a | b, (F.coalesce(F.isnan(operand), F.lit(False)) for operand in operands))
    return F.when(combined.isNull() & any_nan, F.lit(float("nan"))).otherwise(combined)


# --- the shared hash, over signed BIGINT -----------------------------------------


def _signed(word: int) -> int:
    word %= hashing.WORD
    return word - hashing.WORD if word >= 2**63 else word


class LongWords:
    """``draw.Arithmetic`` over Spark BIGINT columns: two's complement wraps like unsigned words (non-ANSI)."""

    def constant(self, value: int) -> Column:
        return F.lit(_signed(value)).cast("long")

    def xor(self, left: Column, right: Column) -> Column:
        return left.bitwiseXOR(right)

    def add(self, left: Column, right: Column) -> Column:
        return left + right

    def times(self, word: Column, constant: int) -> Column:
        return word * self.constant(constant)

    def shift_right(self, word: Column, bits: int) -> Column:
        return F.shiftrightunsigned(word, bits)


LONG_WORDS = LongWords()


def with_word(frame: DataFrame, column: str, is_integer: bool, name: str) -> DataFrame:
    """Add ``name``: the column's words (``draw.reference_word``): integers as themselves, text by its UTF-8 chunks.

    Every step is its own column, as ``draw.mix`` asks.
    """
    null_word = LONG_WORDS.constant(hashing.NULL_WORD)
    if is_integer:
        return frame.withColumn(name, F.coalesce(F.col(column).cast("long"), null_word))
    text = F.col(column).cast("string")
    digits = F.lower(F.hex(text))
    chunks = F.regexp_extract_all(digits, F.lit(f"(.{{1,{hashing.HEX_DIGITS_PER_CHUNK}}})"), 1)
    frame = frame.withColumn(
        name,
        F.transform(chunks, lambda chunk, at: hashing.chunk_input(_hex_long(chunk), at.cast("long"), LONG_WORDS)),
    )
    mixed = F.transform(F.col(name), lambda chunk: hashing.mix(chunk, LONG_WORDS))
    frame = frame.withColumn(name, F.aggregate(mixed, F.lit(0).cast("long"), lambda total, share: total + share))
    frame = frame.withColumn(name, hashing.text_input(F.col(name), F.octet_length(text).cast("long"), LONG_WORDS))
    return frame.withColumn(name, F.coalesce(hashing.mix(F.col(name), LONG_WORDS), null_word))


def with_draw(frame: DataFrame, seed: int, words: list[str], name: str) -> DataFrame:
    """Add ``name``: the draw of the word columns ``words``, one column step per word."""
    for step in hashing.draw_steps(seed, [F.col(word) for word in words], F.col(name), LONG_WORDS):
        frame = frame.withColumn(name, step)
    return frame


def _hex_long(digits: Column) -> Column:
    """At most 14 hex digits (56 bits) as a non-negative BIGINT."""
    return F.conv(digits, 16, 10).cast("long")
