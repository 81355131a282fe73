"""AST + Policy → QueryPlan.

Every check that can refuse a query happens here, before any data is read
and before anything is charged. The plan is built from the validated AST
only; bounds, keys and contribution limits come from the policy alone.
"""

from __future__ import annotations

import datetime as dt
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlglot import exp

from engine import plan as ir
from engine.allowlist import check_allowed
from engine.dates import FIELD_ALIASES, DateField, TruncUnit, parse_date
from engine.errors import InvalidSQL, PolicyViolation, UnknownColumn, UnknownTable, Unsupported
from engine.inline import inline_derived_tables
from engine.lookup import AttributeType, PublicTable
from engine.policy import ColumnPolicy, ColumnType, Policy
from engine.sensitivity import check_no_overflow, fixed_point
from engine.sql import default_name, fragment

MAX_OUTPUT_GROUPS = 100_000
"""Rows of public group keys one query may release."""
MAX_ROUND_DECIMALS = 15
"""ROUND(x, d) for |d| up to this: a float64 holds about 15 significant digits, so more rounds nothing."""
MAX_LIKE_PATTERN = 1_000
"""Characters in a LIKE pattern; far longer ones exceed the regex engines' size limits (Polars fails past ~5,000)."""
MAX_EXACT_INTEGER = 2**53
"""Bin labels and the arithmetic that makes them stay within this, where float64 and int64 agree exactly."""

_COMPARISONS: dict[type[exp.Expression], ir.CompareOp] = {
    exp.EQ: ir.CompareOp.EQ,
    exp.NEQ: ir.CompareOp.NEQ,
    exp.LT: ir.CompareOp.LT,
    exp.LTE: ir.CompareOp.LTE,
    exp.GT: ir.CompareOp.GT,
    exp.GTE: ir.CompareOp.GTE,
}
_ARITHMETIC: dict[type[exp.Expression], ir.ArithOp] = {
    exp.Add: ir.ArithOp.ADD,
    exp.Sub: ir.ArithOp.SUB,
    exp.Mul: ir.ArithOp.MUL,
    exp.Div: ir.ArithOp.DIV,
}
_AGGREGATES: dict[type[exp.Expression], ir.AggregateKind] = {
    exp.Count: ir.AggregateKind.COUNT,
    exp.Sum: ir.AggregateKind.SUM,
    exp.Avg: ir.AggregateKind.AVG,
    exp.VariancePop: ir.AggregateKind.VAR_POP,
    exp.Variance: ir.AggregateKind.VAR_SAMP,
    exp.StddevPop: ir.AggregateKind.STDDEV_POP,
    exp.Stddev: ir.AggregateKind.STDDEV_SAMP,
    exp.StddevSamp: ir.AggregateKind.STDDEV_SAMP,
    exp.Median: ir.AggregateKind.QUANTILE,
    exp.Quantile: ir.AggregateKind.QUANTILE,
    exp.ApproxQuantile: ir.AggregateKind.QUANTILE,
    exp.WithinGroup: ir.AggregateKind.QUANTILE,
    exp.Min: ir.AggregateKind.QUANTILE,
    exp.Max: ir.AggregateKind.QUANTILE,
}
EXTREME_QUANTILES: dict[type[exp.Expression], float] = {exp.Min: 0.05, exp.Max: 0.95}
"""MIN and MAX are answered as these DP quantiles (an exact extreme is one member's value)."""
_COLUMN_KINDS = {
    ColumnType.ID: ir.ColumnKind.NATIVE,
    ColumnType.CATEGORY: ir.ColumnKind.TEXT,
    ColumnType.INT: ir.ColumnKind.INT,
    ColumnType.FLOAT: ir.ColumnKind.FLOAT,
    ColumnType.BOOL: ir.ColumnKind.BOOL,
    ColumnType.DATE: ir.ColumnKind.DATE,
    ColumnType.DATETIME: ir.ColumnKind.DATETIME,
}
_VALUE_TYPES = {
    ColumnType.ID: ir.ValueType.ID,
    ColumnType.CATEGORY: ir.ValueType.STRING,
    ColumnType.INT: ir.ValueType.NUMBER,
    ColumnType.FLOAT: ir.ValueType.NUMBER,
    ColumnType.BOOL: ir.ValueType.BOOL,
    ColumnType.DATE: ir.ValueType.DATE,
    ColumnType.DATETIME: ir.ValueType.DATE,
}
_DATE_FUNCTIONS: dict[type[exp.Expression], DateField] = {
    exp.Year: DateField.YEAR,
    exp.Quarter: DateField.QUARTER,
    exp.Month: DateField.MONTH,
    exp.Week: DateField.WEEK,
    exp.WeekOfYear: DateField.WEEK,
    exp.Day: DateField.DAY,
    exp.DayOfMonth: DateField.DAY,
    exp.DayOfWeek: DateField.DOW,
    exp.DayOfWeekIso: DateField.ISODOW,
    exp.DayOfYear: DateField.DOY,
    exp.Hour: DateField.HOUR,
    exp.Minute: DateField.MINUTE,
}
"""Function spellings of EXTRACT's parts: YEAR(d), MONTH(d), DAYOFWEEK(d) (0 = Sunday, as EXTRACT(DOW …))."""
_REFUSED = {
    exp.Subquery: "subqueries are not supported yet",
    exp.With: "WITH (common table expressions) is not supported yet",
}


_ATTRIBUTE_KINDS = {
    AttributeType.TEXT: (ir.ColumnKind.TEXT, ir.ValueType.STRING),
    AttributeType.INT: (ir.ColumnKind.INT, ir.ValueType.NUMBER),
    AttributeType.FLOAT: (ir.ColumnKind.FLOAT, ir.ValueType.NUMBER),
    AttributeType.BOOL: (ir.ColumnKind.BOOL, ir.ValueType.BOOL),
    AttributeType.DATE: (ir.ColumnKind.DATE, ir.ValueType.DATE),
}
_KEY_TYPES = {
    ir.ColumnKind.TEXT: ir.ValueType.STRING,
    ir.ColumnKind.DATE: ir.ValueType.STRING,  # released as ISO text
    ir.ColumnKind.INT: ir.ValueType.NUMBER,
    ir.ColumnKind.FLOAT: ir.ValueType.NUMBER,
    ir.ColumnKind.BOOL: ir.ValueType.BOOL,
}
"""How HAVING compares a computed key of each kind."""
_JOIN_KEY_TYPES = {
    ColumnType.CATEGORY: AttributeType.TEXT,
    ColumnType.INT: AttributeType.INT,
    ColumnType.BOOL: AttributeType.BOOL,
    ColumnType.DATE: AttributeType.DATE,
}
"""Which public-table key type each pool column type joins with (id columns join any key, as text)."""


@dataclass(frozen=True)
class _Join:
    """A public table joined on its unique key: each pool row matches at most one entry."""

    table: PublicTable
    key: ir.RowExpr
    """The pool row's join key, read as the table's keys are."""
    keys: tuple[ir.Scalar, ...]


@dataclass(frozen=True)
class _Attribute:
    """A joined table's column, as a per-row lookup."""

    expr: ir.Lookup
    type: AttributeType
    identity: str
    """``alias.column``: the same attribute however the query spells it."""
    values: tuple[ir.Scalar | None, ...]


def plan_query(select: exp.Select, policy: Policy, consent_column: str | None = None) -> ir.QueryPlan:
    """Validate ``select`` against ``policy`` and build its plan.

    With ``consent_column``, rows where that bool column is not true are
    dropped before anything else (members who did not consent never count).
    """
    check_allowed(select)
    flat = inline_derived_tables(select, list(policy.columns))
    return _Planner(policy, consent_column).plan(flat)


@dataclass
class _Planner:
    policy: Policy
    consent_column: str | None = None
    parts: list[ir.Part] = field(default_factory=list)
    aggregates: list[ir.Aggregate] = field(default_factory=list)
    used_columns: set[str] = field(default_factory=set)
    table_names: set[str] = field(default_factory=set)
    group_columns: tuple[str, ...] = ()
    derived: list[ir.DerivedColumn] = field(default_factory=list)
    computed_keys: dict[str, str] = field(default_factory=dict)
    """GROUP BY expressions (their SQL: CASE labels, FLOOR bins) → the derived key column."""
    key_types: dict[str, ir.ValueType] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    joins: dict[str, _Join] = field(default_factory=dict)
    """Joined public tables by alias (or name), lower case."""
    join_filters: list[ir.RowExpr] = field(default_factory=list)
    """INNER JOINs keep only rows whose key the public table lists."""
    attributes: dict[str, _Attribute] = field(default_factory=dict)
    """Joined columns built so far, by identity: a table of 100,000 entries is turned into a lookup once."""

    def plan(self, select: exp.Select) -> ir.QueryPlan:
        _refuse_constructs(select)
        self._check_modifiers(select)
        self._resolve_from(select)
        where = select.args.get("where")
        row_filter = self._predicate(where.this) if where is not None else None
        if self.join_filters:
            row_filter = ir.And((*self.join_filters, *([row_filter] if row_filter is not None else [])))
        if self.consent_column is not None:
            self.used_columns.add(self.consent_column)
            consent = ir.Compare(ir.CompareOp.EQ, ir.Col(self.consent_column), ir.Lit(True))
            row_filter = consent if row_filter is None else ir.And((consent, row_filter))
        group_keys = self._group_keys(select)
        output = self._select_list(select)
        if not self.aggregates:
            raise PolicyViolation("the query has no aggregate: add COUNT, SUM or AVG (rows are never released)")
        having = self._having(select, output)
        order_by = self._order_by(select, output)
        limit, offset = self._limit(select)
        if self.policy.unit_column:
            self.used_columns.add(self.policy.unit_column)
        privacy = self.policy.privacy
        contribution = ir.Contribution(
            unit_column=self.policy.unit_column,
            max_groups=privacy.max_groups or 1,
            max_rows_per_group=privacy.max_rows_per_group or 1,
        )
        threshold_part = None
        if any(key.values is None for key in group_keys):
            # Private keys: a key is released only if its noisy count of units passes a threshold.
            units = ir.PartKind.COUNT_UNITS if self.policy.unit_column else ir.PartKind.COUNT_ROWS
            threshold_part = self._part(ir.Part(units))
        plan = ir.QueryPlan(
            dataset=self.policy.name,
            source=self._source(),
            where=row_filter,
            group_keys=group_keys,
            contribution=contribution,
            parts=tuple(self.parts),
            derived=tuple(self.derived),
            notes=tuple(dict.fromkeys(self.notes)),
            aggregates=tuple(self.aggregates),
            output=output,
            threshold_part=threshold_part,
            having=having,
            order_by=order_by,
            limit=limit,
            offset=offset,
        )
        check_no_overflow(plan)
        return plan

    # --- FROM and modifiers ------------------------------------------------------

    def _check_modifiers(self, select: exp.Select) -> None:
        if select.args.get("distinct"):
            raise Unsupported("SELECT DISTINCT is not supported: GROUP BY the columns instead")

    def _resolve_from(self, select: exp.Select) -> None:
        source = select.args.get("from_") or select.args.get("from")
        if source is None:
            raise InvalidSQL(f"the query has no FROM clause: select from {self.policy.name}")
        table = source.this
        if not isinstance(table, exp.Table) or not isinstance(table.this, exp.Identifier):
            raise Unsupported(f"FROM {fragment(table)} is not supported: select from the table {self.policy.name}")
        if table.args.get("db") or table.args.get("catalog"):
            raise UnknownTable(f"unknown table {fragment(table)}: the dataset's table is {self.policy.name}")
        if table.name.lower() != self.policy.name.lower():
            raise UnknownTable(f"unknown table {table.name!r}: this dataset's table is {self.policy.name!r}")
        self.table_names = {table.name.lower()}
        if table.alias:
            self.table_names.add(table.alias.lower())
        for join in select.args.get("joins") or []:
            self._join(join)

    # --- JOINs of public tables ------------------------------------------------------

    def _join(self, join: exp.Join) -> None:
        """``[INNER | LEFT] JOIN <public table> USING (key)`` or ``ON <pool column> = <table>.<key>``."""
        target = join.this
        if not isinstance(target, exp.Table) or not isinstance(target.this, exp.Identifier) or target.args.get("db"):
            raise Unsupported(f"JOIN {fragment(target)}: join a public table by its name")
        if target.name.lower() in (self.policy.name.lower(), *self.table_names):
            raise PolicyViolation(
                f"{fragment(join)}: joining {self.policy.name} with itself is refused: "
                "it pairs a member's rows with other rows, multiplying their contribution"
            )
        table = self.policy.lookups.get(target.name.lower())
        if table is None:
            declared = ", ".join(sorted(self.policy.public_tables)) or "none is declared"
            raise UnknownTable(
                f"unknown table {target.name!r}: only the policy's public tables can be joined ({declared})"
            )
        side, kind = str(join.args.get("side") or "").upper(), str(join.args.get("kind") or "").upper()
        if side not in ("", "LEFT") or kind not in ("", "INNER", "OUTER") or join.args.get("method"):
            raise Unsupported(
                f"{fragment(join)}: only JOIN (INNER) and LEFT JOIN of a public table on its key are supported"
            )
        alias = (target.alias or target.name).lower()
        if alias in self.joins:
            raise InvalidSQL(f"{fragment(join)}: the name {alias!r} is used by two joined tables; give one an alias")
        name, column = self._join_column(join, table, alias)
        key_type = _JOIN_KEY_TYPES.get(column.type)
        if column.type is ColumnType.ID:
            key: ir.RowExpr = ir.Col(name, as_text=True)
            keys: tuple[ir.Scalar, ...] = tuple(str(value) for value in table.keys)
        elif key_type is table.key_type:
            key, keys = ir.Col(name), table.keys
        else:
            raise InvalidSQL(
                f"{fragment(join)}: {name} is a {column.type} column but {table.name}.{table.key} holds "
                f"{table.key_type.value} keys"
            )
        self.joins[alias] = _Join(table, key, keys)
        if side != "LEFT":  # keep rows whose key the table lists: a lookup that finds them, unlike IN, scales
            listed = ir.Lookup(key, tuple((value, True) for value in keys))
            self.join_filters.append(ir.Not(ir.IsNull(listed)))

    def _join_column(self, join: exp.Join, table: PublicTable, alias: str) -> tuple[str, ColumnPolicy]:
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
            return self._column(exp.column(using[0].name))
        if isinstance(condition, exp.EQ) and not using:
            sides = [condition.this, condition.expression]
            if all(isinstance(side, exp.Column) for side in sides):
                is_key = [
                    side.table.lower() == alias and side.name.lower() == table.key.lower()
                    if side.table
                    else side.name.lower() == table.key.lower() and not self._is_pool_column(side.name)
                    for side in sides
                ]
                if is_key.count(True) == 1:
                    return self._column(sides[is_key.index(False)])
        raise Unsupported(refusal)

    def _is_pool_column(self, name: str) -> bool:
        return any(column.lower() == name.lower() for column in self.policy.columns)

    def _attribute(self, node: exp.Column) -> _Attribute | None:
        """A joined public table's column named by ``node``; None when it names a pool column."""
        qualifier = node.table.lower() if node.table else None
        if qualifier is not None:
            if qualifier in self.table_names or qualifier not in self.joins:
                return None  # a pool column, or an unknown table that _column reports
            matches = [qualifier]
        else:
            if self._is_pool_column(node.name):
                return None  # an unqualified pool column wins, as with USING
            matches = [alias for alias, join in self.joins.items() if join.table.column(node.name)]
            if not matches:
                return None
            if len(matches) > 1:
                raise InvalidSQL(f"column {node.name!r} is ambiguous: qualify it with one of {', '.join(matches)}")
        alias = matches[0]
        join = self.joins[alias]
        column = join.table.column(node.name)
        if column is None:
            names = ", ".join([join.table.key, *join.table.attributes])
            raise UnknownColumn(f"unknown column {node.name!r}: {join.table.name} has {names}")
        identity = f"{alias}.{column}"
        if identity in self.attributes:
            return self.attributes[identity]
        if column == join.table.key:
            attribute_type = join.table.key_type
            values: tuple[ir.Scalar | None, ...] = join.table.keys
        else:
            attribute_type, values = join.table.attributes[column]
        expr = ir.Lookup(join.key, tuple(zip(join.keys, values, strict=True)))
        self.attributes[identity] = _Attribute(expr, attribute_type, identity, values)
        return self.attributes[identity]

    def _source(self) -> ir.Source:
        paths, uri = self.policy.source_paths, self.policy.source_uri
        location = uri.rstrip("/") if uri else paths[0].name
        source_format = ir.SourceFormat.CSV if location.lower().endswith(".csv") else ir.SourceFormat.PARQUET
        columns = tuple((name, _COLUMN_KINDS[self.policy.columns[name].type]) for name in sorted(self.used_columns))
        return ir.Source(paths, source_format, columns, uri, self.policy.text_formats(self.used_columns))

    # --- names ---------------------------------------------------------------------

    def _column(self, node: exp.Column) -> tuple[str, ColumnPolicy]:
        if node.table and node.table.lower() not in self.table_names:
            raise UnknownTable(f"unknown table {node.table!r} in {fragment(node)}")
        name = node.name
        columns = self.policy.columns
        resolved = name if name in columns else next((c for c in columns if c.lower() == name.lower()), None)
        if resolved is None:
            raise UnknownColumn(f"unknown column {name!r}: {self.policy.name} has {', '.join(sorted(columns))}")
        self.used_columns.add(resolved)
        return resolved, columns[resolved]

    # --- WHERE -----------------------------------------------------------------------

    def _predicate(self, node: exp.Expression) -> ir.RowExpr:
        expr, value_type = self._row(node)
        if value_type not in (ir.ValueType.BOOL, ir.ValueType.NULL):
            raise InvalidSQL(f"WHERE needs a true/false condition, not {fragment(node)}")
        return expr

    def _row(self, node: exp.Expression) -> tuple[ir.RowExpr, ir.ValueType]:
        """A row expression and its type; refuses ill-typed comparisons up front."""
        if isinstance(node, exp.Paren):
            return self._row(node.this)
        if isinstance(node, exp.Column):
            attribute = self._attribute(node)
            if attribute is not None:
                return attribute.expr, _ATTRIBUTE_KINDS[attribute.type][1]
            name, column = self._column(node)
            return ir.Col(name, as_text=column.type is ColumnType.ID), _VALUE_TYPES[column.type]
        if isinstance(node, (exp.Literal, exp.Boolean, exp.Null, exp.Neg)) and _is_literal(node):
            literal = _literal(node)
            return literal, _literal_type(literal)
        if _is_date_literal(node):
            return ir.Lit(_date(node.this.this)), ir.ValueType.DATE
        date_part = self._date_part(node, clamped=False)
        if date_part is not None:
            return date_part[0], ir.ValueType.NUMBER
        truncated = self._date_trunc(node)
        if truncated is not None:
            return truncated[0], ir.ValueType.DATE
        if type(node) in _COMPARISONS:
            left, right = self._comparable(node, node.this, node.expression)
            return ir.Compare(_COMPARISONS[type(node)], left, right), ir.ValueType.BOOL
        if type(node) in _ARITHMETIC:
            left = self._numeric(node.this)
            right = self._numeric(node.expression)
            return ir.Arith(_ARITHMETIC[type(node)], left, right), ir.ValueType.NUMBER
        if isinstance(node, exp.Neg):
            return ir.Neg(self._numeric(node.this)), ir.ValueType.NUMBER
        if isinstance(node, (exp.And, exp.Or)):
            operands = (self._predicate(node.this), self._predicate(node.expression))
            combined = ir.And(operands) if isinstance(node, exp.And) else ir.Or(operands)
            return combined, ir.ValueType.BOOL
        if isinstance(node, exp.Not):
            return ir.Not(self._predicate(node.this)), ir.ValueType.BOOL
        if isinstance(node, exp.In):
            return self._in_list(node), ir.ValueType.BOOL
        if isinstance(node, exp.Between):
            operand, low = self._comparable(node, node.this, node.args["low"])
            _, high = self._comparable(node, node.this, node.args["high"])
            return ir.Between(operand, low, high), ir.ValueType.BOOL
        if isinstance(node, exp.Is):
            if not isinstance(node.expression, exp.Null):
                raise Unsupported(f"only IS NULL / IS NOT NULL are supported, not {fragment(node)}")
            operand, _ = self._row(node.this)
            return ir.IsNull(operand), ir.ValueType.BOOL
        if isinstance(node, (exp.Like, exp.ILike)):
            return self._like(node), ir.ValueType.BOOL
        if _aggregate_kind(node) is not None:
            raise InvalidSQL(f"aggregates are not allowed in WHERE: {fragment(node)}")
        raise Unsupported(f"{fragment(node)} is not supported in a row condition")

    def _comparable(
        self, node: exp.Expression, left: exp.Expression, right: exp.Expression
    ) -> tuple[ir.RowExpr, ir.RowExpr]:
        """Both sides of a comparison, type-checked; literals compared with an id become text."""
        left_expr, left_type = self._row(left)
        right_expr, right_type = self._row(right)
        left_expr, left_type = _dated(left_expr, left_type, right_type)
        right_expr, right_type = _dated(right_expr, right_type, left_type)
        _check_comparable(node, left_type, right_type, literal=_literal_sides(left_expr, right_expr))
        if ir.ValueType.ID in (left_type, right_type):
            return _as_text(left_expr), _as_text(right_expr)
        return left_expr, right_expr

    def _numeric(self, node: exp.Expression) -> ir.RowExpr:
        expr, value_type = self._row(node)
        if value_type not in (ir.ValueType.NUMBER, ir.ValueType.NULL):
            raise InvalidSQL(f"arithmetic needs numbers: {fragment(node)} is not a number")
        return expr

    def _in_list(self, node: exp.In) -> ir.RowExpr:
        if node.args.get("query") or node.args.get("unnest") or node.args.get("field"):
            raise Unsupported(f"IN needs a list of literal values: {fragment(node)}")
        operand, operand_type = self._row(node.this)
        values = []
        for item in node.expressions:
            if not (_is_literal(item) or _is_date_literal(item)):
                raise Unsupported(f"IN needs a list of literal values: {fragment(item)}")
            written, written_type = self._row(item)
            literal, literal_type = _dated(written, written_type, operand_type)
            assert isinstance(literal, ir.Lit)
            _check_comparable(node, operand_type, literal_type, literal=True)
            values.append(_as_text(literal) if operand_type is ir.ValueType.ID else literal)
        return ir.InList(operand, tuple(values))  # type: ignore[arg-type]  # _as_text keeps a literal a literal

    def _like(self, node: exp.Like | exp.ILike) -> ir.RowExpr:
        if node.args.get("escape"):
            raise Unsupported("LIKE … ESCAPE is not supported")
        operand, operand_type = self._row(node.this)
        if operand_type not in (ir.ValueType.STRING, ir.ValueType.ID):
            raise InvalidSQL(f"LIKE needs a text column: {fragment(node)}")
        pattern = node.expression
        if not (isinstance(pattern, exp.Literal) and pattern.is_string):
            raise Unsupported(f"LIKE needs a literal pattern: {fragment(node)}")
        if len(pattern.this) > MAX_LIKE_PATTERN:
            raise Unsupported(
                f"{fragment(node)}: the LIKE pattern is {len(pattern.this)} characters long; the limit is "
                f"{MAX_LIKE_PATTERN}"
            )
        like = ir.Like(operand, pattern.this, case_sensitive=isinstance(node, exp.Like))
        return ir.Not(like) if node.args.get("negate") else like

    # --- GROUP BY ----------------------------------------------------------------------

    def _group_keys(self, select: exp.Select) -> tuple[ir.GroupKey, ...]:
        group = select.args.get("group")
        if group is None:
            return ()
        for name in ("grouping_sets", "cube", "rollup", "totals"):
            if group.args.get(name):
                raise Unsupported(f"GROUP BY {name.upper().replace('_', ' ')} is not supported")
        keys: list[ir.GroupKey] = []
        aliases = {item.alias.lower(): item.this for item in select.expressions if isinstance(item, exp.Alias)}
        for node in group.expressions:
            node = _group_target(node, select, aliases, self.policy)
            if isinstance(node, exp.Case):
                keys.append(self._case_key(node))
                continue
            date_key = self._date_key(node)
            if date_key is not None:
                keys.append(date_key)
                continue
            if any(isinstance(inner, exp.Floor | exp.Ceil) for inner in node.walk()):
                keys.append(self._binned_key(node))
                continue
            if not isinstance(node, exp.Column):
                raise Unsupported(f"GROUP BY {fragment(node)}: group by columns or CASE WHEN … THEN '<label>' … END")
            attribute = self._attribute(node)
            if attribute is not None:
                keys.append(self._attribute_key(node, attribute))
                continue
            name, column = self._column(node)
            if name == self.policy.unit_column or column.type is ColumnType.ID:
                raise PolicyViolation(f"GROUP BY {name} is refused: it is the privacy unit or an id column")
            public_keys: tuple[ir.Scalar, ...] | None = column.public_keys
            if column.type.is_temporal:
                public_keys = self._day_keys(node, name, column)
            elif public_keys is None and column.type is not ColumnType.CATEGORY:
                raise PolicyViolation(
                    f"GROUP BY {name} is refused: a {column.type} column has no public keys (binning is not supported)"
                )
            if name in (key.column for key in keys):
                raise InvalidSQL(f"GROUP BY names {name} twice")
            keys.append(ir.GroupKey(name, public_keys))
        if math.prod(len(key.values) for key in keys if key.values is not None) > MAX_OUTPUT_GROUPS:
            raise Unsupported(f"the GROUP BY keys make more than {MAX_OUTPUT_GROUPS} groups")
        self.group_columns = tuple(key.column for key in keys)
        return tuple(keys)

    def _binned_key(self, node: exp.Expression) -> ir.GroupKey:
        """``FLOOR(e) * w + c``: keys are public because ``e``'s bounds fix every possible bin."""
        bins = [inner for inner in node.walk() if isinstance(inner, exp.Floor | exp.Ceil)]
        if len(bins) != 1 or bins[0].args.get("decimals") or bins[0].args.get("to"):
            raise Unsupported(f"GROUP BY {fragment(node)}: bin with one FLOOR(…) or CEIL(…) of a bounded number")
        binned = bins[0]
        inner, low, high = self._interval(binned.this)
        ceiling = isinstance(binned, exp.Ceil)
        first, last = (math.ceil(low), math.ceil(high)) if ceiling else (math.floor(low), math.floor(high))
        if last - first >= MAX_OUTPUT_GROUPS:
            raise Unsupported(f"GROUP BY {fragment(node)} makes more than {MAX_OUTPUT_GROUPS} bins")
        expression = self._bin_expression(node, binned, ir.Floor(inner, ceiling))  # refuses what it cannot bin
        labels = tuple(_bin_label(node, binned, value) for value in range(first, last + 1))
        return self._computed_key(node, expression, ir.ColumnKind.INT, labels)

    def _bin_expression(self, node: exp.Expression, binned: exp.Expression, floored: ir.RowExpr) -> ir.RowExpr:
        """The key as a row expression: integer arithmetic around the one FLOOR/CEIL."""
        if node is binned:
            return floored
        if isinstance(node, exp.Paren):
            return self._bin_expression(node.this, binned, floored)
        if isinstance(node, exp.Neg):
            return ir.Neg(self._bin_expression(node.this, binned, floored))
        if type(node) in (exp.Add, exp.Sub, exp.Mul):
            left, right = node.this, node.expression
            if binned in left.walk():
                return ir.Arith(_ARITHMETIC[type(node)], self._bin_expression(left, binned, floored), _integer(right))
            return ir.Arith(_ARITHMETIC[type(node)], _integer(left), self._bin_expression(right, binned, floored))
        raise Unsupported(f"GROUP BY {fragment(node)}: around FLOOR/CEIL use + - * with whole numbers only")

    def _attribute_key(self, node: exp.Column, attribute: _Attribute) -> ir.GroupKey:
        """A public table's column: its key set is the table's distinct values, all public."""
        present: set[ir.Scalar] = {value for value in attribute.values if value is not None}
        if not present:
            raise Unsupported(f"GROUP BY {fragment(node)}: {attribute.identity} is empty in its table: no keys")
        labels = sorted(present)  # type: ignore[type-var]  # one type per column, so they compare
        kind = _ATTRIBUTE_KINDS[attribute.type][0]
        return self._computed_key(node, attribute.expr, kind, labels, identity=attribute.identity)

    def _day_keys(self, node: exp.Expression, name: str, column: ColumnPolicy) -> tuple[dt.date, ...]:
        """GROUP BY a date column: its keys are the days of its declared range."""
        if column.type is ColumnType.DATETIME:
            raise PolicyViolation(
                f"GROUP BY {fragment(node)} is refused: timestamps have no public key set; "
                f"group by DATE_TRUNC('day', {name}) or EXTRACT(HOUR FROM {name})"
            )
        days = TruncUnit.DAY.periods(*column.date_range)
        if len(days) > MAX_OUTPUT_GROUPS:
            raise Unsupported(f"GROUP BY {fragment(node)} makes more than {MAX_OUTPUT_GROUPS} days: truncate to months")
        self.key_types[name] = ir.ValueType.STRING  # released as ISO text
        return tuple(days)

    def _date_key(self, node: exp.Expression) -> ir.GroupKey | None:
        """EXTRACT(part FROM d) or DATE_TRUNC(unit, d): every key follows from d's declared range."""
        part = self._date_part(node, clamped=False)
        if part is not None:
            expr, column = part
            return self._computed_key(node, expr, ir.ColumnKind.INT, expr.field.values(*column.date_range))
        truncated = self._date_trunc(node)
        if truncated is None:
            return None
        trunc, column = truncated
        periods = trunc.unit.periods(*column.date_range)
        if len(periods) > MAX_OUTPUT_GROUPS:
            raise Unsupported(f"GROUP BY {fragment(node)} makes more than {MAX_OUTPUT_GROUPS} groups")
        return self._computed_key(node, trunc, ir.ColumnKind.DATE, periods)

    def _date_column(self, node: exp.Expression, usage: exp.Expression) -> tuple[str, ColumnPolicy]:
        while isinstance(node, exp.Paren):
            node = node.this
        if isinstance(node, exp.Column):
            name, column = self._column(node)
            if column.type.is_temporal:
                return name, column
        raise Unsupported(f"{fragment(usage)}: date parts and DATE_TRUNC take a date or datetime column")

    def _date_part(self, node: exp.Expression, *, clamped: bool) -> tuple[ir.DatePart, ColumnPolicy] | None:
        """EXTRACT(field FROM d), YEAR(d), MONTH(d), …; with ``clamped``, d is first forced into its range."""
        if isinstance(node, exp.Extract):
            field = FIELD_ALIASES.get(node.this.name.lower())
            if field is None:
                raise Unsupported(
                    f"{fragment(node)}: EXTRACT takes one of {', '.join(f.value.upper() for f in DateField)}"
                )
            operand = node.expression
        elif type(node) in _DATE_FUNCTIONS:
            field, operand = _DATE_FUNCTIONS[type(node)], node.this
        else:
            return None
        name, column = self._date_column(operand, node)
        if field.needs_time and column.type is not ColumnType.DATETIME:
            raise InvalidSQL(f"{fragment(node)}: {name} is a date, which has no {field.value}")
        value: ir.RowExpr = ir.Col(name)
        if clamped:
            low, high = column.date_range
            if column.type is ColumnType.DATETIME:
                low, high = dt.datetime.combine(low, dt.time.min), dt.datetime.combine(high, dt.time.max)
            value = ir.Clamp(value, low, high)
        return ir.DatePart(value, field), column

    def _date_trunc(self, node: exp.Expression) -> tuple[ir.DateTrunc, ColumnPolicy] | None:
        """DATE_TRUNC('month', d) and CAST(d AS DATE): the period's first day, a date."""
        if isinstance(node, exp.Cast) and node.to.is_type(exp.DataType.Type.DATE):
            unit = TruncUnit.DAY
        elif isinstance(node, exp.DateTrunc | exp.TimestampTrunc):
            written = node.args.get("unit")
            names = {unit.value: unit for unit in TruncUnit}
            if not isinstance(written, exp.Literal | exp.Var) or written.name.lower() not in names:
                raise Unsupported(
                    f"{fragment(node)}: DATE_TRUNC takes one of {', '.join(repr(name) for name in names)}"
                )
            unit = names[written.name.lower()]
        else:
            return None
        name, column = self._date_column(node.this, node)
        return ir.DateTrunc(ir.Col(name), unit), column

    def _case_key(self, node: exp.Case) -> ir.GroupKey:
        """A computed key whose key set is public: the literal labels of its branches."""
        if node.this is not None:
            raise Unsupported(f"{fragment(node)}: write CASE WHEN <condition> THEN … (CASE x WHEN … is not supported)")
        branches, labels = [], list[ir.Scalar]()
        for branch in node.args.get("ifs") or []:
            label = branch.args["true"]
            if not _is_literal(label) or isinstance(label, exp.Null):
                raise Unsupported(f"GROUP BY {fragment(node)}: each THEN of a grouping CASE must be a literal label")
            literal = _literal(label)
            assert literal.value is not None
            branches.append((self._predicate(branch.this), literal))
            labels.append(literal.value)
        default_node = node.args.get("default")
        default = None
        if default_node is not None and not isinstance(default_node, exp.Null):
            if not _is_literal(default_node):
                raise Unsupported(f"GROUP BY {fragment(node)}: the ELSE of a grouping CASE must be a literal label")
            default = _literal(default_node)
            assert default.value is not None
            labels.append(default.value)
        types = {type(label) for label in labels}
        if len(types) != 1 or bool in types:
            raise InvalidSQL(f"GROUP BY {fragment(node)}: the labels must all be text or all numbers")
        kind = {str: ir.ColumnKind.TEXT, int: ir.ColumnKind.INT, float: ir.ColumnKind.FLOAT}[types.pop()]
        return self._computed_key(node, ir.Case(tuple(branches), default), kind, labels)

    def _computed_key(
        self,
        node: exp.Expression,
        expression: ir.RowExpr,
        kind: ir.ColumnKind,
        labels: Sequence[ir.Scalar],
        identity: str | None = None,
    ) -> ir.GroupKey:
        """Register a GROUP BY expression as a derived key column whose public key set is ``labels``.

        ``identity`` names the key however the SELECT list spells it (a joined column); else its SQL.
        """
        name = f"__key_{len(self.computed_keys)}"
        self.derived.append(ir.DerivedColumn(name, expression, kind))
        self.computed_keys[identity or node.sql()] = name
        self.key_types[name] = _KEY_TYPES[kind]
        return ir.GroupKey(name, tuple(dict.fromkeys(labels)))

    # --- SELECT list and aggregates ------------------------------------------------

    def _select_list(self, select: exp.Select) -> tuple[ir.OutputColumn, ...]:
        output: list[ir.OutputColumn] = []
        for item in select.expressions:
            if isinstance(item, exp.Star) or (isinstance(item, exp.Column) and isinstance(item.this, exp.Star)):
                raise PolicyViolation("SELECT * is refused: rows are never released; select aggregates")
            node = item.this if isinstance(item, exp.Alias) else item
            name = item.alias if isinstance(item, exp.Alias) else default_name(node)
            if name.lower() in (column.name.lower() for column in output):
                raise InvalidSQL(f"two output columns are named {name!r}: give one an alias")
            output.append(ir.OutputColumn(name, self._post(node)))
        return tuple(output)

    def _post(self, node: exp.Expression) -> ir.PostExpr:
        """An expression over aggregates and group keys, evaluated after noise."""
        if isinstance(node, exp.Paren):
            return self._post(node.this)
        if _aggregate_kind(node) is not None:
            return ir.AggRef(self._aggregate(node))
        if node.sql() in self.computed_keys:  # a computed GROUP BY key (CASE labels, FLOOR bins)
            return ir.KeyRef(self.computed_keys[node.sql()])
        attribute = self._attribute(node) if isinstance(node, exp.Column) else None
        if attribute is not None:
            if attribute.identity not in self.computed_keys:
                raise InvalidSQL(f"column {fragment(node)} must appear in GROUP BY or be inside an aggregate")
            return ir.KeyRef(self.computed_keys[attribute.identity])
        if isinstance(node, exp.Column):
            name, _ = self._column(node)
            if name not in self.group_columns:
                raise InvalidSQL(
                    f"column {name} must appear in GROUP BY or be inside an aggregate (rows are never released)"
                )
            return ir.KeyRef(name)
        if _is_literal(node):
            return _literal(node)
        if type(node) in _ARITHMETIC:
            return ir.PostArith(_ARITHMETIC[type(node)], self._post(node.this), self._post(node.expression))
        if isinstance(node, exp.Neg):
            return ir.PostNeg(self._post(node.this))
        raise Unsupported(f"{fragment(node)} is not supported in the SELECT list")

    def _aggregate(self, node: exp.Expression) -> int:
        kind = _aggregate_kind(node)
        assert kind is not None
        argument = node.expressions[0] if isinstance(node, exp.Anonymous) and len(node.expressions) == 1 else node.this
        if isinstance(argument, exp.Distinct):
            return self._aggregate_index(self._count_distinct(node, argument))
        extra = node.expressions[1:] if isinstance(node, exp.Anonymous) else node.expressions
        if extra or argument is None or any(node.args.get(key) for key in ("filter", "ignore_nulls")):
            raise Unsupported(f"{fragment(node)}: extra aggregate arguments are not supported")
        if kind is ir.AggregateKind.QUANTILE:
            aggregate = self._quantile(node)
        elif kind is ir.AggregateKind.COUNT:
            aggregate = self._count(node, argument)
        else:
            value = self._fixed_point(node, argument)
            if kind is ir.AggregateKind.SUM:
                aggregate = ir.Aggregate(kind, (self._part(ir.Part(ir.PartKind.SUM, value=value)),), value)
            elif kind.is_spread:
                aggregate = self._spread(node, kind, argument, value)
            else:
                count = self._part(ir.Part(ir.PartKind.COUNT_VALUES, counted_column=value.column))
                centered = self._part(ir.Part(ir.PartKind.CENTERED_SUM, value=value))
                aggregate = ir.Aggregate(kind, (count, centered), value)
        return self._aggregate_index(aggregate)

    def _spread(
        self, node: exp.Expression, kind: ir.AggregateKind, argument: exp.Expression, value: ir.FixedPoint
    ) -> ir.Aggregate:
        """Variance parts: count, centred sum, and the sum of squared centred values (bounded by the half-width²)."""
        expr = self._interval(argument)[0]
        centred = ir.Arith(ir.ArithOp.SUB, expr, ir.Lit(value.center / value.scale))
        half_width = value.centered_magnitude / value.scale
        name = self._derived_column(ir.Arith(ir.ArithOp.MUL, centred, centred))
        squares = fixed_point(name, 0.0, half_width**2, integer=False)
        count = self._part(ir.Part(ir.PartKind.COUNT_VALUES, counted_column=value.column))
        centered_sum = self._part(ir.Part(ir.PartKind.CENTERED_SUM, value=value))
        square_sum = self._part(ir.Part(ir.PartKind.SUM, value=squares))
        return ir.Aggregate(kind, (count, centered_sum, square_sum), value, squares)

    def _quantile(self, node: exp.Expression) -> ir.Aggregate:
        """MEDIAN(x), QUANTILE(x, p), APPROX_QUANTILE(x, p), PERCENTILE_CONT(p) WITHIN GROUP (ORDER BY x)."""
        if type(node) in EXTREME_QUANTILES:
            if node.expressions:
                raise Unsupported(f"{fragment(node)}: MIN/MAX of one value only")
            alpha = EXTREME_QUANTILES[type(node)]
            self.notes.append(
                f"{fragment(node)} is answered as the {alpha:g} quantile by a DP mechanism, not as the exact extreme"
            )
            value = self._fixed_point(node, node.this)
            part = self._part(ir.Part(ir.PartKind.QUANTILE, value=value, alpha=alpha))
            return ir.Aggregate(ir.AggregateKind.QUANTILE, (part,), value)
        if isinstance(node, exp.Median):
            argument, alpha_node = node.this, None
        elif isinstance(node, exp.WithinGroup):
            percentile, order = node.this, node.expression
            if not isinstance(percentile, exp.PercentileCont | exp.PercentileDisc) or len(order.expressions) != 1:
                raise Unsupported(f"{fragment(node)}: write PERCENTILE_CONT(p) WITHIN GROUP (ORDER BY x)")
            if order.expressions[0].args.get("desc"):
                raise Unsupported(f"{fragment(node)}: order the values ascending")
            argument, alpha_node = order.expressions[0].this, percentile.this
        else:
            argument, alpha_node = node.this, node.args.get("quantile")
        alpha = 0.5
        if alpha_node is not None:
            literal = _literal(alpha_node) if _is_literal(alpha_node) else None
            if literal is None or isinstance(literal.value, bool) or not isinstance(literal.value, int | float):
                raise InvalidSQL(f"{fragment(node)}: the quantile must be a number between 0 and 1")
            alpha = float(literal.value)
        if not 0 < alpha < 1:
            raise InvalidSQL(f"{fragment(node)}: the quantile must be strictly between 0 and 1")
        value = self._fixed_point(node, argument)
        part = self._part(ir.Part(ir.PartKind.QUANTILE, value=value, alpha=alpha))
        return ir.Aggregate(ir.AggregateKind.QUANTILE, (part,), value)

    def _aggregate_index(self, aggregate: ir.Aggregate) -> int:
        if aggregate not in self.aggregates:
            self.aggregates.append(aggregate)
        return self.aggregates.index(aggregate)

    def _count_distinct(self, node: exp.Expression, argument: exp.Distinct) -> ir.Aggregate:
        """COUNT(DISTINCT unit): members per group, one each, so the bound needs no row cap."""
        columns = argument.expressions
        unit = self.policy.unit_column
        if not isinstance(node, exp.Count) or len(columns) != 1 or not isinstance(columns[0], exp.Column):
            raise Unsupported(f"{fragment(node)}: only COUNT(DISTINCT <privacy unit>) is supported")
        name, _ = self._column(columns[0])
        if unit is None or name != unit:
            raise Unsupported(
                f"{fragment(node)}: COUNT(DISTINCT) is answered only for the privacy unit"
                f"{f' ({unit})' if unit else ' of a member-level dataset'}; one member can hold many distinct "
                "values of another column, so their count has no bound the policy sets: use COUNT(column) instead"
            )
        return ir.Aggregate(ir.AggregateKind.COUNT, (self._part(ir.Part(ir.PartKind.COUNT_UNITS)),))

    def _count(self, node: exp.Expression, argument: exp.Expression) -> ir.Aggregate:
        if isinstance(argument, exp.Star) or (isinstance(argument, exp.Literal) and not argument.is_string):
            part = ir.Part(ir.PartKind.COUNT_ROWS)
        elif isinstance(argument, exp.Column) and (attribute := self._attribute(argument)) is not None:
            name = self._derived_column(attribute.expr, _ATTRIBUTE_KINDS[attribute.type][0])
            part = ir.Part(ir.PartKind.COUNT_VALUES, counted_column=name)
        elif isinstance(argument, exp.Column):
            name, _ = self._column(argument)
            part = ir.Part(ir.PartKind.COUNT_VALUES, counted_column=name)
        else:
            name, _, _ = self._derived(argument)
            part = ir.Part(ir.PartKind.COUNT_VALUES, counted_column=name)
        return ir.Aggregate(ir.AggregateKind.COUNT, (self._part(part),))

    def _fixed_point(self, node: exp.Expression, argument: exp.Expression) -> ir.FixedPoint:
        if isinstance(argument, exp.Column) and self._attribute(argument) is None:
            name, column = self._column(argument)
            if not column.type.is_numeric:
                raise PolicyViolation(f"{fragment(node)}: {_not_a_number(name, column)}")
            low, high = column.number_bounds
            integer = column.type is ColumnType.INT
        else:
            name, low, high = self._derived(argument)
            integer = False
        return fixed_point(name, low, high, integer)

    # --- expressions inside aggregates ----------------------------------------------

    def _derived(self, node: exp.Expression) -> tuple[str, float, float]:
        """A derived per-row column for an aggregated expression, with bounds by interval arithmetic."""
        expr, low, high = self._interval(node)
        return self._derived_column(expr), low, high

    def _derived_column(self, expr: ir.RowExpr, kind: ir.ColumnKind = ir.ColumnKind.FLOAT) -> str:
        for derived in self.derived:
            if derived.expr == expr and derived.kind is kind:
                return derived.name
        name = f"__derived_{len(self.derived)}"
        self.derived.append(ir.DerivedColumn(name, expr, kind))
        return name

    def _interval(self, node: exp.Expression) -> tuple[ir.RowExpr, float, float]:
        """The expression (base columns clamped to their bounds) and bounds no row can leave."""
        if isinstance(node, exp.Paren):
            return self._interval(node.this)
        attribute = self._attribute(node) if isinstance(node, exp.Column) else None
        if attribute is not None:
            numbers = [value for value in attribute.values if value is not None]
            if not attribute.type.is_numeric or not numbers:
                raise PolicyViolation(f"{fragment(node)}: {attribute.identity} holds no numbers to aggregate")
            return attribute.expr, float(min(numbers)), float(max(numbers))  # type: ignore[type-var, arg-type]
        if isinstance(node, exp.Column):
            name, column = self._column(node)
            if not column.type.is_numeric:
                raise PolicyViolation(f"{fragment(node)}: {_not_a_number(name, column)}")
            low, high = column.number_bounds
            return ir.Clamp(ir.Col(name), low, high), low, high
        if _is_literal(node):
            literal = _literal(node)
            if isinstance(literal.value, bool) or not isinstance(literal.value, int | float):
                raise InvalidSQL(f"{fragment(node)} is not a number")
            return literal, float(literal.value), float(literal.value)
        if isinstance(node, exp.Neg):
            expr, low, high = self._interval(node.this)
            return ir.Neg(expr), -high, -low
        if type(node) in _ARITHMETIC:
            return self._arith_interval(node)
        date_part = self._date_part(node, clamped=True)
        if date_part is not None:
            part, column = date_part
            values = part.field.values(*column.date_range)
            return part, float(values[0]), float(values[-1])
        if isinstance(node, exp.Case):
            return self._case_interval(node)
        if isinstance(node, exp.Round | exp.Cast):
            return self._rounded_interval(node)
        if isinstance(node, exp.Least | exp.Greatest):
            operands = [self._interval(operand) for operand in [node.this, *node.expressions]]
            pick = max if isinstance(node, exp.Greatest) else min
            expr = ir.Extreme(tuple(o[0] for o in operands), greatest=isinstance(node, exp.Greatest))
            return expr, pick(o[1] for o in operands), pick(o[2] for o in operands)
        if isinstance(node, exp.Coalesce):
            operands = [self._interval(operand) for operand in [node.this, *node.expressions]]
            return ir.Coalesce(tuple(o[0] for o in operands)), min(o[1] for o in operands), max(o[2] for o in operands)
        raise Unsupported(
            f"{fragment(node)}: inside an aggregate use columns, numbers, + - * /, CASE, LEAST, GREATEST, COALESCE"
        )

    def _arith_interval(self, node: exp.Expression) -> tuple[ir.RowExpr, float, float]:
        op = _ARITHMETIC[type(node)]
        left, left_low, left_high = self._interval(node.this)
        right, right_low, right_high = self._interval(node.expression)
        if op is ir.ArithOp.ADD:
            low, high = left_low + right_low, left_high + right_high
        elif op is ir.ArithOp.SUB:
            low, high = left_low - right_high, left_high - right_low
        else:
            if op is ir.ArithOp.DIV:
                if right_low <= 0 <= right_high:
                    raise Unsupported(
                        f"{fragment(node)}: the divisor's bounds [{right_low:g}, {right_high:g}] include 0, so the "
                        "quotient has no bound; divide by a number, or by a column whose bounds exclude 0"
                    )
                right_low, right_high = 1 / right_high, 1 / right_low
            corners = [a * b for a in (left_low, left_high) for b in (right_low, right_high)]
            low, high = min(corners), max(corners)
        if not (math.isfinite(low) and math.isfinite(high)):
            raise Unsupported(f"{fragment(node)}: the bounds overflow")
        return ir.Arith(op, left, right), low, high

    def _rounded_interval(self, node: exp.Round | exp.Cast) -> tuple[ir.RowExpr, float, float]:
        """ROUND(x[, d]) and numeric CASTs (to an integer type: rounded); rounding is monotone, so are the bounds."""
        if isinstance(node, exp.Cast):
            target = node.to
            if target.is_type(*exp.DataType.FLOAT_TYPES, exp.DataType.Type.DECIMAL):
                return self._interval(node.this)
            if not target.is_type(*exp.DataType.INTEGER_TYPES):
                raise Unsupported(f"{fragment(node)}: inside an aggregate, CAST to a number type only")
            decimals = 0
        else:
            places = node.args.get("decimals")
            literal = _literal(places) if places is not None and _is_literal(places) else ir.Lit(0)
            if places is not None and not (isinstance(literal.value, int) and not isinstance(literal.value, bool)):
                raise Unsupported(f"{fragment(node)}: ROUND takes a whole number of decimals")
            decimals = int(literal.value)  # type: ignore[arg-type]
            if abs(decimals) > MAX_ROUND_DECIMALS:
                raise Unsupported(
                    f"{fragment(node)}: ROUND takes from {-MAX_ROUND_DECIMALS} to {MAX_ROUND_DECIMALS} decimals"
                )
        expr, low, high = self._interval(node.this)
        return _rounded(expr, decimals), _round_half_away(low, decimals), _round_half_away(high, decimals)

    def _case_interval(self, node: exp.Case) -> tuple[ir.RowExpr, float, float]:
        if node.this is not None:
            raise Unsupported(
                f"{fragment(node)}: write CASE WHEN <condition> THEN … (simple CASE x WHEN … is not supported)"
            )
        branches = []
        lows, highs = [], []
        for branch in node.args.get("ifs") or []:
            condition = self._predicate(branch.this)
            value, low, high = self._interval(branch.args["true"])
            branches.append((condition, value))
            lows.append(low)
            highs.append(high)
        default = None
        if node.args.get("default") is not None and not isinstance(node.args["default"], exp.Null):
            default, low, high = self._interval(node.args["default"])
            lows.append(low)
            highs.append(high)
        return ir.Case(tuple(branches), default), min(lows), max(highs)

    def _part(self, part: ir.Part) -> int:
        if part not in self.parts:
            self.parts.append(part)
        return self.parts.index(part)

    # --- HAVING ------------------------------------------------------------------------

    def _having(self, select: exp.Select, output: tuple[ir.OutputColumn, ...]) -> ir.PostPredicate | None:
        having = select.args.get("having")
        if having is None:
            return None
        aliases = {column.name.lower(): column.expr for column in output}
        return self._post_predicate(having.this, aliases)

    def _post_predicate(self, node: exp.Expression, aliases: dict[str, ir.PostExpr]) -> ir.PostPredicate:
        """A condition on released values: comparisons of aggregates, keys, aliases and literals."""
        if isinstance(node, exp.Paren):
            return self._post_predicate(node.this, aliases)
        if isinstance(node, (exp.And, exp.Or)):
            operands = (self._post_predicate(node.this, aliases), self._post_predicate(node.expression, aliases))
            return ir.PostAnd(operands) if isinstance(node, exp.And) else ir.PostOr(operands)
        if isinstance(node, exp.Not):
            return ir.PostNot(self._post_predicate(node.this, aliases))
        if type(node) in _COMPARISONS:
            left = self._post_operand(node.this, aliases)
            right = self._post_operand(node.expression, aliases)
            _check_post_comparable(node, left, right, self.policy, self.key_types)
            return ir.PostCompare(_COMPARISONS[type(node)], left, right)
        if isinstance(node, exp.Between):
            operand = self._post_operand(node.this, aliases)
            low = self._post_operand(node.args["low"], aliases)
            high = self._post_operand(node.args["high"], aliases)
            _check_post_comparable(node, operand, low, self.policy, self.key_types)
            _check_post_comparable(node, operand, high, self.policy, self.key_types)
            return ir.PostAnd(
                (ir.PostCompare(ir.CompareOp.GTE, operand, low), ir.PostCompare(ir.CompareOp.LTE, operand, high))
            )
        if isinstance(node, exp.In) and not node.args.get("query") and node.expressions:
            operand = self._post_operand(node.this, aliases)
            choices = []
            for item in node.expressions:
                if not _is_literal(item):
                    raise Unsupported(f"IN needs a list of literal values: {fragment(item)}")
                literal = _literal(item)
                _check_post_comparable(node, operand, literal, self.policy, self.key_types)
                choices.append(ir.PostCompare(ir.CompareOp.EQ, operand, literal))
            return ir.PostOr(tuple(choices))
        raise Unsupported(
            f"HAVING {fragment(node)}: compare aggregates, keys and literals (=, <, BETWEEN, IN) with AND/OR/NOT"
        )

    def _post_operand(self, node: exp.Expression, aliases: dict[str, ir.PostExpr]) -> ir.PostExpr:
        if isinstance(node, exp.Column) and not node.table and node.name.lower() in aliases:
            if node.name not in self.group_columns:
                return aliases[node.name.lower()]
        return self._post(node)

    # --- ORDER BY / LIMIT -------------------------------------------------------------

    def _order_by(self, select: exp.Select, output: tuple[ir.OutputColumn, ...]) -> tuple[ir.OrderItem, ...]:
        order = select.args.get("order")
        if order is None:
            return ()
        items = []
        by_name = {column.name.lower(): column.expr for column in output}
        for ordered in order.expressions:
            node = ordered.this
            if isinstance(node, exp.Column) and not node.table and node.name.lower() in by_name:
                expr = by_name[node.name.lower()]
            elif isinstance(node, exp.Literal) and not node.is_string:
                position = int(node.this) if node.this.isdigit() else 0
                if not 1 <= position <= len(output):
                    raise InvalidSQL(f"ORDER BY {node.this}: there are {len(output)} output columns")
                expr = output[position - 1].expr
            else:
                expr = self._post(node)
            items.append(ir.OrderItem(expr, descending=bool(ordered.args.get("desc"))))
        return tuple(items)

    def _limit(self, select: exp.Select) -> tuple[int | None, int]:
        limit = select.args.get("limit")
        offset = select.args.get("offset")
        return (
            _non_negative_int(limit.expression, "LIMIT") if limit is not None else None,
            _non_negative_int(offset.expression, "OFFSET") if offset is not None else 0,
        )


def _round_half_away(value: float, decimals: int) -> float:
    if decimals < 0:
        return _round_half_away(value / 10.0**-decimals, 0) * 10.0**-decimals
    scale = 10.0**decimals
    return math.copysign(math.floor(abs(value) * scale + 0.5), value) / scale


def _rounded(expr: ir.RowExpr, decimals: int) -> ir.RowExpr:
    """ROUND(x, d); for d < 0 (tens, hundreds) as ROUND(x / 10^-d) * 10^-d, since backends round to places only."""
    if decimals >= 0:
        return ir.Round(expr, decimals)
    step = ir.Lit(10**-decimals)
    return ir.Arith(ir.ArithOp.MUL, ir.Round(ir.Arith(ir.ArithOp.DIV, expr, step), 0), step)


def _integer(node: exp.Expression) -> ir.Lit:
    literal = _literal(node) if _is_literal(node) else None
    if literal is None or isinstance(literal.value, bool) or not isinstance(literal.value, int):
        raise Unsupported(f"{fragment(node)}: around FLOOR/CEIL use whole numbers")
    return literal


def _bin_label(node: exp.Expression, binned: exp.Expression, value: int) -> int:
    """The key one bin gets: the GROUP BY expression evaluated with FLOOR(…) = ``value``.

    Every step must stay within ±2^53, where the backends' float64 arithmetic and the int64 keys agree exactly.
    """
    if isinstance(node, exp.Paren):
        return _bin_label(node.this, binned, value)
    if node is binned:
        label = value
    elif isinstance(node, exp.Neg):
        label = -_bin_label(node.this, binned, value)
    else:
        left, right = node.this, node.expression
        evaluate = {exp.Add: operator.add, exp.Sub: operator.sub, exp.Mul: operator.mul}[type(node)]
        if binned in left.walk():
            label = evaluate(_bin_label(left, binned, value), int(_integer(right).value))  # type: ignore[arg-type]
        else:
            label = evaluate(int(_integer(left).value), _bin_label(right, binned, value))  # type: ignore[arg-type]
    if abs(label) > MAX_EXACT_INTEGER:
        raise Unsupported(f"GROUP BY {fragment(node)}: the bin labels leave ±2^53, where numbers stop being exact")
    return label


def _group_target(
    node: exp.Expression, select: exp.Select, aliases: dict[str, exp.Expression], policy: Policy
) -> exp.Expression:
    """What a GROUP BY item names: a SELECT item by position, a SELECT alias that is not a column, or itself."""
    if isinstance(node, exp.Literal) and not node.is_string and node.this.isdigit():
        position = int(node.this)
        if not 1 <= position <= len(select.expressions):
            raise InvalidSQL(f"GROUP BY {position}: there are {len(select.expressions)} output columns")
        item = select.expressions[position - 1]
        return item.this if isinstance(item, exp.Alias) else item
    if isinstance(node, exp.Column) and not node.table:
        columns = {name.lower() for name in policy.columns}
        if node.name.lower() not in columns and node.name.lower() in aliases:
            return aliases[node.name.lower()]
    return node


def _aggregate_kind(node: exp.Expression) -> ir.AggregateKind | None:
    if isinstance(node, exp.Anonymous) and node.name.upper() == "VAR":
        return ir.AggregateKind.VAR_SAMP
    return _AGGREGATES.get(type(node))


def _refuse_constructs(select: exp.Select) -> None:
    """Refuse, by name, what inlining left that would read other data (the allow-list has refused the rest)."""
    for node in select.walk():
        for construct, reason in _REFUSED.items():
            if isinstance(node, construct):
                raise Unsupported(f"{reason}: {fragment(node)}")
        if isinstance(node, exp.Select) and node is not select:
            raise Unsupported(f"subqueries are not supported yet: {fragment(node)}")


def _post_type(expr: ir.PostExpr, policy: Policy, key_types: dict[str, ir.ValueType]) -> ir.ValueType:
    if isinstance(expr, ir.KeyRef):
        return key_types.get(expr.name) or _VALUE_TYPES[policy.columns[expr.name].type]
    if isinstance(expr, ir.Lit):
        return _literal_type(expr)
    return ir.ValueType.NUMBER


def _check_post_comparable(
    node: exp.Expression, left: ir.PostExpr, right: ir.PostExpr, policy: Policy, key_types: dict[str, ir.ValueType]
) -> None:
    left_type, right_type = _post_type(left, policy, key_types), _post_type(right, policy, key_types)
    if ir.ValueType.NULL not in (left_type, right_type) and left_type != right_type:
        raise InvalidSQL(f"cannot compare a {left_type.value} with a {right_type.value}: {fragment(node)}")


def _literal(node: exp.Expression) -> ir.Lit:
    if isinstance(node, exp.Null):
        return ir.Lit(None)
    if isinstance(node, exp.Boolean):
        return ir.Lit(bool(node.this))
    if isinstance(node, exp.Neg):
        inner = _literal(node.this)
        if isinstance(inner.value, bool) or not isinstance(inner.value, (int, float)):
            raise InvalidSQL(f"cannot negate {fragment(node)}")
        return ir.Lit(-inner.value)
    if not isinstance(node, exp.Literal):
        raise Unsupported(f"{fragment(node)} is not a literal value")
    if node.is_string:
        return ir.Lit(node.this)
    text = node.this
    try:
        number: int | float = int(text)
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            raise InvalidSQL(f"{text!r} is not a number") from None
    if isinstance(number, int) and abs(number) >= 2**63:
        number = float(number)
    if isinstance(number, float) and not math.isfinite(number):
        raise InvalidSQL(f"{text!r} is not a finite number")
    return ir.Lit(number)


def _literal_type(literal: ir.Lit) -> ir.ValueType:
    value = literal.value
    if value is None:
        return ir.ValueType.NULL
    if isinstance(value, bool):
        return ir.ValueType.BOOL
    if isinstance(value, str):
        return ir.ValueType.STRING
    if isinstance(value, dt.date):
        return ir.ValueType.DATE
    return ir.ValueType.NUMBER


def _is_literal(node: exp.Expression) -> bool:
    if isinstance(node, exp.Neg):
        return isinstance(node.this, exp.Literal) and not node.this.is_string
    return isinstance(node, (exp.Literal, exp.Boolean, exp.Null))


def _not_a_number(name: str, column: ColumnPolicy) -> str:
    if column.type.is_temporal:
        return f"{name} is a {column.type}; aggregate a number from it, e.g. EXTRACT(YEAR FROM {name})"
    return f"{name} is a {column.type} column without bounds; SUM, AVG and quantiles need a bounded number"


def _is_date_literal(node: exp.Expression) -> bool:
    """``DATE '2024-01-31'`` (sqlglot reads it as a cast of a string)."""
    return (
        isinstance(node, exp.Cast)
        and node.to.is_type(exp.DataType.Type.DATE)
        and isinstance(node.this, exp.Literal)
        and node.this.is_string
    )


def _date(text: str) -> dt.date:
    try:
        return parse_date(text)
    except ValueError as error:
        raise InvalidSQL(str(error)) from None


def _dated(expr: ir.RowExpr, value_type: ir.ValueType, other: ir.ValueType) -> tuple[ir.RowExpr, ir.ValueType]:
    """A text literal compared with a date is read as a date (``d >= '2024-01-01'``)."""
    if other is ir.ValueType.DATE and isinstance(expr, ir.Lit) and isinstance(expr.value, str):
        return ir.Lit(_date(expr.value)), ir.ValueType.DATE
    return expr, value_type


def _literal_sides(*exprs: ir.RowExpr) -> bool:
    return any(isinstance(expr, ir.Lit) for expr in exprs)


def _as_text(expr: ir.RowExpr) -> ir.RowExpr:
    if isinstance(expr, ir.Lit) and expr.value is not None and not isinstance(expr.value, str):
        return ir.Lit(str(expr.value))
    return expr


def _check_comparable(node: exp.Expression, left: ir.ValueType, right: ir.ValueType, *, literal: bool) -> None:
    """Refuse comparisons whose types differ (they would fail, or silently never match, on data)."""
    if ir.ValueType.NULL in (left, right) or left == right:
        return
    if (
        literal
        and ir.ValueType.ID in (left, right)
        and {left, right} <= {ir.ValueType.ID, ir.ValueType.STRING, ir.ValueType.NUMBER}
    ):
        return
    raise InvalidSQL(f"cannot compare a {left.value} with a {right.value}: {fragment(node)}")


def _non_negative_int(node: exp.Expression, clause: str) -> int:
    if isinstance(node, exp.Literal) and not node.is_string and node.this.isdigit():
        return int(node.this)
    raise InvalidSQL(f"{clause} needs a non-negative whole number, not {fragment(node)}")
