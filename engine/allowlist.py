"""The SQL the planner models, as an explicit allow-list of sqlglot node classes and their args.

Every node of a parsed query is checked before planning: a node class not
listed here, or a listed class with an arg set that is not listed for it, is
refused ``unsupported``, by name. A clause sqlglot parses but the planner
never reads (``TABLESAMPLE``, ``FOR SYSTEM_TIME AS OF``, ``WITH (NOLOCK)``,
``* EXCEPT``) is thus refused, never silently dropped, so the SQL in the
transparency log is exactly what was answered; a node a future sqlglot adds is
refused by default (DESIGN invariant 9).
"""

from __future__ import annotations

from sqlglot import exp

from engine.errors import Unsupported
from engine.sql import fragment

_OPERANDS = frozenset({"this", "expression"})
_ONE = frozenset({"this"})
_NONE: frozenset[str] = frozenset()

_BINARY = (
    *(exp.EQ, exp.NEQ, exp.LT, exp.LTE, exp.GT, exp.GTE),
    *(exp.Add, exp.Sub, exp.Mul, exp.Div, exp.And, exp.Or),
)
_UNARY = (exp.Paren, exp.Neg, exp.Not, exp.From, exp.Where, exp.Having, exp.Var)
_ONE_ARGUMENT_FUNCTIONS = (
    *(exp.Sum, exp.Avg, exp.VariancePop, exp.Variance, exp.StddevPop, exp.Stddev, exp.StddevSamp, exp.Median),
    *(exp.PercentileCont, exp.PercentileDisc),
    *(exp.Year, exp.Quarter, exp.Month, exp.Week, exp.WeekOfYear, exp.Day, exp.DayOfMonth),
    *(exp.DayOfWeek, exp.DayOfWeekIso, exp.DayOfYear, exp.Hour, exp.Minute),
)

ALLOWED_ARGS: dict[type[exp.Expression], frozenset[str]] = {
    exp.Select: frozenset(
        {"with_", "expressions", "distinct", "from_", "joins", "where", "group", "having", "order", "limit", "offset"}
    ),
    exp.With: frozenset({"expressions"}),
    exp.CTE: frozenset({"this", "alias"}),
    exp.Subquery: frozenset({"this", "alias"}),
    exp.TableAlias: _ONE,
    exp.Table: frozenset({"this", "alias", "db", "catalog"}),
    exp.Join: frozenset({"this", "on", "side", "kind", "using", "method"}),
    exp.Identifier: frozenset({"this", "quoted"}),
    exp.Column: frozenset({"this", "table"}),
    exp.Star: _NONE,
    exp.Alias: frozenset({"this", "alias"}),
    exp.Group: frozenset({"expressions", "grouping_sets", "cube", "rollup", "totals"}),
    exp.Order: frozenset({"expressions"}),
    exp.Ordered: frozenset({"this", "desc", "nulls_first"}),
    exp.Limit: frozenset({"expression"}),
    exp.Offset: frozenset({"expression"}),
    exp.Literal: frozenset({"this", "is_string"}),
    exp.Boolean: _ONE,
    exp.Null: _NONE,
    **dict.fromkeys(_BINARY, _OPERANDS),
    **dict.fromkeys(_UNARY, _ONE),
    exp.In: frozenset({"this", "expressions"}),
    exp.Between: frozenset({"this", "low", "high"}),
    exp.Is: _OPERANDS,
    exp.Like: frozenset({"this", "expression", "negate"}),
    exp.ILike: frozenset({"this", "expression", "negate"}),
    exp.Case: frozenset({"this", "ifs", "default"}),
    exp.If: frozenset({"this", "true", "false"}),
    exp.Least: frozenset({"this", "expressions", "ignore_nulls"}),
    exp.Greatest: frozenset({"this", "expressions", "ignore_nulls"}),
    exp.Coalesce: frozenset({"this", "expressions", "is_nvl", "is_null"}),
    exp.Floor: frozenset({"this", "decimals", "to"}),
    exp.Ceil: frozenset({"this", "decimals", "to"}),
    exp.Round: frozenset({"this", "decimals"}),
    exp.Cast: frozenset({"this", "to"}),
    exp.DataType: frozenset({"this", "expressions"}),
    exp.DataTypeParam: _ONE,
    exp.Extract: _OPERANDS,
    exp.DateTrunc: frozenset({"this", "unit"}),
    exp.TimestampTrunc: frozenset({"this", "unit"}),
    exp.Count: frozenset({"this", "expressions", "big_int"}),
    exp.Distinct: frozenset({"expressions"}),
    exp.Min: frozenset({"this", "expressions"}),
    exp.Max: frozenset({"this", "expressions"}),
    exp.Quantile: frozenset({"this", "quantile"}),
    exp.ApproxQuantile: frozenset({"this", "quantile"}),
    exp.WithinGroup: _OPERANDS,
    **dict.fromkeys(_ONE_ARGUMENT_FUNCTIONS, _ONE),
    exp.Anonymous: frozenset({"this", "expressions"}),
}
"""Node class → the args that may be set on it. Args the planner reads, or refuses itself with a better message."""

ANONYMOUS_FUNCTIONS = frozenset({"VAR"})
"""Functions sqlglot does not know by class that the planner answers (``VAR(x)``, the sample variance)."""

_REASONS: dict[type[exp.Expression], str] = {
    exp.Window: "window functions are not supported: they compute per-row values; aggregate with GROUP BY instead",
    exp.TableSample: "TABLESAMPLE is not supported: a sample of the rows would change what was charged for",
    exp.Fetch: "FETCH FIRST is not supported: write LIMIT",
}
"""Refusals that say more than the node's name."""

_ARG_NAMES: dict[tuple[type[exp.Expression], str], str] = {
    (exp.Table, "version"): "FOR SYSTEM_TIME / AS OF (time travel)",
    (exp.Table, "system_time"): "FOR SYSTEM_TIME (time travel)",
    (exp.Table, "hints"): "a table hint (WITH (NOLOCK), USE INDEX)",
    (exp.Table, "sample"): "TABLESAMPLE",
    (exp.Table, "joins"): "a nested join",
    (exp.Table, "pivots"): "PIVOT / UNPIVOT",
    (exp.Table, "partition"): "PARTITION (…) on a table",
    (exp.Table, "changes"): "CHANGES (…) on a table",
    (exp.Table, "only"): "ONLY on a table",
    (exp.Table, "indexed"): "INDEXED BY",
    (exp.Star, "except_"): "SELECT * EXCEPT",
    (exp.Star, "replace"): "SELECT * REPLACE",
    (exp.Star, "rename"): "SELECT * RENAME",
    (exp.Star, "ilike"): "SELECT * ILIKE",
    (exp.Select, "sample"): "TABLESAMPLE",
    (exp.Select, "kind"): "SELECT AS STRUCT / VALUE",
    (exp.Select, "windows"): "WINDOW (named windows)",
    (exp.Select, "locks"): "FOR UPDATE / FOR SHARE",
    (exp.Select, "hint"): "an optimizer hint (/*+ … */)",
    (exp.Select, "prewhere"): "PREWHERE",
    (exp.Select, "connect"): "CONNECT BY",
    (exp.Select, "into"): "SELECT INTO",
    (exp.Select, "settings"): "SETTINGS",
    (exp.Select, "options"): "OPTION (…)",
    (exp.Select, "for_"): "FOR XML / FOR JSON",
    (exp.Select, "exclude"): "EXCLUDE",
    (exp.Select, "operation_modifiers"): "a SELECT modifier (SQL_NO_CACHE, HIGH_PRIORITY, …)",
    (exp.Select, "distribute"): "DISTRIBUTE BY",
    (exp.Select, "cluster"): "CLUSTER BY",
    (exp.Select, "sort"): "SORT BY",
    (exp.Group, "all"): "GROUP BY ALL",
    (exp.With, "recursive"): "WITH RECURSIVE",
    (exp.CTE, "materialized"): "MATERIALIZED on a CTE",
    (exp.TableAlias, "columns"): "column names in a table alias (AS t(a, b))",
    (exp.Column, "join_mark"): "the (+) outer-join mark",
    (exp.Column, "db"): "a column qualified by a schema",
    (exp.Column, "catalog"): "a column qualified by a catalog",
    (exp.Limit, "limit_options"): "LIMIT … PERCENT / WITH TIES",
    (exp.Limit, "expressions"): "LIMIT … BY",
    (exp.Limit, "offset"): "LIMIT <offset>, <count>",
    (exp.Round, "truncate"): "ROUND with a truncation mode",
    (exp.Between, "symmetric"): "BETWEEN SYMMETRIC",
    (exp.Distinct, "on"): "DISTINCT ON",
    (exp.Cast, "format"): "CAST … FORMAT",
    (exp.Cast, "safe"): "TRY_CAST / SAFE_CAST",
    (exp.Cast, "default"): "CAST … DEFAULT … ON CONVERSION ERROR",
}
"""How a refused arg is named to the buyer; any other is named ``<ARG> in <CLASS>``."""


def check_allowed(root: exp.Expression) -> None:
    """Refuse, by name, the first node or arg of ``root`` outside the allow-list (iteratively: the tree is hostile)."""
    stack = [root]
    while stack:
        node = stack.pop()
        _check_node(node)
        stack.extend(node.iter_expressions())


def _check_node(node: exp.Expression) -> None:
    kind = type(node)
    allowed = ALLOWED_ARGS.get(kind)
    if allowed is None:
        raise Unsupported(_REASONS.get(kind) or f"{_node_name(node)} is not supported: {fragment(node)}")
    if kind is exp.Anonymous and node.name.upper() not in ANONYMOUS_FUNCTIONS:
        raise Unsupported(f"function {node.name.upper()} is not supported: {fragment(node)}")
    for arg, value in node.args.items():
        if arg not in allowed and _is_set(value):
            name = _ARG_NAMES.get((kind, arg)) or f"{arg.rstrip('_').upper()} in {kind.__name__.upper()}"
            raise Unsupported(f"{name} is not supported: {fragment(node)}")
    if kind is exp.Ordered and node.args.get("desc") and node.args.get("nulls_first"):
        raise Unsupported(f"DESC NULLS FIRST is not supported (NULLs sort last): {fragment(node)}")


def _is_set(value: object) -> bool:
    return value is not None and value is not False and value != [] and value != ""


def _node_name(node: exp.Expression) -> str:
    if isinstance(node, exp.Func):
        return f"function {node.sql_name()}"
    return node.key.upper()
