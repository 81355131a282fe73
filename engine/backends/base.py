"""What every backend provides: exact bounded aggregates for a QueryPlan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from engine.plan import QueryPlan


@dataclass(frozen=True)
class ExactAggregates:
    """Bounded, exact (not yet noisy) aggregates: never shown to anyone.

    ``keys[i]`` is the i-th group's key tuple (empty when ungrouped) and
    ``parts[p][i]`` the integer value of part ``p`` in that group.
    """

    keys: list[tuple[object, ...]]
    parts: list[list[Any]]
    """Integers per group; for a quantile part, the bounded values (fixed point) per group, a list or NumPy array."""


@dataclass(frozen=True)
class MemberProfile:
    """Exact per-member statistics under a plan's filter: never shown, only released binned with noise.

    ``members[statistic][value]`` is how many members have that value of the
    statistic (``bounding.PROFILE_STATISTICS``: rows, groups, fullest).
    """

    members: dict[str, dict[int, int]]


class Backend(Protocol):
    def check_schema(self, plan: QueryPlan) -> None:
        """Raise before anything is charged if the pool cannot serve the plan (metadata only)."""

    def execute(self, plan: QueryPlan, seed: int | None = None) -> ExactAggregates:
        """Run the plan: filter, clamp, bound each unit's contribution, aggregate."""

    def profile(self, plan: QueryPlan) -> MemberProfile:
        """The plan's rows as ``execute`` reads them, per member: what choosing contribution bounds needs."""
