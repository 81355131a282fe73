"""Resolving a column name: a pool column of the policy, or a joined public table's attribute."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlglot import exp

from engine import plan as ir
from engine.errors import InvalidSQL, UnknownColumn, UnknownTable
from engine.planner.scope import Attribute, Join, Reads, Scope
from engine.policy import ColumnPolicy, Policy
from engine.sql import fragment


def resolve_column(policy: Policy, table_names: frozenset[str], node: exp.Column) -> tuple[str, ColumnPolicy]:
    """The policy column ``node`` names (its declared spelling), or UnknownTable / UnknownColumn."""
    if node.table and node.table.lower() not in table_names:
        raise UnknownTable(f"unknown table {node.table!r} in {fragment(node)}")
    name = node.name
    columns = policy.columns
    resolved = name if name in columns else next((c for c in columns if c.lower() == name.lower()), None)
    if resolved is None:
        raise UnknownColumn(f"unknown column {name!r}: {policy.name} has {', '.join(sorted(columns))}")
    return resolved, columns[resolved]


def is_pool_column(policy: Policy, name: str) -> bool:
    return any(column.lower() == name.lower() for column in policy.columns)


@dataclass
class Names:
    """Column names in a scope; each pool column resolved is recorded as read."""

    scope: Scope
    reads: Reads
    attributes: dict[str, Attribute] = field(default_factory=dict)
    """Joined columns built so far, by identity: a table of 100,000 entries is turned into a lookup once."""

    @property
    def policy(self) -> Policy:
        return self.scope.policy

    def column(self, node: exp.Column) -> tuple[str, ColumnPolicy]:
        name, column = resolve_column(self.policy, self.scope.table_names, node)
        self.reads.columns.add(name)
        return name, column

    def attribute(self, node: exp.Column) -> Attribute | None:
        """A joined public table's column named by ``node``; None when it names a pool column."""
        qualifier = node.table.lower() if node.table else None
        joins = self.scope.joins
        if qualifier is not None:
            if qualifier in self.scope.table_names or qualifier not in joins:
                return None  # a pool column, or an unknown table that column() reports
            matches = [qualifier]
        else:
            if is_pool_column(self.policy, node.name):
                return None  # an unqualified pool column wins, as with USING
            matches = [alias for alias, join in joins.items() if join.table.column(node.name)]
            if not matches:
                return None
            if len(matches) > 1:
                raise InvalidSQL(f"column {node.name!r} is ambiguous: qualify it with one of {', '.join(matches)}")
        alias = matches[0]
        join = joins[alias]
        column = join.table.column(node.name)
        if column is None:
            names = ", ".join([join.table.key, *join.table.attributes])
            raise UnknownColumn(f"unknown column {node.name!r}: {join.table.name} has {names}")
        identity = f"{alias}.{column}"
        if identity not in self.attributes:
            self.attributes[identity] = _lookup(join.table.key == column, join, column, identity)
        return self.attributes[identity]


def _lookup(is_key: bool, join: Join, column: str, identity: str) -> Attribute:
    """A joined column as a per-row lookup of the row's join key."""
    if is_key:
        attribute_type = join.table.key_type
        values: tuple[ir.Scalar | None, ...] = join.table.keys
    else:
        attribute_type, values = join.table.attributes[column]
    expr = ir.Lookup(join.key, tuple(zip(join.keys, values, strict=True)))
    return Attribute(expr, attribute_type, identity, values)
