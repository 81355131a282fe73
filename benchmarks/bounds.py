"""Contribution and value bounds as systems report them, and as the oracle tries them (issue 13).

``Result.bounds`` (when the engine gives it) says which bounds a query used:
``{"max_rows_per_member": 37}`` in total mode, ``{"max_groups": 2,
"max_rows_per_group": 12}`` per group, and perhaps a value clamp. This module
reads that document tolerantly (fields still landing may be absent: the
policy's fixed bounds stand in), and takes the median over repetitions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from benchmarks.generate import MEMBER_BOUNDS, POLICY_COLUMNS
from benchmarks.queries import BenchQuery

VALUE_BOUNDS: dict[str, tuple[float, float]] = {
    column.name: (float(column.bounds[0]), float(column.bounds[1]))
    for column in POLICY_COLUMNS
    if column.type in ("float", "int") and isinstance(column.bounds, tuple)
}
"""The policy's value bounds of each numeric column of the benchmark pool."""


@dataclass(frozen=True)
class Bounds:
    """One fixed choice of contribution bounds (total or G×R) and, for a value column, its clamp ``[lower, upper]``."""

    max_rows_per_member: int | None = None
    max_groups: int | None = None
    max_rows_per_group: int | None = None
    lower: float | None = None
    upper: float | None = None

    @property
    def total(self) -> bool:
        return self.max_rows_per_member is not None

    def to_dict(self) -> dict[str, Any]:
        """As ``Result.bounds`` names them, with the clamp as ``value_bounds``."""
        document: dict[str, Any] = (
            {"max_rows_per_member": self.max_rows_per_member}
            if self.total
            else {"max_groups": self.max_groups, "max_rows_per_group": self.max_rows_per_group}
        )
        if self.upper is not None:
            document["value_bounds"] = [self.lower, self.upper]
        return document

    def label(self) -> str:
        text = f"C={self.max_rows_per_member}" if self.total else f"G={self.max_groups} R={self.max_rows_per_group}"
        return text + (f" [{self.lower:g}, {self.upper:g}]" if self.upper is not None else "")


def policy_bounds(query: BenchQuery) -> Bounds:
    """The benchmark's fixed member policy for ``query``: its contribution bounds and the column's policy clamp."""
    lower, upper = VALUE_BOUNDS.get(query.column or "", (None, None))
    return Bounds(
        max_rows_per_member=_integer(MEMBER_BOUNDS.max_rows_per_member),
        max_groups=_integer(MEMBER_BOUNDS.max_groups),
        max_rows_per_group=_integer(MEMBER_BOUNDS.max_rows_per_group),
        lower=lower,
        upper=upper,
    )


def bounds_from_result(document: Mapping[str, Any] | None, query: BenchQuery) -> Bounds | None:
    """The bounds a result says it used (``Result.bounds``), or None when it says none.

    Tolerant of the contract still landing: any of ``max_rows_per_member``,
    ``max_groups``, ``max_rows_per_group``, and a value clamp for the query's
    column as ``value_bounds``, ``bounds[column]``, ``range[column]`` or
    ``columns[column]`` (a pair, or a table with ``range`` or ``bounds``).
    Fields it leaves out are the policy's.
    """
    if not document:
        return None
    fixed = policy_bounds(query)
    total = _integer(document.get("max_rows_per_member"))
    groups, rows = _integer(document.get("max_groups")), _integer(document.get("max_rows_per_group"))
    if total is not None:
        chosen = replace(fixed, max_rows_per_member=total, max_groups=None, max_rows_per_group=None)
    else:
        chosen = replace(
            fixed,
            max_groups=groups if groups is not None else fixed.max_groups,
            max_rows_per_group=rows if rows is not None else fixed.max_rows_per_group,
        )
    clamp = _value_bounds(document, query.column)
    if clamp is not None and query.column is not None:
        chosen = replace(chosen, lower=clamp[0], upper=clamp[1])
    return chosen


def median_bounds(chosen: Sequence[Bounds]) -> Bounds | None:
    """The median of each field over the runs of the most common mode (total or G×R); None for no runs."""
    if not chosen:
        return None
    mode = Counter(bounds.total for bounds in chosen).most_common(1)[0][0]
    runs = [bounds for bounds in chosen if bounds.total == mode]

    def middle(name: str) -> Any:
        """The lower median: a value some run chose (the oracle's table holds sums for those clamps only)."""
        values = sorted(getattr(bounds, name) for bounds in runs if getattr(bounds, name) is not None)
        return values[(len(values) - 1) // 2] if values else None

    return Bounds(
        max_rows_per_member=middle("max_rows_per_member"),
        max_groups=middle("max_groups"),
        max_rows_per_group=middle("max_rows_per_group"),
        lower=middle("lower"),
        upper=middle("upper"),
    )


def _integer(value: object) -> int | None:
    """An int bound, or None for one absent or not a number (``"auto"`` in a policy)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return int(value)


def _value_bounds(document: Mapping[str, Any], column: str | None) -> tuple[float, float] | None:
    candidates: list[Any] = [document.get("value_bounds")]
    if column is not None:
        ranges, columns = document.get("range"), document.get("columns")
        candidates.append(document.get(column))
        candidates.append(ranges.get(column) if isinstance(ranges, Mapping) else None)
        entry = columns.get(column) if isinstance(columns, Mapping) else None
        candidates += [entry.get("range") or entry.get("bounds")] if isinstance(entry, Mapping) else [entry]
    for candidate in candidates:
        if isinstance(candidate, (list, tuple)) and len(candidate) == 2:
            low, high = candidate
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
                return float(low), float(high)
    return None


def bounds_label(document: Mapping[str, Any] | None) -> str:
    """``C=37 [0, 250]`` or ``G=2 R=12``: a bounds document (``Bounds.to_dict``) in a table cell."""
    if not document:
        return "—"
    if document.get("max_rows_per_member") is not None:
        text = f"C={document['max_rows_per_member']}"
    else:
        text = f"G={document.get('max_groups')} R={document.get('max_rows_per_group')}"
    clamp = document.get("value_bounds")
    return text + (f" [{clamp[0]:g}, {clamp[1]:g}]" if clamp else "")
