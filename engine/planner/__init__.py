"""AST + Policy → QueryPlan, as a pipeline of small passes.

Every check that can refuse a query happens here, before any data is read
and before anything is charged. The plan is built from the validated AST
only; bounds, keys and contribution limits come from the policy alone.

The passes, in order (each a module of this package):

1. ``allowlist`` and ``inline``: every node is one the planner models; CTEs and derived tables are inlined.
2. ``checks``: constructs refused whole (subqueries left after inlining, DISTINCT).
3. ``from_clause``: the scope, i.e. the dataset's table and the public tables joined on their key.
4. ``rows``: WHERE as a typed row expression (with ``names`` and ``temporal``), plus join and consent filters.
5. ``keys``: GROUP BY keys and their key sets (``bins`` for FLOOR/CEIL, ``intervals`` for their bounds).
6. ``output`` and ``aggregates``: the SELECT list; each aggregate as bounded parts (``intervals`` for bounds).
7. ``clauses``: HAVING, ORDER BY, LIMIT, OFFSET on released values.
8. the plan: source columns, the threshold part of private keys, contribution bounds (total or per group,
   ``contribution_mode``), and the overflow check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sqlglot import exp

from engine import plan as ir
from engine.allowlist import check_allowed
from engine.inline import inline_derived_tables
from engine.planner import clauses
from engine.planner.aggregates import Measures, is_aggregate
from engine.planner.checks import refuse_constructs
from engine.planner.context import PlanContext
from engine.planner.from_clause import resolve_scope
from engine.planner.keys import group_keys
from engine.planner.output import PostExprs, select_list
from engine.planner.scope import Reads
from engine.planner.sql_forms import COLUMN_KINDS
from engine.policy import AUTO, Policy
from engine.sensitivity import check_no_overflow, noise_norms

__all__ = ["contribution_mode", "plan_query"]


def plan_query(select: exp.Select, policy: Policy, consent_column: str | None = None) -> ir.QueryPlan:
    """Validate ``select`` against ``policy`` and build its plan.

    With ``consent_column``, rows where that bool column is not true are
    dropped before anything else (members who did not consent never count).
    """
    check_allowed(select)
    flat = inline_derived_tables(select, list(policy.columns))
    refuse_constructs(flat)
    reads = Reads()
    context = PlanContext.of(resolve_scope(flat, policy, reads), reads, is_aggregate)
    where = _row_filter(flat, context, consent_column)
    grouping = group_keys(flat, context)
    post = PostExprs(grouping, Measures(context))
    output = select_list(flat, post)
    having = clauses.having(flat, output, post)
    order_by = clauses.order_by(flat, output, post)
    limit, offset = clauses.limit(flat)
    threshold_part = _threshold_part(policy, grouping.keys, post.measures)
    contribution = _contribution(policy, reads, grouping.keys, tuple(post.measures.parts))
    plan = ir.QueryPlan(
        dataset=policy.name,
        source=_source(policy, reads),
        where=where,
        group_keys=grouping.keys,
        contribution=contribution,
        parts=tuple(post.measures.parts),
        derived=tuple(reads.derived),
        notes=tuple(dict.fromkeys(post.measures.notes)),
        aggregates=tuple(post.measures.aggregates),
        output=output,
        threshold_part=threshold_part,
        having=having,
        order_by=order_by,
        limit=limit,
        offset=offset,
        auto_bounds=_auto_bounds(policy, post.measures),
    )
    check_no_overflow(plan)
    return plan


def _row_filter(select: exp.Select, context: PlanContext, consent_column: str | None) -> ir.RowExpr | None:
    """WHERE, after the join filters and the consent filter: the rows every part reads."""
    where = select.args.get("where")
    row_filter = context.rows.predicate(where.this) if where is not None else None
    join_filters = context.names.scope.join_filters
    if join_filters:
        row_filter = ir.And((*join_filters, *([row_filter] if row_filter is not None else [])))
    if consent_column is not None:
        context.reads.columns.add(consent_column)
        consent = ir.Compare(ir.CompareOp.EQ, ir.Col(consent_column), ir.Lit(True))
        row_filter = consent if row_filter is None else ir.And((consent, row_filter))
    return row_filter


def _contribution(
    policy: Policy, reads: Reads, keys: tuple[ir.GroupKey, ...], parts: tuple[ir.Part, ...]
) -> ir.Contribution:
    """How much one unit may add, from the policy; the unit column is read to bound each member.

    An ``"auto"`` bound stands at its limit here (``auto_bounds`` says which are chosen per query).
    """
    if policy.unit_column is None:
        return ir.Contribution(unit_column=None, max_groups=1, max_rows_per_group=1)
    reads.columns.add(policy.unit_column)
    privacy = policy.privacy

    def bound(setting: int | str | None) -> int:
        return privacy.auto_limit if setting == AUTO else int(setting or 1)

    per_group = None
    if privacy.per_group_bounds:
        per_group = ir.Contribution(
            unit_column=policy.unit_column,
            max_groups=bound(privacy.max_groups),
            max_rows_per_group=bound(privacy.max_rows_per_group),
        )
    total = None
    if privacy.max_rows_per_member is not None:
        rows = bound(privacy.max_rows_per_member)
        total = ir.Contribution(policy.unit_column, max_groups=rows, max_rows_per_group=rows, max_rows_per_member=rows)
    return contribution_mode(total, per_group, keys, parts, policy.budget.accounting)


@dataclass(frozen=True)
class _Bounds:
    """What the sensitivity of a query's parts reads (``sensitivity.BoundedPlan``), before the plan exists."""

    group_keys: tuple[ir.GroupKey, ...]
    contribution: ir.Contribution
    parts: tuple[ir.Part, ...]


def contribution_mode(
    total: ir.Contribution | None,
    per_group: ir.Contribution | None,
    keys: tuple[ir.GroupKey, ...],
    parts: tuple[ir.Part, ...],
    accounting: str,
) -> ir.Contribution:
    """The contribution bound for one query when the policy may allow two: total or per group.

    Total mode (``max_rows_per_member`` = N rows per member over all groups)
    is the default: a member spread over many groups keeps N rows in all,
    where the per-group mode drops every group past ``max_groups``. The
    per-group mode wins in two cases. A quantile needs a per-group row cap:
    in total mode a member may put all N values into one group, so its rank
    sensitivity is N in each of up to N groups (sound, but the noise grows
    as N²). And the per-group bounds may have the smaller sensitivity in the
    norm the noise is calibrated to: L1 under pure DP (min(G, groups)·R
    against N) and L2 under zCDP (about √G·R against N, so a few groups of
    R rows beat N = G·R); for a count of distinct members min(G, groups)
    against min(N, groups). Each part's noise scales with its own norm, and
    the parts are in different units (a fixed-point sum's norm is millions
    of times a count's), so the modes compare the product of the parts'
    norms (the ratio of their noise, part by part, multiplied up), not the
    sum. Ties go to total mode.
    """
    if total is None or per_group is None:
        chosen = total or per_group
        assert chosen is not None, "a member-level policy gives per-group or total bounds (engine.policy)"
        return chosen
    if any(part.kind is ir.PartKind.QUANTILE for part in parts):
        return per_group
    per_group_noise = math.prod(noise_norms(_Bounds(keys, per_group, parts), accounting))
    return per_group if per_group_noise < math.prod(noise_norms(_Bounds(keys, total, parts), accounting)) else total


def _auto_bounds(policy: Policy, measures: Measures) -> ir.AutoBounds | None:
    """The policy's bounds, when the engine chooses any of those the query uses per query."""
    privacy = policy.privacy
    columns = _auto_columns(policy, measures)
    if not columns and (policy.unit_column is None or not privacy.has_auto):
        return None
    return ir.AutoBounds(
        max_groups=privacy.max_groups,
        max_rows_per_group=privacy.max_rows_per_group,
        max_rows_per_member=privacy.max_rows_per_member,
        limit=privacy.auto_limit,
        share=privacy.auto_share,
        columns=columns,
    )


def _auto_columns(policy: Policy, measures: Measures) -> tuple[str, ...]:
    """The ``bounds = "auto"`` columns whose own values a part sums or ranks, so their bound may be chosen.

    Not those a variance reads (its sum of squares is bounded by the range at
    planning) and not expressions (``SUM(x * 2)``: bounded by the range).
    """
    spread = {aggregate.value.column for aggregate in measures.aggregates if aggregate.squares and aggregate.value}
    read = {part.value.column for part in measures.parts if part.value is not None}
    auto = {name for name, column in policy.columns.items() if column.auto}
    return tuple(sorted((read & auto) - spread))


def _threshold_part(policy: Policy, keys: tuple[ir.GroupKey, ...], measures: Measures) -> int | None:
    """With private keys: a key is released only if its noisy count of units passes a threshold."""
    if all(key.values is not None for key in keys):
        return None
    units = ir.PartKind.COUNT_UNITS if policy.unit_column else ir.PartKind.COUNT_ROWS
    return measures.part(ir.Part(units))


def _source(policy: Policy, reads: Reads) -> ir.Source:
    paths, uri = policy.source_paths, policy.source_uri
    location = uri.rstrip("/") if uri else paths[0].name
    source_format = ir.SourceFormat.CSV if location.lower().endswith(".csv") else ir.SourceFormat.PARQUET
    columns = tuple((name, COLUMN_KINDS[policy.columns[name].type]) for name in sorted(reads.columns))
    return ir.Source(paths, source_format, columns, uri, policy.text_formats(reads.columns))
