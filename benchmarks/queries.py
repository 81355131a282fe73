"""The fixed query set, as SQL for the engine and as the least equivalent plain-Polars work.

Row level, the plain equivalent is one aggregation per group. Member level it
is two: per (member, group), then per group, which any member-level bound needs
at least. Peers get the same queries from the same fields (``keys``,
``aggregate``, ``column``, ``where``), each in its own API.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import polars as pl

from benchmarks.generate import MEMBER_BOUNDS

PRIVATE_KEY_DELTA = 1e-6


class Aggregate(StrEnum):
    COUNT = "COUNT"
    SUM = "SUM"
    AVG = "AVG"
    MEDIAN = "MEDIAN"


@dataclass(frozen=True)
class Filter:
    """``age BETWEEN low AND high AND consent_research``: a range on a member attribute and a consent flag."""

    age_low: int
    age_high: int

    def sql(self) -> str:
        return f"age BETWEEN {self.age_low} AND {self.age_high} AND consent_research"

    def expr(self) -> pl.Expr:
        return pl.col("age").is_between(self.age_low, self.age_high) & pl.col("consent_research")


@dataclass(frozen=True)
class BenchQuery:
    """One aggregate of one column (None for COUNT(*)) by zero or more keys, maybe filtered."""

    name: str
    aggregate: Aggregate
    column: str | None
    keys: tuple[str, ...]
    where: Filter | None = None
    private_keys: bool = False
    """Keys not declared public: released by a DP threshold, so the query needs δ."""

    @property
    def delta(self) -> float | None:
        return PRIVATE_KEY_DELTA if self.private_keys else None

    def sql(self, table: str) -> str:
        argument = self.column or "*"
        select = [*self.keys, f"{self.aggregate.value}({argument}) AS value"]
        text = f"SELECT {', '.join(select)} FROM {table}"
        if self.where is not None:
            text += f" WHERE {self.where.sql()}"
        if self.keys:
            text += f" GROUP BY {', '.join(self.keys)}"
        return text

    def plain(self, scan: pl.LazyFrame, unit: str | None) -> pl.LazyFrame:
        """The same answer without privacy: one-level aggregation, or two-level per ``unit`` then per group."""
        frame = scan if self.where is None else scan.filter(self.where.expr())
        if unit is None:
            return _group(frame, list(self.keys), [self._row_aggregate()])
        per_member = frame.group_by([unit, *self.keys]).agg(self._member_statistics())
        return _group(per_member, list(self.keys), [self._combine()])

    def _row_aggregate(self) -> pl.Expr:
        if self.column is None:
            return pl.len().alias("value")
        column = pl.col(self.column)
        match self.aggregate:
            case Aggregate.COUNT:
                return column.count().alias("value")
            case Aggregate.SUM:
                return column.sum().alias("value")
            case Aggregate.AVG:
                return column.mean().alias("value")
            case Aggregate.MEDIAN:
                return column.median().alias("value")

    def _member_statistics(self) -> list[pl.Expr]:
        if self.column is None:
            return [pl.len().alias("n")]
        column = pl.col(self.column)
        if self.aggregate is Aggregate.MEDIAN:
            return [column.median().alias("m")]
        return [column.count().alias("n"), column.sum().alias("s")]

    def _combine(self) -> pl.Expr:
        match self.aggregate:
            case Aggregate.COUNT:
                return pl.col("n").sum().alias("value")
            case Aggregate.SUM:
                return pl.col("s").sum().alias("value")
            case Aggregate.AVG:
                return (pl.col("s").sum() / pl.col("n").sum()).alias("value")
            case Aggregate.MEDIAN:
                return pl.col("m").median().alias("value")


def _group(frame: pl.LazyFrame, keys: list[str], aggregates: list[pl.Expr]) -> pl.LazyFrame:
    return frame.group_by(keys).agg(aggregates) if keys else frame.select(aggregates)


QUERIES: tuple[BenchQuery, ...] = (
    BenchQuery("count_by_region", Aggregate.COUNT, None, ("region",)),
    BenchQuery("sum_by_sector", Aggregate.SUM, "earnings", ("sector",)),
    BenchQuery("avg_by_region", Aggregate.AVG, "hours", ("region",)),
    BenchQuery("count_by_region_sector", Aggregate.COUNT, None, ("region", "sector")),
    BenchQuery("filtered_sum", Aggregate.SUM, "hours", ("region",), where=Filter(25, 40)),
    BenchQuery("median_by_region", Aggregate.MEDIAN, "hours", ("region",)),
    BenchQuery("count_by_postcode", Aggregate.COUNT, None, ("postcode",), private_keys=True),
)
"""4 × 50 = 200 groups is the large public key set; 5,000 postcodes the private one."""

UNIT = MEMBER_BOUNDS.unit
