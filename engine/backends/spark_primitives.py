"""``bounding.Primitives`` over Spark DataFrames and Columns, with the Polars backend's results.

Every integer is a BIGINT; sums of nothing are 0 (Spark's are NULL). Like
``spark_exprs``, this module needs pyspark and is only imported once a
dataset asks for Spark.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from engine.backends.spark_exprs import with_draw, with_word

_RANK = "__rank"


class SparkPrimitives:
    """The primitives bounding is written in, as Spark Columns and DataFrame verbs."""

    def column(self, name: str) -> Column:
        return F.col(name)

    def literal(self, value: int) -> Column:
        return F.lit(value).cast("long")

    def int64(self, value: Column) -> Column:
        return value.cast("long")

    def minus(self, value: Column, constant: int) -> Column:
        return value - self.literal(constant)

    def add(self, left: Column, right: Column) -> Column:
        return left + right

    def subtract(self, left: Column, right: Column) -> Column:
        return left - right

    def times(self, left: Column, right: Column) -> Column:
        return left * right

    def floor_divide(self, numerator: Column, divisor: Column) -> Column:
        # Spark's ``div`` truncates toward zero; less the remainder, it divides exactly, rounding toward −∞.
        return F.call_function("div", numerator - F.pmod(numerator, divisor), divisor)

    def remainder(self, value: Column, divisor: Column) -> Column:
        return F.pmod(value, divisor)

    def least(self, value: Column, cap: int) -> Column:
        return F.least(value, self.literal(cap))

    def positive(self, value: Column) -> Column:
        return value > 0

    def when(self, condition: Column, then: Column, otherwise: Column) -> Column:
        return F.when(condition, then).otherwise(otherwise)

    def integer_word(self, value: Column) -> Column:
        return value  # a BIGINT's two's complement bits are its word (``spark_exprs.LongWords``)

    def position(self, column: str, values: tuple[object, ...]) -> Column:
        pairs = itertools.chain.from_iterable((F.lit(value), F.lit(at)) for at, value in enumerate(values))
        return F.element_at(F.create_map(*pairs), F.col(column)).cast("long")

    def occurrence(self, within: Sequence[str]) -> Column:
        # The rows of a window agree on every column of ``within``: ordering by one of them is as good as any order.
        rows = Window.partitionBy(*within).orderBy(within[-1])
        return F.row_number().over(rows) - 1

    def running_sum(self, value: Column, within: str, order: Sequence[str]) -> Column:
        rows = Window.partitionBy(within).orderBy(*order).rowsBetween(Window.unboundedPreceding, Window.currentRow)
        return F.sum(value).over(rows)

    def total(self, value: Column, within: str) -> Column:
        return F.sum(value).over(Window.partitionBy(within))

    def head(self, values: Column, count: Column) -> Column:
        return F.slice(values, 1, count)

    def count_rows(self) -> Column:
        return F.count(F.lit(1))

    def count(self, value: Column) -> Column:
        return F.count(value)

    def sum(self, value: Column) -> Column:
        return F.coalesce(F.sum(value), self.literal(0))

    def largest(self, value: Column) -> Column:
        return F.max(value)

    def median(self, value: Column) -> Column:
        ordered = F.sort_array(F.collect_list(value))
        size = F.size(ordered)
        lower = F.element_at(ordered, F.floor((size - 1) / 2).cast("int") + 1)
        higher = F.element_at(ordered, F.ceil((size - 1) / 2).cast("int") + 1)
        return F.when(size > 0, self.floor_divide(lower + higher, self.literal(2)))

    def values(self, value: Column) -> Column:
        return F.collect_list(value)

    def smallest(self, value: Column, order: Column, count: int) -> Column:
        drawn = F.collect_list(F.when(value.isNotNull(), F.struct(order.alias("d"), value.alias("v"))))
        return F.transform(F.slice(F.array_sort(drawn), 1, count), lambda pair: pair["v"])

    def pooled(self, lists: Column) -> Column:
        return F.flatten(F.collect_list(lists))

    def with_columns(self, frame: DataFrame, columns: Mapping[str, Column]) -> DataFrame:
        return frame.withColumns(dict(columns))

    def aggregate(self, frame: DataFrame, keys: Sequence[str], columns: Mapping[str, Column]) -> DataFrame:
        expressions = [expression.alias(name) for name, expression in columns.items()]
        return frame.groupBy(*keys).agg(*expressions) if keys else frame.agg(*expressions)

    def keep_first(self, frame: DataFrame, within: str, order: str, count: int) -> DataFrame:
        ranked = frame.withColumn(_RANK, F.row_number().over(Window.partitionBy(within).orderBy(order)))
        return ranked.filter(F.col(_RANK) <= count)

    def keep_where(self, frame: DataFrame, condition: Column) -> DataFrame:
        return frame.filter(condition)

    def with_word(self, frame: DataFrame, column: str, integer: bool, name: str) -> DataFrame:
        return with_word(frame, column, integer, name)

    def with_draw(self, frame: DataFrame, seed: int, words: Sequence[str], name: str) -> DataFrame:
        return with_draw(frame, seed, list(words), name)
