"""The plan IR's measured side: sources, fixed-point bounds, contribution bounds, parts, aggregates, group keys.

What the backends compute exactly and what the sensitivity of each part is derived from
(:mod:`engine.sensitivity`), fixed from the policy and the query text only.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Literal

from engine.plan_rows import RowExpr, Scalar

# --- sources, bounds and contribution ------------------------------------------


class SourceFormat(Enum):
    PARQUET = "parquet"
    CSV = "csv"


class ColumnKind(Enum):
    """How a backend reads a column: as text, integer, float, boolean, or as stored (ids)."""

    NATIVE = "native"
    TEXT = "text"
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    DATE = "date"
    DATETIME = "datetime"


@dataclass(frozen=True)
class DerivedColumn:
    """A per-row value an aggregate reads (``SUM(hours * 2)``), computed by the backend after filtering."""

    name: str
    expr: RowExpr
    kind: ColumnKind = ColumnKind.FLOAT
    """FLOAT for values aggregated; TEXT, INT or FLOAT for a computed group key (``CASE … END``)."""


@dataclass(frozen=True)
class Source:
    paths: tuple[Path, ...]
    format: SourceFormat
    columns: tuple[tuple[str, ColumnKind], ...]
    """The columns the query reads, each cast (never failing: bad values become NULL) to its kind."""
    uri: str | None = None
    """A location only a cluster backend reads (``s3a://…``, ``hdfs://…``), as given; ``paths`` is then empty."""
    formats: tuple[tuple[str, str], ...] = ()
    """Date and datetime columns whose policy declares how their text is written (``%d/%m/%Y``); others are ISO."""


@dataclass(frozen=True)
class FixedPoint:
    """A numeric column clamped to ``[lower, upper]`` and summed as integers.

    A value ``v`` becomes ``round(clamp(v) * scale)``; the integer bounds are
    ``lower * scale`` and ``upper * scale``. ``scale`` is a power of two small
    enough that no sum over ``MAX_ROWS`` rows can overflow a signed 64-bit
    integer.
    """

    column: str
    lower: int
    upper: int
    scale: int

    @property
    def center(self) -> int:
        return (self.lower + self.upper) // 2

    @property
    def magnitude(self) -> int:
        """The largest absolute value one row can add to a plain sum."""
        return max(abs(self.lower), abs(self.upper))

    @property
    def centered_magnitude(self) -> int:
        """The largest absolute value one row can add to a sum centred on ``center``."""
        return max(self.center - self.lower, self.upper - self.center)


@dataclass(frozen=True)
class Contribution:
    """How much one privacy unit may add to one query, in one of two modes.

    ``unit_column`` is None at row level (each row is its own unit, so one row
    touches one group once).

    * Per group (``max_rows_per_member`` None): a unit keeps at most
      ``max_groups`` groups and at most ``max_rows_per_group`` rows' worth in each.
    * Total (``max_rows_per_member`` set, :attr:`total`): a unit's rows over
      all groups together are capped at ``max_rows_per_member`` (an L1 bound),
      by systematic sampling across its groups (``engine.backends.bounding``).
      ``max_groups`` and ``max_rows_per_group`` then bound nothing the
      backends or the sensitivity use; the planner sets both to
      ``max_rows_per_member``, which they are implied by (a unit with at most
      N rows touches at most N groups, with at most N rows in each).
    """

    unit_column: str | None
    max_groups: int
    max_rows_per_group: int
    max_rows_per_member: int | None = None
    """Set in the total-contribution mode: each unit's rows across all groups, in total."""

    @property
    def total(self) -> bool:
        """Whether a unit's rows are capped in total over all groups (``max_rows_per_member``), not per group."""
        return self.max_rows_per_member is not None

    @property
    def group_cap(self) -> int:
        """The most groups one unit keeps rows in: ``max_groups``, or in total mode ``max_rows_per_member``."""
        return self.max_rows_per_member if self.max_rows_per_member is not None else self.max_groups

    @property
    def row_cap(self) -> int:
        """The most rows one unit keeps in one group: ``max_rows_per_group``, in total mode ``max_rows_per_member``."""
        return self.max_rows_per_member if self.max_rows_per_member is not None else self.max_rows_per_group


BoundSetting = int | Literal["auto"] | None
"""A contribution bound as the policy sets it: a number, ``"auto"``, or not offered."""


@dataclass(frozen=True)
class AutoBounds:
    """The policy's bounds when any the query uses is ``"auto"``: chosen per query, after the charge, by a DP release.

    The plan's :class:`Contribution` then holds the largest bounds the choice
    may make (every ``"auto"`` at ``limit``), and its parts' value bounds the
    ``columns``' whole ranges: the plan is checked and its noise calibrated at
    those before the charge, so that no choice can fail after it.
    """

    max_groups: BoundSetting
    max_rows_per_group: BoundSetting
    max_rows_per_member: BoundSetting
    limit: int
    share: float
    """The share of the query's loss (ε, or ρ under zCDP) the choice spends."""
    columns: tuple[str, ...] = ()
    """Columns with ``bounds = "auto"`` the query sums, averages or ranks: their upper clamp bound is chosen too."""


# --- measured parts and aggregates ---------------------------------------------


class PartKind(Enum):
    """An exact, bounded integer statistic per group; each gets its own noise."""

    COUNT_ROWS = "count_rows"
    COUNT_VALUES = "count_values"
    COUNT_UNITS = "count_units"
    """Distinct privacy units (members) per group: each adds at most one to a group."""
    SUM = "sum"
    CENTERED_SUM = "centered_sum"
    QUANTILE = "quantile"
    """A quantile per group, chosen by OpenDP's exponential mechanism among candidates in the bounds.

    Its sensitivity is in rows: a unit adds or removes at most ``max_rows_per_group`` values per group
    (in total mode at most ``max_rows_per_member`` values over all groups, so at most that many in one).
    """


@dataclass(frozen=True)
class Part:
    kind: PartKind
    value: FixedPoint | None = None
    """The bounded column summed (SUM, CENTERED_SUM) or counted (COUNT_VALUES)."""

    counted_column: str | None = None
    """For COUNT_VALUES: the column whose non-NULL rows are counted."""

    alpha: float | None = None
    """For QUANTILE: which quantile (0.5 for the median)."""

    @property
    def column(self) -> str | None:
        """The column this part counts or sums; None for COUNT(*) and for counts of units."""
        return self.value.column if self.value else self.counted_column

    @property
    def label(self) -> str:
        return f"{self.kind.value}({self.column or '*'})"


class AggregateKind(Enum):
    COUNT = "count"
    SUM = "sum"
    AVG = "avg"
    QUANTILE = "quantile"
    VAR_POP = "var_pop"
    VAR_SAMP = "var_samp"
    STDDEV_POP = "stddev_pop"
    STDDEV_SAMP = "stddev_samp"

    @property
    def is_spread(self) -> bool:
        """Variance or standard deviation: from a count, a centred sum and a sum of centred squares."""
        return self in (
            AggregateKind.VAR_POP,
            AggregateKind.VAR_SAMP,
            AggregateKind.STDDEV_POP,
            AggregateKind.STDDEV_SAMP,
        )


@dataclass(frozen=True)
class Aggregate:
    """A SQL aggregate, computed after noise from the parts it names (indices into ``QueryPlan.parts``)."""

    kind: AggregateKind
    parts: tuple[int, ...]
    value: FixedPoint | None = None
    squares: FixedPoint | None = None
    """For variance and standard deviation: the summed squares of centred values."""


@dataclass(frozen=True)
class GroupKey:
    column: str
    values: tuple[Scalar, ...] | None
    """The public key set: every key is in the output, empty groups included.

    None for private keys: only keys that pass a DP threshold are released.
    """
