"""The QueryPlan: a small, typed, backend-free description of one query.

It imports neither Polars nor OpenDP, so any backend (Polars today, Spark
later) compiles the same plan. Everything privacy-relevant (value bounds,
fixed-point scales, contribution bounds) is fixed here, from the policy and
the query text only.
"""

from __future__ import annotations

import datetime as dt
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from engine.dates import DateField, TruncUnit

# --- row expressions (WHERE) ---------------------------------------------------


class ValueType(Enum):
    """The logical type of a row expression, used to refuse ill-typed SQL early."""

    STRING = "string"
    NUMBER = "number"
    BOOL = "bool"
    ID = "id"
    DATE = "date"
    NULL = "null"


Scalar = str | int | float | bool | dt.date
"""A value a query may name: a literal, a key, a public table's entry."""


@dataclass(frozen=True)
class Col:
    name: str
    as_text: bool = False
    """Read as text (id columns, whose stored type the policy does not fix, compare as text)."""


@dataclass(frozen=True)
class Lit:
    value: Scalar | None


class CompareOp(Enum):
    EQ = "="
    NEQ = "<>"
    LT = "<"
    LTE = "<="
    GT = ">"
    GTE = ">="


COMPARISONS: dict[CompareOp, Callable[[Any, Any], Any]] = {
    CompareOp.EQ: operator.eq,
    CompareOp.NEQ: operator.ne,
    CompareOp.LT: operator.lt,
    CompareOp.LTE: operator.le,
    CompareOp.GT: operator.gt,
    CompareOp.GTE: operator.ge,
}
"""Each comparison as a Python operator: what post-processing applies to noisy values, and what Polars
expressions and Spark columns both overload."""


@dataclass(frozen=True)
class Compare:
    op: CompareOp
    left: RowExpr
    right: RowExpr


class ArithOp(Enum):
    ADD = "+"
    SUB = "-"
    MUL = "*"
    DIV = "/"


@dataclass(frozen=True)
class Arith:
    op: ArithOp
    left: RowExpr
    right: RowExpr


@dataclass(frozen=True)
class Neg:
    operand: RowExpr


@dataclass(frozen=True)
class And:
    operands: tuple[RowExpr, ...]


@dataclass(frozen=True)
class Or:
    operands: tuple[RowExpr, ...]


@dataclass(frozen=True)
class Not:
    operand: RowExpr


@dataclass(frozen=True)
class InList:
    operand: RowExpr
    values: tuple[Lit, ...]


@dataclass(frozen=True)
class Between:
    operand: RowExpr
    low: RowExpr
    high: RowExpr


@dataclass(frozen=True)
class IsNull:
    operand: RowExpr


@dataclass(frozen=True)
class Like:
    """SQL LIKE: ``%`` any run, ``_`` one character; ``case_sensitive=False`` for ILIKE."""

    operand: RowExpr
    pattern: str
    case_sensitive: bool


@dataclass(frozen=True)
class Clamp:
    """A value forced into its declared bounds (inside aggregated expressions): numbers, or dates."""

    operand: RowExpr
    low: float | dt.date
    high: float | dt.date


@dataclass(frozen=True)
class Case:
    branches: tuple[tuple[RowExpr, RowExpr], ...]
    """(condition, value) pairs, tried in order."""
    default: RowExpr | None
    """The ELSE value; None gives NULL."""


@dataclass(frozen=True)
class Floor:
    """FLOOR (``ceiling=False``) or CEIL of a number."""

    operand: RowExpr
    ceiling: bool


@dataclass(frozen=True)
class Round:
    """ROUND to ``decimals`` places (half away from zero, as SQL does)."""

    operand: RowExpr
    decimals: int


@dataclass(frozen=True)
class Extreme:
    """LEAST (``greatest=False``) or GREATEST of the operands, ignoring NULLs."""

    operands: tuple[RowExpr, ...]
    greatest: bool


@dataclass(frozen=True)
class Coalesce:
    operands: tuple[RowExpr, ...]


@dataclass(frozen=True)
class DatePart:
    """EXTRACT(field FROM operand): an integer part of a date or timestamp."""

    operand: RowExpr
    field: DateField


@dataclass(frozen=True)
class DateTrunc:
    """DATE_TRUNC(unit, operand): the first day of the period, as a date."""

    operand: RowExpr
    unit: TruncUnit


@dataclass(frozen=True)
class Lookup:
    """A public table's attribute for the row's join key (JOIN … USING): NULL where the key has no entry."""

    key: RowExpr
    entries: tuple[tuple[Scalar, Scalar | None], ...]
    """(key, attribute value) pairs; keys are unique."""


RowExpr = (
    Col
    | Lit
    | Compare
    | Arith
    | Neg
    | And
    | Or
    | Not
    | InList
    | Between
    | IsNull
    | Like
    | Clamp
    | Floor
    | Round
    | Case
    | Extreme
    | Coalesce
    | DatePart
    | DateTrunc
    | Lookup
)


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
    """How much one privacy unit may add to one query.

    ``unit_column`` is None at row level (each row is its own unit, so one row
    touches one group once).
    """

    unit_column: str | None
    max_groups: int
    max_rows_per_group: int


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

    Its sensitivity is in rows: a unit adds or removes at most ``max_rows_per_group`` values per group.
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


# --- post-processing (on noisy values only) ------------------------------------


@dataclass(frozen=True)
class AggRef:
    index: int


@dataclass(frozen=True)
class KeyRef:
    name: str


@dataclass(frozen=True)
class PostArith:
    op: ArithOp
    left: PostExpr
    right: PostExpr


@dataclass(frozen=True)
class PostNeg:
    operand: PostExpr


PostExpr = AggRef | KeyRef | Lit | PostArith | PostNeg


@dataclass(frozen=True)
class OutputColumn:
    name: str
    expr: PostExpr


@dataclass(frozen=True)
class PostCompare:
    op: CompareOp
    left: PostExpr
    right: PostExpr


@dataclass(frozen=True)
class PostAnd:
    operands: tuple[PostPredicate, ...]


@dataclass(frozen=True)
class PostOr:
    operands: tuple[PostPredicate, ...]


@dataclass(frozen=True)
class PostNot:
    operand: PostPredicate


PostPredicate = PostCompare | PostAnd | PostOr | PostNot
"""A HAVING condition: evaluated on noisy values after release, so it costs nothing."""


@dataclass(frozen=True)
class OrderItem:
    expr: PostExpr
    descending: bool


@dataclass(frozen=True)
class GroupKey:
    column: str
    values: tuple[Scalar, ...] | None
    """The public key set: every key is in the output, empty groups included.

    None for private keys: only keys that pass a DP threshold are released.
    """


@dataclass(frozen=True)
class Sensitivity:
    """How far one unit can move a part's vector of per-group values, in integer units."""

    l1: int
    l2: int
    per_group: int
    """The L∞ bound: how far one unit can move a single group."""
    groups: int
    """The L0 bound: how many groups one unit can move."""


@dataclass(frozen=True)
class QueryPlan:
    dataset: str
    source: Source
    where: RowExpr | None
    group_keys: tuple[GroupKey, ...]
    contribution: Contribution
    parts: tuple[Part, ...]
    aggregates: tuple[Aggregate, ...]
    output: tuple[OutputColumn, ...]
    derived: tuple[DerivedColumn, ...] = ()
    notes: tuple[str, ...] = ()
    """What the result should tell the buyer, e.g. that MIN was answered as a DP quantile."""
    threshold_part: int | None = None
    """With private keys: the part (units per group) whose noisy value must pass the threshold."""
    having: PostPredicate | None = None
    order_by: tuple[OrderItem, ...] = ()
    limit: int | None = None
    offset: int = 0

    def parts_of(self, expr: PostExpr) -> set[int]:
        """The measured parts an output expression reads (through its aggregates)."""
        match expr:
            case AggRef(index):
                return set(self.aggregates[index].parts)
            case PostArith(_, left, right):
                return self.parts_of(left) | self.parts_of(right)
            case PostNeg(operand):
                return self.parts_of(operand)
        return set()

    @property
    def groups_touched_per_unit(self) -> int:
        """The L0 bound: how many output groups one unit can change."""
        if self.private_keys:
            return self.contribution.max_groups
        possible = 1
        for key in self.group_keys:
            possible *= len(key.values or ())
        return min(self.contribution.max_groups, possible)

    @property
    def private_keys(self) -> tuple[str, ...]:
        """GROUP BY columns whose keys are released only by a DP threshold."""
        return tuple(key.column for key in self.group_keys if key.values is None)

    def sensitivity(self, part: Part) -> Sensitivity:
        """Sensitivity of ``part`` when one unit is added or removed.

        A unit touches at most ``groups_touched_per_unit`` groups and adds at
        most ``max_rows_per_group`` rows' worth to each, every row at most the
        part's per-row magnitude. L2 is rounded up to an integer (sound, and
        what OpenDP's integer metrics take).
        """
        per_row = 1  # counts; and a quantile, whose distance is in rows
        if part.kind is PartKind.SUM:
            assert part.value is not None
            per_row = part.value.magnitude
        elif part.kind is PartKind.CENTERED_SUM:
            assert part.value is not None
            per_row = part.value.centered_magnitude
        per_group = 1 if part.kind is PartKind.COUNT_UNITS else per_row * self.contribution.max_rows_per_group
        groups = self.groups_touched_per_unit
        l2 = math.isqrt(groups * per_group * per_group - 1) + 1
        return Sensitivity(l1=groups * per_group, l2=l2, per_group=per_group, groups=groups)
