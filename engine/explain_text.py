"""An :class:`~engine.explain.Explanation` as plain text: stable, one fact per line, so that diffs review well.

Numbers are written with six significant digits (what a reader compares; ``to_dict`` keeps them whole).
"""

from __future__ import annotations

from engine.accounting import Accounting
from engine.explain import Explanation, KeyExplanation, PartExplanation


def render(explanation: Explanation) -> str:
    """The explanation as text, sections in the order a query runs: rows, contribution, keys, parts, output, cost."""
    sections = [
        _header(explanation),
        _rows(explanation),
        _contribution(explanation),
        _keys(explanation),
        *(_part(part, explanation.cost.accounting) for part in explanation.parts),
        _output(explanation),
        _cost(explanation),
    ]
    if explanation.notes:
        sections.append(["notes", *(f"  - {note}" for note in explanation.notes)])
    return "\n\n".join("\n".join(lines) for lines in sections if lines) + "\n"


def number(value: float) -> str:
    return f"{value:.6g}"


def _header(explanation: Explanation) -> list[str]:
    lines = [f"explain {explanation.dataset}", f"  sql: {explanation.sql}"]
    if explanation.buyer is not None:
        lines.append(f"  buyer: {explanation.buyer} (purpose: {explanation.purpose or 'none'})")
    return lines


def _rows(explanation: Explanation) -> list[str]:
    lines = [
        "rows",
        f"  unit: {explanation.unit}",
        f"  columns read: {', '.join(explanation.columns_read) or 'none'}",
        f"  filter: {explanation.row_filter or 'none'}",
    ]
    if explanation.consent_column is not None:
        lines.append(f"  consent: rows where {explanation.consent_column} is not true are dropped")
    return lines


def _contribution(explanation: Explanation) -> list[str]:
    contribution = explanation.contribution
    if contribution.total:
        lines = [
            "contribution",
            f"  max_rows_per_member: {contribution.max_rows_per_member}"
            " (over all groups; a unit with more rows keeps a systematic sample across its groups)",
            f"  groups one unit touches (L0): {explanation.groups_touched}",
        ]
    else:
        chosen = " (each unit's groups sampled down to max_groups)" if explanation.chooses_groups else ""
        lines = [
            "contribution",
            f"  max_groups: {contribution.max_groups}",
            f"  max_rows_per_group: {contribution.max_rows_per_group}",
            f"  groups one unit touches (L0): {explanation.groups_touched}{chosen}",
        ]
    if explanation.other_mode is not None:
        lines.append(f"  not used, though the policy allows it: {explanation.other_mode}")
    auto = explanation.auto
    if auto is not None:
        names = ("max_rows_per_member", "max_groups", "max_rows_per_group")
        picked = [name for name in names if getattr(auto, name) == "auto"]
        what = ", ".join([*picked, *(f"{column}'s upper bound" for column in auto.columns)])
        lines.append(
            f"  chosen when the query runs, by DP for {auto.share:.0%} of its loss: {what}"
            f" (bounds up to {auto.limit}; shown here at their largest)"
        )
    return lines


def _keys(explanation: Explanation) -> list[str]:
    if not explanation.keys:
        return ["keys", "  none: one group"]
    lines = ["keys", *(f"  {_key(key)}" for key in explanation.keys)]
    threshold = explanation.threshold
    if threshold is not None:
        lines.append(
            f"  threshold: a private key is released where part {threshold.part_index} "
            f"(units per group, noisy) >= {threshold.value}; δ spent {number(threshold.delta)}"
        )
    return lines


def _key(key: KeyExplanation) -> str:
    name = key.name if key.name == key.expression else f"{key.name} = {key.expression}"
    if key.count is None:
        return f"{name}: {key.kind.value}, released by threshold"
    more = ", …" if key.count > len(key.first) else ""
    return f"{name}: {key.kind.value}, {key.count} keys: {', '.join(key.first)}{more}"


def _part(part: PartExplanation, accounting: Accounting) -> list[str]:
    measure = "ε" if accounting is Accounting.PURE else "ρ"
    head = f"part {part.index}: {part.kind.value}({part.column})"
    if part.quantile is not None:
        head += f", quantile {part.quantile:g}"
    lines = [head]
    if part.bounds is not None and part.scale is not None:
        low, high = part.bounds
        lines.append(f"  bounds: [{number(low)}, {number(high)}], fixed-point scale {part.scale}")
    s = part.sensitivity
    norm = "L1" if accounting is Accounting.PURE else "L2"
    calibration = (
        f"{part.calibrated_to} rows per group, in each of {s.groups} groups"
        if part.quantile is not None
        else f"{norm} {part.calibrated_to}"
    )
    lines += [
        f"  sensitivity: L1 {s.l1}{_in_units(part, s.l1)}, L2 {s.l2}, per group {s.per_group}, groups {s.groups}",
        f"  noise: {part.mechanism.value}, scale {number(part.noise_scale)}"
        f"{_in_units(part, part.noise_scale)}, calibrated to {calibration}",
        f"  loss: {measure} {number(part.loss)} ({number(100 * part.share)}% of the query)",
    ]
    if part.accuracy is not None:
        lines.append(f"  accuracy: ±{number(part.accuracy)} (95%, one cell)")
    if part.rank_accuracy is not None:
        lines.append(f"  accuracy: ±{part.rank_accuracy} rows of rank (95%, one cell)")
    lines.append(f"  read by: {', '.join(part.read_by) or 'nothing'}")
    return lines


def _in_units(part: PartExplanation, amount: float) -> str:
    """A fixed-point amount in the column's units too (sums of floats are scaled by 2^k), except for quantiles."""
    if part.scale is None or part.scale == 1 or part.quantile is not None:
        return ""
    return f" ({number(amount / part.scale)} in the column's units)"


def _output(explanation: Explanation) -> list[str]:
    lines = ["output"]
    for column in explanation.output:
        parts = f"  [parts {', '.join(map(str, column.parts))}]" if column.parts else ""
        lines.append(f"  {column.name} = {column.expression}{parts}")
    if explanation.having is not None:
        lines.append(f"  having: {explanation.having}")
    if explanation.order_by:
        lines.append(f"  order by: {', '.join(explanation.order_by)}")
    if explanation.limit is not None or explanation.offset:
        limit = "none" if explanation.limit is None else str(explanation.limit)
        lines.append(f"  limit: {limit}, offset {explanation.offset}")
    return lines


def _cost(explanation: Explanation) -> list[str]:
    cost = explanation.cost
    lines = [
        "cost",
        f"  accounting: {cost.accounting.value}",
        f"  charged: ε {cost.charged.epsilon}, δ {cost.charged.delta}",
    ]
    if cost.accounting is Accounting.PURE:
        lines.append(f"  loss: ε {number(cost.loss)} (the parts' ε added up)")
    else:
        assert cost.converted_epsilon is not None
        lines.append(
            f"  loss: ρ {number(cost.loss)} (the parts' ρ added up), "
            f"ε {number(cost.converted_epsilon)} at the conversion's δ"
        )
    lines.append(f"  δ split: threshold {number(cost.threshold_delta)}, conversion {number(cost.conversion_delta)}")
    remaining = explanation.remaining
    lines.append(f"  remaining: ε {remaining.epsilon}, δ {remaining.delta}")
    return lines
