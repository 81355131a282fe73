"""What name resolution knows: the tables in scope, their joins, and what the query reads.

``Scope`` is fixed by the FROM pass; ``Reads`` grows as later passes resolve
names and derive per-row columns, and becomes the plan's source columns and
derived columns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from engine import plan as ir
from engine.lookup import AttributeType, PublicTable
from engine.policy import Policy


@dataclass(frozen=True)
class Join:
    """A public table joined on its unique key: each pool row matches at most one entry."""

    table: PublicTable
    key: ir.RowExpr
    """The pool row's join key, read as the table's keys are."""
    keys: tuple[ir.Scalar, ...]


@dataclass(frozen=True)
class Attribute:
    """A joined table's column, as a per-row lookup."""

    expr: ir.Lookup
    type: AttributeType
    identity: str
    """``alias.column``: the same attribute however the query spells it."""
    values: tuple[ir.Scalar | None, ...]


@dataclass(frozen=True)
class Scope:
    """The tables a query names: the dataset's table (by name and alias) and the public tables it joins."""

    policy: Policy
    table_names: frozenset[str]
    """The dataset table's name and alias, lower case."""
    joins: Mapping[str, Join]
    """Joined public tables by alias (or name), lower case."""
    join_filters: tuple[ir.RowExpr, ...]
    """INNER JOINs keep only rows whose key the public table lists."""


@dataclass
class Reads:
    """The pool columns the query reads and the per-row columns it derives, in the order they are named."""

    columns: set[str] = field(default_factory=set)
    derived: list[ir.DerivedColumn] = field(default_factory=list)

    def add_derived(self, column: ir.DerivedColumn) -> None:
        self.derived.append(column)

    def derive(self, expr: ir.RowExpr, kind: ir.ColumnKind = ir.ColumnKind.FLOAT) -> str:
        """The name of a derived column computing ``expr`` (one column per distinct expression and kind)."""
        for derived in self.derived:
            if derived.expr == expr and derived.kind is kind:
                return derived.name
        name = f"__derived_{len(self.derived)}"
        self.derived.append(ir.DerivedColumn(name, expr, kind))
        return name
