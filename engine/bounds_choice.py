"""Contribution bounds chosen per query, and the bias bounding causes, from the released member profile.

Bounding trades bias for noise: a small cap drops the rows of busy members
(bias), a large one needs noise for the busiest member there could be. The
profile (``engine.member_profile``, a DP release) says roughly how many
members contribute how much, so the expected error of any candidate bound can
be estimated without looking at the data again, and the least is chosen.
Everything here is post-processing of that release and of public facts (the
policy, the query, the noise scales): it costs nothing more.

The model, per measured part, in shares of the part's total:

* bias: the rows a bound removes over the query's rows. In the total mode it
  is Σ (rows − C)⁺ over members, which the profile estimates directly. In the
  per-group mode (G groups × R rows each) the profile has no joint
  distribution; the estimate adds the rows above R in each member's fullest
  group and about ``min(R, mean rows per group)`` for each group past G, and
  takes at least what the total mode would lose at C = G·R.
* noise: the expected absolute noise per group, times the groups, over the
  part's total (a row is taken to weigh half its bound in a sum).

Parts no bound biases (a centred sum: the mean of kept rows) count for noise only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from engine import plan as ir
from engine.accounting import Accounting
from engine.mechanisms import NoisePlan
from engine.member_profile import EDGES, SPREAD, TOTAL, NoisyProfile
from engine.sensitivity import part_sensitivity, public_groups

PRIVATE_GROUPS_GUESS = 100
"""How many groups a query with private keys is taken to release: unknown before the release."""
QUANTILE_RANK_FACTOR = math.log(1001 / 0.05)
"""A quantile misses by about its noise scale times this many rows of rank (the union bound over its candidates)."""


@dataclass(frozen=True)
class Choice:
    """The contribution bounds a query runs with, and the estimated shares bounding removes."""

    contribution: ir.Contribution
    rows_share: float
    """Of the query's rows (counts) or value mass (sums, taken as proportional to rows)."""
    groups_share: float
    """Of the members' groups (what COUNT(DISTINCT unit) counts)."""

    def bounds(self) -> dict[str, int]:
        """The bounds as a result and the transparency log show them."""
        return contribution_bounds(self.contribution)


def contribution_bounds(contribution: ir.Contribution) -> dict[str, int]:
    if contribution.max_rows_per_member is not None:
        return {"max_rows_per_member": contribution.max_rows_per_member}
    return {"max_groups": contribution.max_groups, "max_rows_per_group": contribution.max_rows_per_group}


def offered_modes(plan: ir.QueryPlan, accounting: Accounting) -> tuple[bool, bool]:
    """Whether the choice considers (the total mode, the per-group mode) for this query.

    Quantiles need a cap per group: the per-group mode, when the policy offers
    it. Under pure DP the total mode at C = G·R keeps at least the rows the
    per-group mode keeps at G and R, for the same L1 noise, so the per-group
    mode is then only worth its profile where L0 matters (members counted per
    group, private keys' threshold).
    """
    auto = plan.auto_bounds
    assert auto is not None
    total, per_group = auto.max_rows_per_member is not None, auto.max_groups is not None
    if total and per_group:
        if any(part.kind is ir.PartKind.QUANTILE for part in plan.parts):
            total = False
        elif accounting is Accounting.PURE and plan.threshold_part is None:
            per_group = any(part.kind is ir.PartKind.COUNT_UNITS for part in plan.parts)
    return total, per_group


def profiled_statistics(plan: ir.QueryPlan, accounting: Accounting) -> tuple[str, ...]:
    """What the profile releases: rows per member always; groups and fullest group where the per-group mode needs them
    (grouped queries only: without groups, a member's fullest group is all its rows)."""
    if plan.auto_bounds is None:
        per_group = plan.contribution.max_rows_per_member is None
    else:
        per_group = offered_modes(plan, accounting)[1]
    return (TOTAL, *SPREAD) if per_group and plan.group_keys else (TOTAL,)


def candidates(plan: ir.QueryPlan, accounting: Accounting) -> list[ir.Contribution]:
    """Every contribution bound the choice considers (an ``"auto"`` bound: each edge up to its limit)."""
    auto = plan.auto_bounds
    assert auto is not None
    unit = plan.contribution.unit_column
    grid = sorted({*(edge for edge in EDGES if edge <= auto.limit), auto.limit})

    def values(setting: ir.BoundSetting, most: int | None = None) -> list[int]:
        """A fixed bound as it is; an ``"auto"`` one, each grid value up to ``most`` (and ``most`` itself)."""
        if setting != "auto":
            return [int(setting or 1)]
        if most is None or most >= auto.limit:
            return grid
        return sorted({value for value in grid if value < most} | {most})

    total, per_group = offered_modes(plan, accounting)
    found = []
    if total:
        found += [ir.Contribution(unit, 1, 1, rows) for rows in values(auto.max_rows_per_member)]
    if per_group:
        for groups in values(auto.max_groups, public_groups(plan) or None):
            found += [ir.Contribution(unit, groups, rows, None) for rows in values(auto.max_rows_per_group)]
    return found


def largest(plan: ir.QueryPlan, accounting: Accounting) -> list[ir.Contribution]:
    """The largest candidate of each mode: the plan is checked and calibrated at these before the charge."""
    found = candidates(plan, accounting)
    total = [c for c in found if c.max_rows_per_member is not None]
    per_group = [c for c in found if c.max_rows_per_member is None]
    extremes = []
    if total:
        extremes.append(max(total, key=lambda c: c.max_rows_per_member or 0))
    if per_group:
        extremes.append(max(per_group, key=lambda c: (c.max_groups * c.max_rows_per_group, c.max_groups)))
    return extremes


def choose_bounds(
    plan: ir.QueryPlan, profile: NoisyProfile, noise: NoisePlan, weights: Sequence[float] | None = None
) -> Choice:
    """The candidate with the least expected error; ``noise`` is the plan's at any bounds (its scales per unit)."""
    model = _Model(plan, profile, noise, weights)
    best = min(
        candidates(plan, noise.accounting),
        key=lambda contribution: (model.error(contribution), contribution_key(contribution)),
    )
    return model.choice(best)


def contribution_key(contribution: ir.Contribution) -> int:
    """Ties go to the smaller bounds (less noise for the same expected error)."""
    total = contribution.max_rows_per_member
    return total if total is not None else contribution.max_groups * contribution.max_rows_per_group


def disclosed(plan: ir.QueryPlan, profile: NoisyProfile, noise: NoisePlan) -> Choice:
    """The estimated shares the plan's own bounds remove (fixed bounds, bias disclosed)."""
    return _Model(plan, profile, noise, None).choice(plan.contribution)


def column_shares(plan: ir.QueryPlan, choice: Choice) -> dict[str, float]:
    """Per aggregate output column, the estimated share bounding removed from what it counts or sums.

    COUNT(DISTINCT unit) loses the groups past ``max_groups``; everything
    else, the rows past the caps (a sum's value mass is taken as proportional to its rows).
    """
    shares = {}
    for column in plan.output:
        parts = plan.parts_of(column.expr)
        if not parts:
            continue
        units = all(plan.parts[index].kind is ir.PartKind.COUNT_UNITS for index in parts)
        shares[column.name] = round(choice.groups_share if units else choice.rows_share, 4)
    return shares


class _Model:
    """The expected error of a candidate bound, from the profile and the noise per unit of sensitivity."""

    def __init__(
        self, plan: ir.QueryPlan, profile: NoisyProfile, noise: NoisePlan, weights: Sequence[float] | None
    ) -> None:
        self.plan, self.profile, self.mode = plan, profile, noise.mode
        self.per_unit = [part.scale / max(part.sensitivity, 1) for part in noise.parts]
        self.weights = tuple(weights) if weights is not None else (1.0,) * len(plan.parts)
        # Each member's rows are at least its fullest group's, and at least one per group: where noise hides the
        # busiest members from the rows histogram but not from another, the rows are at least what that one shows
        # (else the rows bounding removes, read from the other, could exceed all the rows).
        self.rows = max(profile.total(statistic) for statistic in profile.counts)
        self.groups = (public_groups(plan) or PRIVATE_GROUPS_GUESS) if plan.group_keys else 1

    def lost_rows(self, contribution: ir.Contribution) -> float:
        profile = self.profile
        if contribution.max_rows_per_member is not None:
            return profile.excess(TOTAL, contribution.max_rows_per_member)
        groups, rows = contribution.max_groups, contribution.max_rows_per_group
        at_least = profile.excess(TOTAL, groups * rows)
        if any(statistic not in profile.counts for statistic in SPREAD):
            return at_least
        per_group = self.rows / profile.total("groups")
        spread = profile.excess("fullest", rows) + profile.excess("groups", groups) * min(rows, per_group)
        return max(at_least, spread)

    def lost_groups(self, contribution: ir.Contribution) -> float:
        if contribution.max_rows_per_member is not None or "groups" not in self.profile.counts:
            return 0.0
        return self.profile.excess("groups", contribution.max_groups) / self.profile.total("groups")

    def choice(self, contribution: ir.Contribution) -> Choice:
        rows_share = min(max(self.lost_rows(contribution) / self.rows, 0.0), 1.0)
        return Choice(contribution, rows_share, min(max(self.lost_groups(contribution), 0.0), 1.0))

    def error(self, contribution: ir.Contribution) -> float:
        """Σ over parts of weight × (bias share + expected noise over the part's total, summed over the groups)."""
        bounded = replace(self.plan, contribution=contribution)
        rows_share = self.lost_rows(contribution) / self.rows
        members = self.profile.members()
        total = 0.0
        for index, part in enumerate(self.plan.parts):
            scale = self.per_unit[index] * self.mode.norm(part_sensitivity(bounded, part))
            noise = self.mode.mean_error(scale) * self.groups
            if part.kind is ir.PartKind.QUANTILE:
                share = scale * QUANTILE_RANK_FACTOR * self.groups / self.rows
            elif part.kind is ir.PartKind.COUNT_UNITS:
                share = self.lost_groups(contribution) + noise / members
            elif part.kind is ir.PartKind.CENTERED_SUM:
                assert part.value is not None
                share = noise / (self.rows * part.value.centered_magnitude / 2)
            else:
                typical = part.value.magnitude / 2 if part.value is not None and part.kind is ir.PartKind.SUM else 1
                share = rows_share + noise / (self.rows * max(typical, 1))
            total += self.weights[index] * share
        return total
