"""What a query would do, for a researcher and a privacy reviewer, without reading data or spending budget.

An :class:`Explanation` is built from the plan (bounds, keys, contribution), the noise plan (sensitivity,
scale and loss of each part, the threshold, the cost) and the policy; ``coopdp explain`` prints it as
text (:mod:`engine.explain_text`), the HTTP API returns :meth:`Explanation.to_dict`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from engine import plan as ir
from engine.accounting import Accounting, Cost, zcdp_to_epsilon
from engine.mechanisms import NoisePlan, Threshold, delta_split
from engine.plan_text import PlanText, scalar
from engine.policy import Policy
from engine.sensitivity import Sensitivity, chooses_groups

KEYS_SHOWN = 5
"""Public keys listed per GROUP BY key (the rest are counted)."""


class KeyKind(StrEnum):
    """Where a GROUP BY key's key set comes from."""

    DECLARED = "public"
    DAYS = "days"
    DATE_PART = "date part"
    DATE_TRUNC = "date periods"
    BINNED = "binned"
    CASE = "case labels"
    JOINED = "public table"
    PRIVATE = "private"


class Mechanism(StrEnum):
    """The OpenDP measurement that noises a part."""

    LAPLACE = "discrete Laplace"
    GAUSSIAN = "discrete Gaussian"
    LAPLACE_THRESHOLD = "discrete Laplace, then threshold"
    GAUSSIAN_THRESHOLD = "discrete Gaussian, then threshold"
    PERMUTE_AND_FLIP = "exponential mechanism (permute-and-flip)"
    GUMBEL = "exponential mechanism (Gumbel)"


_MECHANISMS = {
    # (accounting, a quantile, the threshold part) → its measurement
    (Accounting.PURE, False, False): Mechanism.LAPLACE,
    (Accounting.ZCDP, False, False): Mechanism.GAUSSIAN,
    (Accounting.PURE, False, True): Mechanism.LAPLACE_THRESHOLD,
    (Accounting.ZCDP, False, True): Mechanism.GAUSSIAN_THRESHOLD,
    (Accounting.PURE, True, False): Mechanism.PERMUTE_AND_FLIP,
    (Accounting.ZCDP, True, False): Mechanism.GUMBEL,
}


@dataclass(frozen=True)
class KeyExplanation:
    name: str
    """How the output names the key (its column, or the GROUP BY expression's alias)."""
    expression: str
    """The column, or the expression a computed key evaluates per row."""
    kind: KeyKind
    count: int | None
    """How many public keys (every one is in the output, empty groups included); None for private keys."""
    first: tuple[str, ...]
    """The first ``KEYS_SHOWN`` public keys, as SQL literals."""


@dataclass(frozen=True)
class PartExplanation:
    """One measured part: an exact bounded integer statistic per group, and the noise it gets."""

    index: int
    kind: ir.PartKind
    column: str
    """The column (or row expression) counted or summed; ``*`` for rows and units."""
    bounds: tuple[float, float] | None
    """The clamping bounds of a summed or ranked value, in the column's units."""
    scale: int | None
    """Fixed-point units per 1.0 of the value (sums are integer sums of ``round(value × scale)``)."""
    quantile: float | None
    sensitivity: Sensitivity
    """In integer (fixed-point) units: L1, L2, per group (L∞) and groups touched (L0)."""
    calibrated_to: int
    """The sensitivity the noise is calibrated to: L1 (pure) or L2 (zCDP); for a quantile, rows per group (its
    loss is paid once in each group a unit touches)."""
    mechanism: Mechanism
    noise_scale: float
    """In integer units (for a quantile: of the score, in rows)."""
    loss: float
    """This part's ε (pure) or ρ (zCDP), by OpenDP's map."""
    share: float
    """Its fraction of the query's loss."""
    accuracy: float | None
    """95% half-width of one cell, in the column's units (None for a quantile)."""
    rank_accuracy: int | None
    """For a quantile: 95% bound on one cell's error, in rows of rank."""
    read_by: tuple[str, ...]
    """The output columns, clauses or threshold that read it."""


@dataclass(frozen=True)
class OutputExplanation:
    name: str
    expression: str
    parts: tuple[int, ...]


@dataclass(frozen=True)
class CostExplanation:
    accounting: Accounting
    charged: Cost
    """What the ledger would charge (ε, δ)."""
    loss: float
    """The composed loss of the parts: ε (pure) or ρ (zCDP)."""
    threshold_delta: float
    """The δ the private-key threshold may spend (its actual spend is in ``Explanation.threshold``)."""
    conversion_delta: float
    """The δ the ρ → ε conversion uses (zCDP)."""
    converted_epsilon: float | None
    """zCDP: the ε that ρ converts to at ``conversion_delta`` (at most the ε charged)."""


@dataclass(frozen=True)
class Explanation:
    dataset: str
    sql: str
    """The normalised SQL (as the transparency log would record it)."""
    buyer: str | None
    purpose: str | None
    unit: str
    """The privacy unit: a column (member-level) or ``row``."""
    columns_read: tuple[str, ...]
    row_filter: str | None
    """WHERE, with the public tables' join filters and the consent filter."""
    consent_column: str | None
    contribution: ir.Contribution
    groups_touched: int
    """The L0 bound: groups one unit can change."""
    chooses_groups: bool
    """Whether each unit's groups are sampled down to ``max_groups``."""
    other_mode: str | None
    """Where the policy allows both contribution modes: the one not used, and why (None where it allows one)."""
    auto: ir.AutoBounds | None
    """Bounds chosen when the query runs (the contribution above is their largest), or None."""
    keys: tuple[KeyExplanation, ...]
    threshold: Threshold | None
    parts: tuple[PartExplanation, ...]
    output: tuple[OutputExplanation, ...]
    having: str | None
    order_by: tuple[str, ...]
    limit: int | None
    offset: int
    notes: tuple[str, ...]
    cost: CostExplanation
    remaining: Cost

    def to_dict(self) -> dict[str, Any]:
        """The explanation as strict JSON (no NaN or infinity; costs as numbers)."""
        return {
            "explain": True,
            "dataset": self.dataset,
            "sql": self.sql,
            "buyer": self.buyer,
            "purpose": self.purpose,
            "rows": {
                "unit": self.unit,
                "columns_read": list(self.columns_read),
                "filter": self.row_filter,
                "consent_column": self.consent_column,
            },
            "contribution": {
                "unit_column": self.contribution.unit_column,
                "mode": "total" if self.contribution.total else "per_group",
                "max_groups": self.contribution.max_groups,
                "max_rows_per_group": self.contribution.max_rows_per_group,
                "max_rows_per_member": self.contribution.max_rows_per_member,
                "groups_touched": self.groups_touched,
                "chooses_groups": self.chooses_groups,
                "other_mode": self.other_mode,
                "auto": _auto_dict(self.auto),
            },
            "keys": [_key_dict(key) for key in self.keys],
            "threshold": _threshold_dict(self.threshold),
            "parts": [_part_dict(part) for part in self.parts],
            "output": [{"name": o.name, "expression": o.expression, "parts": list(o.parts)} for o in self.output],
            "post_processing": {
                "having": self.having,
                "order_by": list(self.order_by),
                "limit": self.limit,
                "offset": self.offset,
            },
            "notes": list(self.notes),
            "cost": {
                "accounting": self.cost.accounting.value,
                **self.cost.charged.to_dict(),
                "loss": self.cost.loss,
                "delta_split": {"threshold": self.cost.threshold_delta, "conversion": self.cost.conversion_delta},
                "converted_epsilon": self.cost.converted_epsilon,
            },
            "remaining": self.remaining.to_dict(),
        }


def _auto_dict(auto: ir.AutoBounds | None) -> dict[str, Any] | None:
    if auto is None:
        return None
    bounds = {
        "max_rows_per_member": auto.max_rows_per_member,
        "max_groups": auto.max_groups,
        "max_rows_per_group": auto.max_rows_per_group,
    }
    chosen = [name for name, setting in bounds.items() if setting == "auto"]
    return {"chosen": chosen, "columns": list(auto.columns), "limit": auto.limit, "share": auto.share}


def _other_mode(plan: ir.QueryPlan, policy: Policy) -> str | None:
    """The contribution mode the policy also allows and the planner did not pick, and why (``contribution_mode``)."""
    privacy = policy.privacy
    if plan.contribution.unit_column is None or not privacy.per_group_bounds or privacy.max_rows_per_member is None:
        return None
    if plan.contribution.total:
        return (
            f"max_groups {privacy.max_groups} × max_rows_per_group {privacy.max_rows_per_group}"
            " (no less noise for this query)"
        )
    if any(part.kind is ir.PartKind.QUANTILE for part in plan.parts):
        return f"max_rows_per_member {privacy.max_rows_per_member} (quantiles need a per-group row cap)"
    return f"max_rows_per_member {privacy.max_rows_per_member} (more noise for this query)"


def explain(
    plan: ir.QueryPlan,
    noise: NoisePlan,
    policy: Policy,
    *,
    sql: str,
    buyer: str | None,
    purpose: str | None,
    remaining: Cost,
) -> Explanation:
    """The explanation of ``plan`` calibrated as ``noise``; reads neither data nor the ledger."""
    text = PlanText(plan)
    return Explanation(
        dataset=plan.dataset,
        sql=sql,
        buyer=buyer,
        purpose=purpose,
        unit=policy.unit_column or "row",
        columns_read=tuple(name for name, _ in plan.source.columns),
        row_filter=text.row(plan.where) if plan.where is not None else None,
        consent_column=policy.consent_column(purpose),
        contribution=plan.contribution,
        groups_touched=plan.groups_touched_per_unit,
        auto=plan.auto_bounds,
        chooses_groups=chooses_groups(plan),
        other_mode=_other_mode(plan, policy),
        keys=tuple(_key(plan, policy, text, key) for key in plan.group_keys),
        threshold=noise.threshold,
        parts=tuple(_part(plan, noise, text, index) for index in range(len(plan.parts))),
        output=tuple(
            OutputExplanation(column.name, text.post(column.expr), tuple(sorted(plan.parts_of(column.expr))))
            for column in plan.output
        ),
        having=text.predicate(plan.having) if plan.having is not None else None,
        order_by=tuple(f"{text.post(item.expr)}{' DESC' if item.descending else ''}" for item in plan.order_by),
        limit=plan.limit,
        offset=plan.offset,
        notes=plan.notes,
        cost=_cost(noise),
        remaining=remaining,
    )


def _key(plan: ir.QueryPlan, policy: Policy, text: PlanText, key: ir.GroupKey) -> KeyExplanation:
    computed = next((column.expr for column in plan.derived if column.name == key.column), None)
    column = policy.columns.get(key.column)
    kind = (
        KeyKind.PRIVATE if key.values is None else _key_kind(computed, column is not None and column.type.is_temporal)
    )
    named = [output.name for output in plan.output if output.expr == ir.KeyRef(key.column)]
    expression = text.column(key.column)
    shown = tuple(scalar(value) for value in (key.values or ())[:KEYS_SHOWN])
    count = None if key.values is None else len(key.values)
    return KeyExplanation(named[0] if named else expression, expression, kind, count, shown)


def _key_kind(computed: ir.RowExpr | None, temporal: bool) -> KeyKind:
    """A computed key's kind from the expression it evaluates; a policy column's from its type."""
    match computed:
        case None:
            return KeyKind.DAYS if temporal else KeyKind.DECLARED
        case ir.Case():
            return KeyKind.CASE
        case ir.DatePart():
            return KeyKind.DATE_PART
        case ir.DateTrunc():
            return KeyKind.DATE_TRUNC
        case ir.Lookup():
            return KeyKind.JOINED
    return KeyKind.BINNED


def _part(plan: ir.QueryPlan, noise: NoisePlan, text: PlanText, index: int) -> PartExplanation:
    part_noise = noise.parts[index]
    part = plan.parts[index]
    value = part.value
    quantile = part.kind is ir.PartKind.QUANTILE
    mechanism = _MECHANISMS[(noise.accounting, quantile, index == plan.threshold_part)]
    return PartExplanation(
        index=index,
        kind=part.kind,
        column=plan.contribution.unit_column or "*"
        if part.kind is ir.PartKind.COUNT_UNITS
        else text.column(part.column),
        bounds=(value.lower / value.scale, value.upper / value.scale) if value else None,
        scale=value.scale if value else None,
        quantile=part.alpha,
        sensitivity=plan.sensitivity(part),
        calibrated_to=plan.sensitivity(part).per_group if quantile else part_noise.sensitivity,
        mechanism=mechanism,
        noise_scale=part_noise.scale,
        loss=part_noise.loss,
        share=part_noise.loss / noise.loss if noise.loss > 0 else 0.0,
        accuracy=None if quantile else noise.accuracy(index),
        rank_accuracy=math.ceil(noise.rank_accuracy(index)) if quantile else None,
        read_by=_readers(plan, index),
    )


def _readers(plan: ir.QueryPlan, index: int) -> tuple[str, ...]:
    """Who reads part ``index``: output columns by name, then HAVING, ORDER BY and the private-key threshold."""
    readers = [column.name for column in plan.output if index in plan.parts_of(column.expr)]
    if plan.having is not None and any(index in plan.parts_of(expr) for expr in _post_exprs(plan.having)):
        readers.append("HAVING")
    if any(index in plan.parts_of(item.expr) for item in plan.order_by):
        readers.append("ORDER BY")
    if index == plan.threshold_part:
        readers.append("key threshold")
    return tuple(readers)


def _post_exprs(predicate: ir.PostPredicate) -> list[ir.PostExpr]:
    match predicate:
        case ir.PostCompare(_, left, right):
            return [left, right]
        case ir.PostAnd(operands) | ir.PostOr(operands):
            return [expr for operand in operands for expr in _post_exprs(operand)]
        case ir.PostNot(operand):
            return _post_exprs(operand)
    raise TypeError(f"not a HAVING condition: {predicate!r}")


def _cost(noise: NoisePlan) -> CostExplanation:
    threshold_delta, conversion_delta = delta_split(noise.mode, float(noise.cost.delta), noise.threshold is not None)
    converted = zcdp_to_epsilon(noise.loss, conversion_delta) if noise.accounting is Accounting.ZCDP else None
    return CostExplanation(noise.accounting, noise.cost, noise.loss, threshold_delta, conversion_delta, converted)


def _key_dict(key: KeyExplanation) -> dict[str, Any]:
    return {
        "name": key.name,
        "expression": key.expression,
        "kind": key.kind.value,
        "count": key.count,
        "first": list(key.first),
    }


def _threshold_dict(threshold: Threshold | None) -> dict[str, Any] | None:
    if threshold is None:
        return None
    return {"part": threshold.part_index, "value": threshold.value, "delta": threshold.delta}


def _part_dict(part: PartExplanation) -> dict[str, Any]:
    sensitivity = part.sensitivity
    return {
        "index": part.index,
        "kind": part.kind.value,
        "column": part.column,
        "bounds": list(part.bounds) if part.bounds else None,
        "scale": part.scale,
        "quantile": part.quantile,
        "sensitivity": {
            "l1": sensitivity.l1,
            "l2": sensitivity.l2,
            "per_group": sensitivity.per_group,
            "groups": sensitivity.groups,
        },
        "calibrated_to": part.calibrated_to,
        "mechanism": part.mechanism.value,
        "noise_scale": part.noise_scale,
        "loss": part.loss,
        "share": part.share,
        "accuracy": part.accuracy,
        "rank_accuracy": part.rank_accuracy,
        "read_by": list(part.read_by),
    }
