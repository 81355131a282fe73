"""The plan IR's row expressions: what WHERE, computed keys and aggregated values compute per row.

Backend-free (no Polars, no OpenDP): every backend compiles these with ``match``.
"""

from __future__ import annotations

import datetime as dt
import operator
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from engine.dates import DateField, TruncUnit


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
