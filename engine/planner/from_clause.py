"""The FROM pass: the dataset's table, and public tables joined on their unique key."""

from __future__ import annotations

from sqlglot import exp

from engine import plan as ir
from engine.errors import InvalidSQL, PolicyViolation, UnknownTable, Unsupported
from engine.lookup import AttributeType, PublicTable
from engine.planner.names import is_pool_column, resolve_column
from engine.planner.scope import Join, Reads, Scope
from engine.policy import ColumnPolicy, ColumnType, Policy
from engine.sql import fragment

JOIN_KEY_TYPES = {
    ColumnType.CATEGORY: AttributeType.TEXT,
    ColumnType.INT: AttributeType.INT,
    ColumnType.BOOL: AttributeType.BOOL,
    ColumnType.DATE: AttributeType.DATE,
}
"""Which public-table key type each pool column type joins with (id columns join any key, as text)."""


def resolve_scope(select: exp.Select, policy: Policy, reads: Reads) -> Scope:
    """The tables in scope; the pool columns the joins match on are recorded in ``reads``."""
    source = select.args.get("from_") or select.args.get("from")
    if source is None:
        raise InvalidSQL(f"the query has no FROM clause: select from {policy.name}")
    table = source.this
    if not isinstance(table, exp.Table) or not isinstance(table.this, exp.Identifier):
        raise Unsupported(f"FROM {fragment(table)} is not supported: select from the table {policy.name}")
    if table.args.get("db") or table.args.get("catalog"):
        raise UnknownTable(f"unknown table {fragment(table)}: the dataset's table is {policy.name}")
    if table.name.lower() != policy.name.lower():
        raise UnknownTable(f"unknown table {table.name!r}: this dataset's table is {policy.name!r}")
    names = {table.name.lower()}
    if table.alias:
        names.add(table.alias.lower())
    scope = Scope(policy, frozenset(names), {}, ())
    for join in select.args.get("joins") or []:
        scope = _join(scope, join, reads)
    return scope


def _join(scope: Scope, join: exp.Join, reads: Reads) -> Scope:
    """``[INNER | LEFT] JOIN <public table> USING (key)`` or ``ON <pool column> = <table>.<key>``."""
    policy = scope.policy
    target = join.this
    if not isinstance(target, exp.Table) or not isinstance(target.this, exp.Identifier) or target.args.get("db"):
        raise Unsupported(f"JOIN {fragment(target)}: join a public table by its name")
    if target.name.lower() in (policy.name.lower(), *scope.table_names):
        raise PolicyViolation(
            f"{fragment(join)}: joining {policy.name} with itself is refused: "
            "it pairs a member's rows with other rows, multiplying their contribution"
        )
    table = policy.lookups.get(target.name.lower())
    if table is None:
        declared = ", ".join(sorted(policy.public_tables)) or "none is declared"
        raise UnknownTable(f"unknown table {target.name!r}: only the policy's public tables can be joined ({declared})")
    side, kind = str(join.args.get("side") or "").upper(), str(join.args.get("kind") or "").upper()
    if side not in ("", "LEFT") or kind not in ("", "INNER", "OUTER") or join.args.get("method"):
        raise Unsupported(
            f"{fragment(join)}: only JOIN (INNER) and LEFT JOIN of a public table on its key are supported"
        )
    alias = (target.alias or target.name).lower()
    if alias in scope.joins:
        raise InvalidSQL(f"{fragment(join)}: the name {alias!r} is used by two joined tables; give one an alias")
    name, column = _join_column(scope, join, table, alias)
    reads.columns.add(name)
    key, keys = _join_key(join, table, name, column)
    filters = scope.join_filters
    if side != "LEFT":  # keep rows whose key the table lists: a lookup that finds them, unlike IN, scales
        listed = ir.Lookup(key, tuple((value, True) for value in keys))
        filters = (*filters, ir.Not(ir.IsNull(listed)))
    return Scope(policy, scope.table_names, {**scope.joins, alias: Join(table, key, keys)}, filters)


def _join_key(
    join: exp.Join, table: PublicTable, name: str, column: ColumnPolicy
) -> tuple[ir.RowExpr, tuple[ir.Scalar, ...]]:
    """The pool row's key as the table's keys are read, and those keys: id columns compare as text."""
    if column.type is ColumnType.ID:
        return ir.Col(name, as_text=True), tuple(str(value) for value in table.keys)
    if JOIN_KEY_TYPES.get(column.type) is table.key_type:
        return ir.Col(name), table.keys
    raise InvalidSQL(
        f"{fragment(join)}: {name} is a {column.type} column but {table.name}.{table.key} holds "
        f"{table.key_type.value} keys"
    )


def _join_column(scope: Scope, join: exp.Join, table: PublicTable, alias: str) -> tuple[str, ColumnPolicy]:
    """The pool column a join matches against the public table's key; refuses any other condition."""
    refusal = (
        f"{fragment(join)}: join {table.name} with USING ({table.key}) or ON <column> = {alias}.{table.key} "
        f"(its unique key: any other condition could match a row more than once)"
    )
    using = join.args.get("using") or []
    condition = join.args.get("on")
    if using and condition is None:
        if len(using) != 1 or using[0].name.lower() != table.key.lower():
            raise Unsupported(refusal)
        return resolve_column(scope.policy, scope.table_names, exp.column(using[0].name))
    if isinstance(condition, exp.EQ) and not using:
        sides = [condition.this, condition.expression]
        if all(isinstance(side, exp.Column) for side in sides):
            is_key = [
                side.table.lower() == alias and side.name.lower() == table.key.lower()
                if side.table
                else side.name.lower() == table.key.lower() and not is_pool_column(scope.policy, side.name)
                for side in sides
            ]
            if is_key.count(True) == 1:
                return resolve_column(scope.policy, scope.table_names, sides[is_key.index(False)])
    raise Unsupported(refusal)
