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
  part's total (a row is taken to weigh half its bound in a sum, or its
  profiled mean for an ``"auto"`` column).

For a column with ``bounds = "auto"``, the profile also holds one value per
member: clamping at b removes about the rows times the mean of (value − b)⁺,
and a summed row weighs about the mean of min(value, b). The contribution
bound and each column's bound are chosen in turn, twice (each given the others).

Parts no bound biases (a centred sum: the mean of kept rows) count for noise and clamping only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from engine import plan as ir
from engine.accounting import Accounting
from engine.backends.bounding import value_statistic
from engine.mechanisms import ALPHA, NoisePlan
from engine.member_profile import (
    EDGES,
    SPREAD,
    TOTAL,
    Histogram,
    NoisyProfile,
    contribution_histogram,
    value_histogram,
)
from engine.quantiles import INTERVALS
from engine.sensitivity import part_sensitivity, public_groups

QUANTILE_RANK_FACTOR = math.log(INTERVALS / ALPHA)
"""A quantile misses by about its noise scale times this many rows of rank (the union bound over its candidates)."""
DISCLOSED_SPAN = 8
"""With fixed bounds, the profile's bins reach this many times the bound (beyond, one bin)."""
SAMPLE_RANK_SPREAD = 0.5
"""A sample quantile's rank wanders by about this over √(values): why a quantile wants more than one value a member."""
ROUNDS = 2
"""Turns of choosing the contribution bound given the value bounds, then each value bound given the rest."""


@dataclass(frozen=True)
class Choice:
    """The bounds a query runs with, and the estimated shares bounding removes."""

    contribution: ir.Contribution
    rows_share: float
    """Of the query's rows (counts) or value mass (sums, taken as proportional to rows)."""
    groups_share: float
    """Of the members' groups (what COUNT(DISTINCT unit) counts)."""
    uppers: dict[str, int] = field(default_factory=dict)
    """Per ``"auto"`` column, the chosen upper clamp bound (fixed point)."""
    clamped: dict[str, float] = field(default_factory=dict)
    """Per ``"auto"`` column, the estimated share of its value mass clamping removes."""

    def bounds(self, plan: ir.QueryPlan) -> dict[str, object]:
        """The bounds as the ledger and the transparency log record them."""
        recorded: dict[str, object] = dict(contribution_bounds(self.contribution))
        if self.uppers:
            recorded["value_bounds"] = value_bounds(with_value_bounds(plan, self.uppers), self.uppers)
        return recorded


def contribution_bounds(contribution: ir.Contribution) -> dict[str, int]:
    if contribution.unit_column is None:
        return {}
    if contribution.max_rows_per_member is not None:
        return {"max_rows_per_member": contribution.max_rows_per_member}
    return {"max_groups": contribution.max_groups, "max_rows_per_group": contribution.max_rows_per_group}


def value_bounds(plan: ir.QueryPlan, columns: Mapping[str, int]) -> dict[str, list[float]]:
    """The chosen clamp bounds of ``columns``, in the column's units, from ``plan`` (which runs with them)."""
    fixed = {part.value.column: part.value for part in plan.parts if part.value is not None}
    return {name: [fixed[name].lower / fixed[name].scale, fixed[name].upper / fixed[name].scale] for name in columns}


def with_value_bounds(plan: ir.QueryPlan, uppers: Mapping[str, int]) -> ir.QueryPlan:
    """``plan`` with the parts and aggregates of each column in ``uppers`` clamped at its upper bound (fixed point).

    The scale stays: a smaller bound can only shrink the sums it was chosen to keep from overflowing.
    """
    if not uppers:
        return plan

    def bounded(value: ir.FixedPoint | None) -> ir.FixedPoint | None:
        if value is None or value.column not in uppers:
            return value
        return replace(value, upper=max(min(uppers[value.column], value.upper), value.lower + 1))

    parts = tuple(replace(part, value=bounded(part.value)) for part in plan.parts)
    aggregates = tuple(replace(aggregate, value=bounded(aggregate.value)) for aggregate in plan.aggregates)
    return replace(plan, parts=parts, aggregates=aggregates)


def offered_modes(plan: ir.QueryPlan, accounting: Accounting) -> tuple[bool, bool]:
    """Whether the choice considers (the total mode, the per-group mode) for this query.

    Where the policy offers both: quantiles need a cap per group, and counts of
    members (also the private keys' threshold) lose whole groups when a total
    cap samples a member's rows away from them, so those take the per-group
    mode. Under pure DP the total mode at C = G·R keeps at least the rows the
    per-group mode keeps at G and R, for the same L1 noise: it is then the only one.
    """
    auto = plan.auto_bounds
    assert auto is not None
    total, per_group = auto.max_rows_per_member is not None, auto.max_groups is not None
    if total and per_group:
        per_group_parts = (ir.PartKind.QUANTILE, ir.PartKind.COUNT_UNITS)
        if plan.threshold_part is not None or any(part.kind in per_group_parts for part in plan.parts):
            total = False
        elif accounting is Accounting.PURE:
            per_group = False
    return total, per_group


def profiled_histograms(plan: ir.QueryPlan, accounting: Accounting) -> tuple[Histogram, ...]:
    """What the profile releases: rows per member; groups and fullest group where the per-group mode needs them
    (grouped queries only: without groups, a member's fullest group is all its rows); a value per member of each
    ``"auto"`` column.

    The groups histogram ends at the groups the query's public keys make (a member touches no more): noise in bins
    above would read as members in more groups than there are, and their dropped groups as rows bounding removes.
    """
    histograms: list[Histogram] = []
    if plan.contribution.unit_column is not None:
        if plan.auto_bounds is None:
            per_group = plan.contribution.max_rows_per_member is None
        else:
            per_group = offered_modes(plan, accounting)[1]
        statistics = (TOTAL, *SPREAD) if per_group and plan.group_keys else (TOTAL,)
        limit = plan.auto_bounds.limit if plan.auto_bounds else DISCLOSED_SPAN * contribution_key(plan.contribution)
        keys = public_groups(plan) if plan.group_keys else 0
        for name in statistics:
            if name == "groups" and 0 < keys <= limit:  # a member touches no more groups than the public keys make
                histograms.append(replace(contribution_histogram(name, keys), last=float(keys)))
            else:
                histograms.append(contribution_histogram(name, limit))
    columns = plan.auto_bounds.columns if plan.auto_bounds else ()
    fixed = {part.value.column: part.value for part in plan.parts if part.value is not None}
    histograms += [value_histogram(fixed[column]) for column in columns]
    return tuple(histograms)


def candidates(plan: ir.QueryPlan, accounting: Accounting) -> list[ir.Contribution]:
    """Every contribution bound the choice considers (an ``"auto"`` bound: each edge up to its limit)."""
    auto = plan.auto_bounds
    assert auto is not None
    unit = plan.contribution.unit_column
    if unit is None:
        return [plan.contribution]
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
        found += [ir.Contribution(unit, rows, rows, rows) for rows in values(auto.max_rows_per_member)]
    if per_group:
        for groups in values(auto.max_groups, public_groups(plan) or None):
            found += [ir.Contribution(unit, groups, rows, None) for rows in values(auto.max_rows_per_group)]
    return found


def value_candidates(plan: ir.QueryPlan, column: str) -> list[int]:
    """The upper bounds (fixed point) a column's clamp may take: its value histogram's edges above its bottom."""
    fixed = {part.value.column: part.value for part in plan.parts if part.value is not None}[column]
    return [edge for edge in value_histogram(fixed).edges if edge > fixed.lower]


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
    """The bounds with the least expected error; ``noise`` is the plan's at any bounds (its scales per unit).

    The contribution bound given the value bounds, then each value bound given the rest, :data:`ROUNDS` times.
    """
    assert plan.auto_bounds is not None
    model = _Model(plan, profile, noise, weights)
    contributions = candidates(plan, noise.accounting)
    contribution = plan.contribution
    uppers = {column: value_candidates(plan, column)[-1] for column in plan.auto_bounds.columns}
    for _ in range(ROUNDS):
        contribution = min(contributions, key=lambda c: (model.error(c, uppers), contribution_key(c)))
        for column in uppers:
            uppers[column] = min(
                value_candidates(plan, column), key=lambda b: (model.error(contribution, uppers | {column: b}), -b)
            )
    return model.choice(contribution, uppers)


def contribution_key(contribution: ir.Contribution) -> int:
    """Ties go to the smaller bounds (less noise for the same expected error)."""
    total = contribution.max_rows_per_member
    return total if total is not None else contribution.max_groups * contribution.max_rows_per_group


def disclosed(plan: ir.QueryPlan, profile: NoisyProfile, noise: NoisePlan) -> Choice:
    """The estimated shares the plan's own bounds remove (fixed bounds, bias disclosed)."""
    return _Model(plan, profile, noise, None).choice(plan.contribution, {})


def column_shares(plan: ir.QueryPlan, choice: Choice) -> dict[str, float]:
    """Per aggregate output column, the estimated share bounding removed from what it counts or sums.

    COUNT(DISTINCT unit) loses the groups past ``max_groups``; everything
    else, the rows past the caps (a sum's value mass is taken as proportional to
    its rows), and for a sum of an ``"auto"`` column, the mass clamping removes.
    """
    shares = {}
    for column in plan.output:
        if not isinstance(column.expr, ir.AggRef):
            continue  # arithmetic of aggregates (SUM(x) / COUNT(*)): dropped rows move both sides; no share says it
        parts = [plan.parts[index] for index in plan.parts_of(column.expr)]
        if not parts or any(part.kind is ir.PartKind.QUANTILE for part in parts):
            continue  # a quantile reads a sample of each member's values: fewer rows, not a lower value
        clamped = max((choice.clamped.get(part.column or "", 0.0) for part in parts), default=0.0)
        if all(part.kind is ir.PartKind.COUNT_UNITS for part in parts):
            share = choice.groups_share
        elif set(plan.parts_of(column.expr)) <= ratio_parts(plan):  # an average: fewer rows, only clamping lowers it
            share = clamped
        else:
            share = 1 - (1 - choice.rows_share) * (1 - clamped)
        shares[column.name] = round(min(max(share, 0.0), 1.0), 4)
    return shares


def ratio_parts(plan: ir.QueryPlan) -> set[int]:
    """The parts only averages and spreads read (a ratio of sums to counts): dropping rows thins them, not biases."""
    ratios = (ir.AggregateKind.AVG, *(kind for kind in ir.AggregateKind if kind.is_spread))
    read = {index for aggregate in plan.aggregates for index in aggregate.parts if aggregate.kind not in ratios}
    return {index for aggregate in plan.aggregates for index in aggregate.parts if aggregate.kind in ratios} - read


class _Model:
    """The expected error of candidate bounds, from the profile and the noise per unit of sensitivity."""

    def __init__(
        self, plan: ir.QueryPlan, profile: NoisyProfile, noise: NoisePlan, weights: Sequence[float] | None
    ) -> None:
        self.plan, self.profile, self.mode, self.noise = plan, profile, noise.mode, noise
        self.per_unit = [part.scale / max(part.sensitivity, 1) for part in noise.parts]
        self.noise_sensitivities = [max(part.sensitivity, 1) for part in noise.parts]
        self.weights = tuple(weights) if weights is not None else (1.0,) * len(plan.parts)
        self.member_level = TOTAL in profile.counts
        self.groups = public_groups(plan) if plan.group_keys else 1
        self.threshold = noise.threshold
        self.in_ratios = ratio_parts(plan)

    def rows(self) -> float:
        """About the query's rows (members' at member level; else the rows a column's values were counted from).

        A member's rows are at least its fullest group's, and at least one per group: where noise hides the
        busiest members from the rows histogram but not from another, the rows are at least what that one shows
        (else the rows bounding removes, read from the other, could exceed all the rows).
        """
        if self.member_level:
            return max(
                self.profile.total(statistic) for statistic in (TOTAL, *SPREAD) if statistic in self.profile.counts
            )
        return max((math.fsum(counts) for counts in self.profile.counts.values()), default=1.0) or 1.0

    def lost_rows(self, contribution: ir.Contribution) -> float:
        profile = self.profile
        if not self.member_level:
            return 0.0
        if contribution.max_rows_per_member is not None:
            return profile.excess(TOTAL, contribution.max_rows_per_member)
        groups, rows = contribution.max_groups, contribution.max_rows_per_group
        at_least = profile.excess(TOTAL, groups * rows)
        if any(statistic not in profile.counts for statistic in SPREAD):
            return at_least
        per_group = self.rows() / profile.total("groups")
        spread = profile.excess("fullest", rows) + profile.excess("groups", groups) * min(rows, per_group)
        return max(at_least, spread)

    def lost_groups(self, contribution: ir.Contribution) -> float:
        """The share of members' groups dropped past ``max_groups`` (the total mode is not offered for these)."""
        if contribution.total or "groups" not in self.profile.counts:
            return 0.0
        return self.profile.excess("groups", contribution.max_groups) / self.profile.total("groups")

    def clamped(self, column: str, upper: int) -> float:
        """The share of a column's value mass clamping at ``upper`` removes (from one value per member)."""
        statistic = value_statistic(column)
        mass = self.profile.mean(statistic)
        return (mass - self.profile.mean(statistic, upper)) / mass if mass > 0 else 0.0

    def above(self, column: str, upper: int) -> float:
        """The share of members' values at or above ``upper`` (from one value per member)."""
        statistic = value_statistic(column)
        counts, histogram = self.profile.counts[statistic], self.profile.histograms[statistic]
        everyone = math.fsum(counts)
        return math.fsum(counts[histogram.bin_of(upper) :]) / everyone if everyone > 0 else 0.0

    def typical(self, part: ir.Part, upper: int | None) -> float:
        """What one row adds to the part, in its fixed-point units: the profiled mean, else half its bound."""
        assert part.value is not None
        if upper is not None:
            mean = self.profile.mean(value_statistic(part.value.column), upper)
            if mean > 0:
                return mean
        magnitude = part.value.centered_magnitude if part.kind is ir.PartKind.CENTERED_SUM else part.value.magnitude
        return magnitude / 2

    def choice(self, contribution: ir.Contribution, uppers: Mapping[str, int]) -> Choice:
        rows_share = min(max(self.lost_rows(contribution) / self.rows(), 0.0), 1.0)
        clamped = {column: min(max(self.clamped(column, upper), 0.0), 1.0) for column, upper in uppers.items()}
        groups_share = min(max(self.lost_groups(contribution), 0.0), 1.0)
        return Choice(contribution, rows_share, groups_share, dict(uppers), clamped)

    def groups_past_threshold(self) -> float:
        """Private keys: as many groups as would each hold the members of the least threshold any bound could give.

        How many groups there are is not known before the release; its
        smallest groups have about the threshold's members, and are where the
        noise weighs most. The threshold grows with its part's noise scale,
        least at a sensitivity of one (one group per member): taking that one
        for every candidate keeps a larger threshold from looking better for
        releasing fewer, larger groups.
        """
        assert self.threshold is not None and self.plan.threshold_part is not None
        noise = self.noise.parts[self.plan.threshold_part]
        members_each = max(self.threshold.value / max(noise.sensitivity, 1), 1.0)
        return max(self.profile.members() / members_each, 1.0)

    def error(self, contribution: ir.Contribution, uppers: Mapping[str, int]) -> float:
        """Σ over parts of weight × (bias share + expected noise over the part's total, summed over the groups)."""
        bounded = with_value_bounds(replace(self.plan, contribution=contribution), uppers)
        rows = self.rows()
        rows_share = self.lost_rows(contribution) / rows
        groups = self.groups or self.groups_past_threshold()
        total = 0.0
        for index, part in enumerate(bounded.parts):
            scale = self.per_unit[index] * self.mode.norm(part_sensitivity(bounded, part))
            noise = self.mode.mean_error(scale) * groups
            upper = uppers.get(part.column or "")
            clamped = self.clamped(part.column or "", upper) if upper is not None else 0.0
            if part.kind is ir.PartKind.QUANTILE:
                share = scale * QUANTILE_RANK_FACTOR * groups / rows
                kept = max(rows * (1 - rows_share) / groups, 1.0)
                share += SAMPLE_RANK_SPREAD / math.sqrt(kept)  # fewer values kept: a quantile of a smaller sample
                if upper is not None and part.alpha is not None:  # a bound near the quantile may clamp it
                    assert part.value is not None
                    share += max(self.above(part.column or "", upper) - (1 - part.alpha) / 4, 0.0)
                    step = (part.value.upper - part.value.lower) / INTERVALS  # and a wide one coarsens its grid
                    share += step / max(self.typical(part, upper), 1)
            elif part.kind is ir.PartKind.COUNT_UNITS:
                share = self.lost_groups(contribution) + noise / self.profile.members()
            elif index in self.in_ratios:  # an average's: its rows are fewer, not its value lower
                kept = max(rows * (1 - rows_share), 1.0)
                typical = self.typical(part, upper) if part.value is not None else 1.0
                share = clamped + noise / (kept * max(typical, 1))
            elif part.kind is ir.PartKind.SUM:
                share = rows_share + clamped + noise / (rows * max(self.typical(part, upper), 1))
            else:
                share = rows_share + noise / rows
            total += self.weights[index] * share
        return total
