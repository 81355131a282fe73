"""Privacy math in one place: sensitivities, norms, fixed-point scales and overflow checks.

Everything here is a function of the policy and the query (the plan's keys,
contribution bounds and parts), never of the data. The noise that these
sensitivities calibrate is OpenDP's (:mod:`engine.mechanisms`); its cost comes
from OpenDP's privacy maps (:mod:`engine.accounting`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from engine.errors import PolicyViolation
from engine.plan_parts import Contribution, FixedPoint, GroupKey, Part, PartKind

MAX_ROWS = 2**34
"""Rows a pool may hold; with the bounds below, no integer sum can overflow 64 bits."""
MAX_FIXED_POINT_BITS = 20
"""Fractional bits kept for float columns (a resolution of about 1e-6)."""
SUM_LIMIT = 2**62
"""The largest absolute integer sum allowed: a margin of two bits below the signed 64-bit range."""
MAX_ROWS_PER_MEMBER = SUM_LIMIT // MAX_ROWS
"""The largest ``max_rows_per_member`` (2²⁸): total-mode sampling multiplies a member's row count (at most
``MAX_ROWS``) by it, and adds less than ``MAX_ROWS``, which must stay below 2⁶³."""


class BoundedPlan(Protocol):
    """What the privacy math reads of a plan: its group keys, contribution bounds and parts."""

    @property
    def group_keys(self) -> tuple[GroupKey, ...]: ...

    @property
    def contribution(self) -> Contribution: ...

    @property
    def parts(self) -> tuple[Part, ...]: ...


@dataclass(frozen=True)
class Sensitivity:
    """How far one unit can move a part's vector of per-group values, in integer units.

    In the per-group mode ``l1 = groups × per_group`` and ``l2 = ⌈√groups · per_group⌉``.
    In total mode (``Contribution.total``) a unit's rows over all groups are
    capped, so ``l1`` and ``l2`` are the total cap's worth, far below
    ``groups × per_group``: never derive one field from the others.
    """

    l1: int
    l2: int
    per_group: int
    """The L∞ bound: how far one unit can move a single group."""
    groups: int
    """The L0 bound: how many groups one unit can move."""


def public_groups(plan: BoundedPlan) -> int:
    """How many groups the public key sets make (0 when a key is private: its keys are not known)."""
    possible = 1
    for key in plan.group_keys:
        possible *= len(key.values or ())
    return possible


def _has_private_keys(plan: BoundedPlan) -> bool:
    return any(key.values is None for key in plan.group_keys)


def groups_touched_per_unit(plan: BoundedPlan) -> int:
    """The L0 bound: how many output groups one unit can change."""
    if _has_private_keys(plan):
        return plan.contribution.group_cap
    return min(plan.contribution.group_cap, public_groups(plan))


def chooses_groups(plan: BoundedPlan) -> bool:
    """Whether a member can touch more groups than ``max_groups``, so that each member's groups must be chosen.

    Never in total mode: there a member's rows are sampled across all its groups instead.
    """
    if plan.contribution.total:
        return False
    return bool(plan.group_keys) and (_has_private_keys(plan) or plan.contribution.max_groups < public_groups(plan))


def part_sensitivity(plan: BoundedPlan, part: Part) -> Sensitivity:
    """Sensitivity of ``part`` when one unit is added or removed.

    Per-group mode: a unit touches at most ``groups_touched_per_unit`` groups
    and adds at most ``max_rows_per_group`` rows' worth to each, every row
    at most the part's per-row magnitude. Total mode: a unit keeps at most
    ``max_rows_per_member`` = N rows over all its groups, so it moves the
    vector by at most N rows' worth in L1, and (all N rows may sit in one
    group) as much in L2 and in a single group; it touches at most N groups
    (at most the public ones). Either way a count of distinct units moves
    each touched group by one. L2 is rounded up to an integer (sound, and
    what OpenDP's integer metrics take).
    """
    per_row = 1  # counts; and a quantile, whose distance is in rows
    if part.kind is PartKind.SUM:
        assert part.value is not None
        per_row = part.value.magnitude
    elif part.kind is PartKind.CENTERED_SUM:
        assert part.value is not None
        per_row = part.value.centered_magnitude
    groups = groups_touched_per_unit(plan)
    total = plan.contribution.max_rows_per_member
    if total is not None and part.kind is not PartKind.COUNT_UNITS:
        capped = per_row * total
        return Sensitivity(l1=capped, l2=capped, per_group=capped, groups=groups)
    per_group = 1 if part.kind is PartKind.COUNT_UNITS else per_row * plan.contribution.max_rows_per_group
    l2 = math.isqrt(groups * per_group * per_group - 1) + 1
    return Sensitivity(l1=groups * per_group, l2=l2, per_group=per_group, groups=groups)


def profile_sensitivity(histograms: int) -> Sensitivity:
    """Of the member profile (``engine.member_profile``): a member is one count in each of ``histograms`` histograms."""
    return Sensitivity(l1=histograms, l2=math.isqrt(histograms - 1) + 1, per_group=1, groups=histograms)


def noise_norms(plan: BoundedPlan, accounting: str) -> list[int]:
    """Each part's sensitivity in the norm its noise is calibrated to: L1 (pure DP) or L2 (zCDP).

    A part's noise scale is proportional to it, whatever share of the budget the part gets.
    """
    sensitivities = [part_sensitivity(plan, part) for part in plan.parts]
    return [s.l1 if accounting == "pure" else s.l2 for s in sensitivities]


def fixed_point(name: str, low: float, high: float, integer: bool) -> FixedPoint:
    """Fixed point for values in [low, high]: the finest power-of-two scale that cannot overflow."""
    magnitude = max(abs(low), abs(high))
    if integer:
        scale = 1
    else:
        # log2 of each side, not of their ratio: a subnormal magnitude makes the ratio infinite
        headroom = math.log2(SUM_LIMIT / MAX_ROWS) - math.log2(magnitude) if magnitude > 0 else math.inf
        bits = MAX_FIXED_POINT_BITS if headroom > MAX_FIXED_POINT_BITS else math.floor(headroom)
        scale = 2 ** max(0, min(MAX_FIXED_POINT_BITS, bits))
    lower, upper = math.floor(low * scale), math.ceil(high * scale)
    # A constant (EXTRACT(YEAR …) over a one-year range) gets a one-unit-wide interval: a superset, so sound.
    fixed = FixedPoint(name, lower=lower, upper=max(upper, lower + 1), scale=scale)
    if fixed.magnitude * MAX_ROWS > SUM_LIMIT:
        raise PolicyViolation(
            f"the bounds of {name} are too wide for exact integer sums (at most ±{SUM_LIMIT // MAX_ROWS})"
        )
    return fixed


def check_no_overflow(plan: BoundedPlan) -> None:
    """Refuse a plan one of whose parts a single unit could move past the integer range.

    Total mode also multiplies a member's rows (at most ``MAX_ROWS``) by
    ``max_rows_per_member``: that cap must stay within ``MAX_ROWS_PER_MEMBER``.
    """
    total = plan.contribution.max_rows_per_member
    if total is not None and total > MAX_ROWS_PER_MEMBER:
        raise PolicyViolation(
            f"max_rows_per_member {total} is too large for exact integer sampling (at most {MAX_ROWS_PER_MEMBER})"
        )
    for part in plan.parts:
        if part_sensitivity(plan, part).l1 > SUM_LIMIT:
            raise PolicyViolation(f"{part.label}: the contribution bounds times the value bounds overflow 64-bit sums")
