"""Inline row-level CTEs and derived tables into one SELECT over the dataset's table.

``WITH x AS (SELECT hours AS h FROM t WHERE age > 30) SELECT SUM(h) FROM x``
becomes ``SELECT SUM(hours) AS "sum(h)"… FROM t WHERE age > 30``. Only row-level
inner queries are accepted (columns, renamed or not, and a WHERE): anything that
aggregates, orders, limits or could multiply rows is refused. Outer names are
resolved only through the inner SELECT list, so a name defined inside never
inherits the bounds of a policy column that happens to share it.
"""

from __future__ import annotations

from collections.abc import Collection

from sqlglot import exp

from engine.errors import UnknownColumn, UnknownTable, Unsupported
from engine.sql import default_name, fragment

_ROW_LEVEL_ONLY = ("group", "having", "order", "limit", "offset", "distinct", "joins", "laterals", "qualify")


def inline_derived_tables(select: exp.Select, columns: Collection[str]) -> exp.Select:
    """The query with every CTE and FROM-subquery folded into the outer SELECT.

    ``columns`` are the dataset's declared columns, which an inner ``SELECT *`` passes on.
    """
    ctes = _ctes(select)
    source = _from(select)
    if isinstance(source, exp.Table) and source.name.lower() not in ctes:
        if not ctes:
            return select
        unused = select.copy()  # CTEs defined but not selected from change nothing
        unused.set("with_", None)
        return unused
    if select.args.get("joins"):
        raise Unsupported(
            "a join beside a derived table or CTE is not supported: join public tables to the dataset's table itself"
        )
    outer = select.copy()
    outer.set("with_", None)
    outer.set("with", None)
    inner = _inner_select(source, ctes)
    if isinstance(source, exp.Subquery):  # a CTE's body already carries the CTEs defined before it, and only those
        inner = _with_ctes(inner, ctes)
    inner = inline_derived_tables(inner, columns)
    names = _projection(inner, columns)
    alias = source.alias_or_name.lower()
    outer.set("from_", exp.From(this=_from(inner).copy()))  # before the rewrite: the inner's columns are not ours
    for item in outer.expressions:
        if not isinstance(item, exp.Alias | exp.Column | exp.Star):
            item.replace(exp.alias_(item.copy(), default_name(item), quoted=True))  # keep the name the buyer wrote
    _group_by_output_aliases(outer, names)
    outer_aliases = {item.alias.lower() for item in outer.expressions if isinstance(item, exp.Alias)}
    for column in list(outer.find_all(exp.Column)):
        if column.name.lower() in outer_aliases and column.find_ancestor(exp.Order, exp.Having) is not None:
            continue  # an output alias, resolved by the planner
        if column.table and column.table.lower() != alias:
            raise UnknownTable(f"unknown table {column.table!r} in {fragment(column)}")
        target = names.get(column.name.lower())
        if target is None:
            raise UnknownColumn(
                f"unknown column {column.name!r}: {alias} has {', '.join(sorted(names)) or 'no columns'}"
            )
        replacement: exp.Expr = target.copy()
        if column.parent is outer and column.arg_key == "expressions":
            replacement = exp.alias_(replacement, column.name, quoted=column.this.quoted)
        column.replace(replacement)
    inner_where = inner.args.get("where")
    if inner_where is not None:
        outer_where = outer.args.get("where")
        condition = inner_where.this.copy()
        if outer_where is not None:
            condition = exp.and_(exp.Paren(this=condition), exp.Paren(this=outer_where.this))
        outer.set("where", exp.Where(this=condition))
    return outer


def _group_by_output_aliases(outer: exp.Select, names: Collection[str]) -> None:
    """A GROUP BY item naming an output alias (and no column of the inner query) becomes the aliased expression.

    As in SQL, an input column of that name wins over the alias; the rewrite
    below then resolves the expression's columns through the inner query.
    """
    group = outer.args.get("group")
    if group is None:
        return
    aliased = {item.alias.lower(): item.this for item in outer.expressions if isinstance(item, exp.Alias)}
    for key in group.expressions:
        name = key.name.lower() if isinstance(key, exp.Column) and not key.table else None
        if name in aliased and name not in names:
            key.replace(aliased[name].copy())


def _from(select: exp.Select) -> exp.Expression:
    source = select.args.get("from_") or select.args.get("from")
    if source is None:
        raise Unsupported("a query needs a FROM clause")
    return source.this


def _ctes(select: exp.Select) -> dict[str, exp.Select]:
    with_ = select.args.get("with_") or select.args.get("with")
    if with_ is None:
        return {}
    if with_.args.get("recursive"):
        raise Unsupported("WITH RECURSIVE is not supported")
    ctes: dict[str, exp.Select] = {}
    for cte in with_.expressions:
        if not isinstance(cte.this, exp.Select):
            raise Unsupported(f"WITH {cte.alias}: only a SELECT can be named")
        ctes[cte.alias.lower()] = _with_ctes(cte.this, ctes)
    return ctes


def _with_ctes(select: exp.Select, ctes: dict[str, exp.Select]) -> exp.Select:
    """``select`` with the CTEs defined before it attached, so its own FROM can name them."""
    if not ctes:
        return select
    attached = select.copy()
    attached.set(
        "with_",
        exp.With(
            expressions=[
                exp.CTE(this=body.copy(), alias=exp.TableAlias(this=exp.to_identifier(name)))
                for name, body in ctes.items()
            ]
        ),
    )
    return attached


def _inner_select(source: exp.Expression, ctes: dict[str, exp.Select]) -> exp.Select:
    if isinstance(source, exp.Subquery) and isinstance(source.this, exp.Select):
        inner = source.this
    elif isinstance(source, exp.Table) and source.name.lower() in ctes:
        inner = ctes[source.name.lower()]
    else:
        raise Unsupported(f"FROM {fragment(source)} is not supported: select from the dataset's table")
    for key in _ROW_LEVEL_ONLY:
        if inner.args.get(key):
            raise Unsupported(
                f"{fragment(inner)}: an inner query may only select and filter rows "
                f"({key.upper()} inside it could aggregate or multiply a member's rows)"
            )
    if any(isinstance(node, exp.AggFunc | exp.Window) for node in inner.walk()):
        raise Unsupported(f"{fragment(inner)}: an inner query may not aggregate; aggregate in the outer query")
    return inner


def _projection(inner: exp.Select, columns: Collection[str]) -> dict[str, exp.Expression]:
    """Outer name → the inner column it stands for (computed columns are not supported yet)."""
    names: dict[str, exp.Expression] = {}
    for item in inner.expressions:
        if isinstance(item, exp.Star):
            names.update({name.lower(): exp.column(name) for name in columns})
            continue
        node = item.this if isinstance(item, exp.Alias) else item
        if not isinstance(node, exp.Column) or isinstance(node.this, exp.Star):
            raise Unsupported(f"{fragment(item)}: an inner query may pass on columns only (computed columns: not yet)")
        name = (item.alias if isinstance(item, exp.Alias) else node.name).lower()
        if name in names:
            raise Unsupported(f"{fragment(inner)}: the inner query names {name} twice")
        bare = node.copy()
        bare.set("table", None)
        names[name] = bare
    return names
