"""The QueryPlan: a small, typed, backend-free description of one query.

It imports neither Polars nor OpenDP, so any backend (Polars today, Spark
later) compiles the same plan. Everything privacy-relevant (value bounds,
fixed-point scales, contribution bounds) is fixed here, from the policy and
the query text only.

The IR is three modules, re-exported here so that ``from engine import plan as ir`` names all of it:
:mod:`engine.plan_rows` (row expressions), :mod:`engine.plan_parts` (sources, bounds, parts,
aggregates, keys) and this one (post-processing on noisy values, and the plan itself).
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.plan_parts import (
    Aggregate,
    AggregateKind,
    AutoBounds,
    BoundSetting,
    ColumnKind,
    Contribution,
    DerivedColumn,
    FixedPoint,
    GroupKey,
    Part,
    PartKind,
    Source,
    SourceFormat,
)
from engine.plan_rows import (
    COMPARISONS,
    And,
    Arith,
    ArithOp,
    Between,
    Case,
    Clamp,
    Coalesce,
    Col,
    Compare,
    CompareOp,
    DatePart,
    DateTrunc,
    Extreme,
    Floor,
    InList,
    IsNull,
    Like,
    Lit,
    Lookup,
    Neg,
    Not,
    Or,
    Round,
    RowExpr,
    Scalar,
    ValueType,
)
from engine.sensitivity import Sensitivity, groups_touched_per_unit, part_sensitivity

__all__ = [
    "ValueType",
    "Scalar",
    "Col",
    "Lit",
    "CompareOp",
    "COMPARISONS",
    "Compare",
    "ArithOp",
    "Arith",
    "Neg",
    "And",
    "Or",
    "Not",
    "InList",
    "Between",
    "IsNull",
    "Like",
    "Clamp",
    "Case",
    "Floor",
    "Round",
    "Extreme",
    "Coalesce",
    "DatePart",
    "DateTrunc",
    "Lookup",
    "RowExpr",
    "SourceFormat",
    "ColumnKind",
    "DerivedColumn",
    "Source",
    "FixedPoint",
    "AutoBounds",
    "BoundSetting",
    "Contribution",
    "PartKind",
    "Part",
    "AggregateKind",
    "Aggregate",
    "GroupKey",
    "AggRef",
    "KeyRef",
    "PostArith",
    "PostNeg",
    "PostExpr",
    "OutputColumn",
    "PostCompare",
    "PostAnd",
    "PostOr",
    "PostNot",
    "PostPredicate",
    "OrderItem",
    "QueryPlan",
]

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
    auto_bounds: AutoBounds | None = None
    """Set when the policy leaves contribution bounds to the engine: ``contribution`` then holds their limits."""

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
        """The L0 bound: how many output groups one unit can change (see :mod:`engine.sensitivity`)."""
        return groups_touched_per_unit(self)

    @property
    def private_keys(self) -> tuple[str, ...]:
        """GROUP BY columns whose keys are released only by a DP threshold."""
        return tuple(key.column for key in self.group_keys if key.values is None)

    def sensitivity(self, part: Part) -> Sensitivity:
        """Sensitivity of ``part`` when one unit is added or removed (see :mod:`engine.sensitivity`)."""
        return part_sensitivity(self, part)
