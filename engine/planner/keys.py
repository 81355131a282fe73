"""The GROUP BY pass: each key and its key set, public (declared, binned, dates, CASE labels, joined) or private."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from sqlglot import exp

from engine import plan as ir
from engine.dates import TruncUnit
from engine.errors import InvalidSQL, PolicyViolation, Unsupported
from engine.planner.bins import bin_expression, bin_label
from engine.planner.context import PlanContext
from engine.planner.scope import Attribute
from engine.planner.sql_forms import ATTRIBUTE_KINDS, is_literal, literal
from engine.planner.temporal import date_part, date_trunc
from engine.policy import ColumnPolicy, ColumnType, Policy
from engine.sql import fragment

MAX_OUTPUT_GROUPS = 100_000
"""Rows of public group keys one query may release."""
KEY_TYPES = {
    ir.ColumnKind.TEXT: ir.ValueType.STRING,
    ir.ColumnKind.DATE: ir.ValueType.STRING,  # released as ISO text
    ir.ColumnKind.INT: ir.ValueType.NUMBER,
    ir.ColumnKind.FLOAT: ir.ValueType.NUMBER,
    ir.ColumnKind.BOOL: ir.ValueType.BOOL,
}
"""How HAVING compares a computed key of each kind."""


@dataclass(frozen=True)
class Grouping:
    """The GROUP BY keys, and how later clauses name them."""

    keys: tuple[ir.GroupKey, ...]
    computed_keys: Mapping[str, str]
    """GROUP BY expressions (their SQL: CASE labels, FLOOR bins; or a joined column's identity) → the key column."""
    key_types: Mapping[str, ir.ValueType]
    """Key columns whose type in HAVING is not their policy column's (computed keys, days released as text)."""

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(key.column for key in self.keys)


def group_keys(select: exp.Select, context: PlanContext) -> Grouping:
    group = select.args.get("group")
    if group is None:
        return Grouping((), {}, {})
    for name in ("grouping_sets", "cube", "rollup", "totals"):
        if group.args.get(name):
            raise Unsupported(f"GROUP BY {name.upper().replace('_', ' ')} is not supported")
    builder = _KeyBuilder(context)
    keys: list[ir.GroupKey] = []
    aliases = {item.alias.lower(): item.this for item in select.expressions if isinstance(item, exp.Alias)}
    for node in group.expressions:
        keys.append(builder.key(_group_target(node, select, aliases, builder.policy), keys))
    if math.prod(len(key.values) for key in keys if key.values is not None) > MAX_OUTPUT_GROUPS:
        raise Unsupported(f"the GROUP BY keys make more than {MAX_OUTPUT_GROUPS} groups")
    return Grouping(tuple(keys), builder.computed_keys, builder.key_types)


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


@dataclass
class _KeyBuilder:
    context: PlanContext
    computed_keys: dict[str, str] = field(default_factory=dict)
    key_types: dict[str, ir.ValueType] = field(default_factory=dict)

    @property
    def policy(self) -> Policy:
        return self.context.policy

    def key(self, node: exp.Expression, earlier: Sequence[ir.GroupKey]) -> ir.GroupKey:
        """One GROUP BY item's key; a policy column must not repeat one of the ``earlier`` keys."""
        if isinstance(node, exp.Case):
            return self._case_key(node)
        date_key = self._date_key(node)
        if date_key is not None:
            return date_key
        if any(isinstance(inner, exp.Floor | exp.Ceil) for inner in node.walk()):
            return self._binned_key(node)
        if not isinstance(node, exp.Column):
            raise Unsupported(f"GROUP BY {fragment(node)}: group by columns or CASE WHEN … THEN '<label>' … END")
        names = self.context.names
        attribute = names.attribute(node)
        if attribute is not None:
            return self._attribute_key(node, attribute)
        name, column = names.column(node)
        if name == self.policy.unit_column or column.type is ColumnType.ID:
            raise PolicyViolation(f"GROUP BY {name} is refused: it is the privacy unit or an id column")
        public_keys: tuple[ir.Scalar, ...] | None = column.public_keys
        if column.type.is_temporal:
            public_keys = self._day_keys(node, name, column)
        elif public_keys is None and column.type is not ColumnType.CATEGORY:
            raise PolicyViolation(
                f"GROUP BY {name} is refused: a {column.type} column has no public keys (binning is not supported)"
            )
        if name in (key.column for key in earlier):
            raise InvalidSQL(f"GROUP BY names {name} twice")
        return ir.GroupKey(name, public_keys)

    def _binned_key(self, node: exp.Expression) -> ir.GroupKey:
        """``FLOOR(e) * w + c``: keys are public because ``e``'s bounds fix every possible bin."""
        bins = [inner for inner in node.walk() if isinstance(inner, exp.Floor | exp.Ceil)]
        if len(bins) != 1 or bins[0].args.get("decimals") or bins[0].args.get("to"):
            raise Unsupported(f"GROUP BY {fragment(node)}: bin with one FLOOR(…) or CEIL(…) of a bounded number")
        binned = bins[0]
        inner, low, high = self.context.intervals.interval(binned.this)
        ceiling = isinstance(binned, exp.Ceil)
        first, last = (math.ceil(low), math.ceil(high)) if ceiling else (math.floor(low), math.floor(high))
        if last - first >= MAX_OUTPUT_GROUPS:
            raise Unsupported(f"GROUP BY {fragment(node)} makes more than {MAX_OUTPUT_GROUPS} bins")
        expression = bin_expression(node, binned, ir.Floor(inner, ceiling))  # refuses what it cannot bin
        labels = tuple(bin_label(node, binned, value) for value in range(first, last + 1))
        return self._computed_key(node, expression, ir.ColumnKind.INT, labels)

    def _attribute_key(self, node: exp.Column, attribute: Attribute) -> ir.GroupKey:
        """A public table's column: its key set is the table's distinct values, all public."""
        present: set[ir.Scalar] = {value for value in attribute.values if value is not None}
        if not present:
            raise Unsupported(f"GROUP BY {fragment(node)}: {attribute.identity} is empty in its table: no keys")
        labels = sorted(present)  # type: ignore[type-var]  # one type per column, so they compare
        kind = ATTRIBUTE_KINDS[attribute.type][0]
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
        names = self.context.names
        part = date_part(names, node, clamped=False)
        if part is not None:
            expr, column = part
            return self._computed_key(node, expr, ir.ColumnKind.INT, expr.field.values(*column.date_range))
        truncated = date_trunc(names, node)
        if truncated is None:
            return None
        trunc, column = truncated
        periods = trunc.unit.periods(*column.date_range)
        if len(periods) > MAX_OUTPUT_GROUPS:
            raise Unsupported(f"GROUP BY {fragment(node)} makes more than {MAX_OUTPUT_GROUPS} groups")
        return self._computed_key(node, trunc, ir.ColumnKind.DATE, periods)

    def _case_key(self, node: exp.Case) -> ir.GroupKey:
        """A computed key whose key set is public: the literal labels of its branches."""
        if node.this is not None:
            raise Unsupported(f"{fragment(node)}: write CASE WHEN <condition> THEN … (CASE x WHEN … is not supported)")
        branches, labels = [], list[ir.Scalar]()
        for branch in node.args.get("ifs") or []:
            label = branch.args["true"]
            if not is_literal(label) or isinstance(label, exp.Null):
                raise Unsupported(f"GROUP BY {fragment(node)}: each THEN of a grouping CASE must be a literal label")
            value = literal(label)
            assert value.value is not None
            branches.append((self.context.rows.predicate(branch.this), value))
            labels.append(value.value)
        default_node = node.args.get("default")
        default = None
        if default_node is not None and not isinstance(default_node, exp.Null):
            if not is_literal(default_node):
                raise Unsupported(f"GROUP BY {fragment(node)}: the ELSE of a grouping CASE must be a literal label")
            default = literal(default_node)
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
        self.context.reads.add_derived(ir.DerivedColumn(name, expression, kind))
        self.computed_keys[identity or node.sql()] = name
        self.key_types[name] = KEY_TYPES[kind]
        return ir.GroupKey(name, tuple(dict.fromkeys(labels)))
