"""The charged (ε, δ) against OpenDP's maps, recomputed here from the policy and the query alone.

For random policies (accounting, unit, ``max_groups``, ``max_rows_per_group``,
``max_rows_per_member``) and random grouped queries, the test derives each part's contribution bound
itself (groups × per-group, from the policy and the key sets) and asks
OpenDP's own measurements, at the noise scales the engine chose, what they
cost. It never calls the engine's calibration math, so a bug there (a grouped
quantile paying for one group, a threshold one step too low, a conversion
spending the threshold's δ again) shows as a real loss above the charge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal

import opendp.prelude as dp
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from engine.accounting import PrivacyRequest
from engine.mechanisms import NoisePlan, calibrate
from engine.plan import Part, PartKind, QueryPlan
from engine.planner import plan_query
from engine.policy import Policy, load_policies
from engine.sql import parse
from tests.conftest import small_pool, write_dataset

dp.enable_features("contrib")

KEY_SETS = {"": 1, "region": 4, "member_flag": 2, "region, member_flag": 8, "city": None, "city, region": None}
"""GROUP BY clauses and how many public key combinations they have (None: private keys)."""
AGGREGATES = (
    "COUNT(*)",
    "COUNT(hours)",
    "SUM(hours)",
    "SUM(hours - 100)",
    "AVG(age)",
    "AVG(age * -2)",
    "VAR_POP(hours)",
    "MEDIAN(hours)",
    "QUANTILE(age, 0.25)",
    "COUNT(DISTINCT member_id)",
)
RELATIVE = 1e-9
"""Float slack on comparisons of losses (OpenDP's maps round up; the engine's bisection stops near the target)."""


@dataclass(frozen=True)
class Setting:
    """One random policy and query."""

    accounting: str
    member_level: bool
    max_groups: int
    max_rows_per_group: int
    group_by: str
    aggregates: tuple[str, ...]
    epsilon: float
    delta: float
    max_rows_per_member: int | None = None
    """Total mode's cap; with ``per_group`` the policy allows both modes and the planner picks one."""
    per_group: bool = True
    """Whether the policy gives ``max_groups`` and ``max_rows_per_group`` (always, without a total cap)."""

    @property
    def sql(self) -> str:
        keys = f"{self.group_by}, " if self.group_by else ""
        grouping = f" GROUP BY {self.group_by}" if self.group_by else ""
        return f"SELECT {keys}{', '.join(self.aggregates)} FROM shifts{grouping}"


@st.composite
def settings_(draw: st.DrawFn) -> Setting:
    member_level = draw(st.booleans())
    aggregates = draw(st.lists(st.sampled_from(AGGREGATES), min_size=1, max_size=3, unique=True))
    if not member_level:
        aggregates = [a for a in aggregates if "DISTINCT" not in a] or ["COUNT(*)"]
    modes = draw(st.sampled_from(["per_group", "total", "both"])) if member_level else "per_group"
    return Setting(
        accounting=draw(st.sampled_from(["pure", "zcdp"])),
        member_level=member_level,
        max_groups=draw(st.integers(1, 9)) if member_level else 1,
        max_rows_per_group=draw(st.integers(1, 5)) if member_level else 1,
        group_by=draw(st.sampled_from(sorted(KEY_SETS))),
        aggregates=tuple(aggregates),
        epsilon=draw(st.sampled_from([0.1, 0.5, 1.0, 2.0])),
        delta=draw(st.sampled_from([1e-6, 1e-8])),
        max_rows_per_member=draw(st.integers(1, 30)) if modes != "per_group" else None,
        per_group=modes != "total",
    )


@pytest.fixture(scope="module")
def base_policy(tmp_path_factory: pytest.TempPathFactory) -> Policy:
    return load_policies(write_dataset(tmp_path_factory.mktemp("cost"), small_pool(rows=20, members=5)))["shifts"]


def policy_for(base: Policy, setting: Setting) -> Policy:
    privacy = (
        {
            "unit": "member_id",
            "max_groups": setting.max_groups if setting.per_group else None,
            "max_rows_per_group": setting.max_rows_per_group if setting.per_group else None,
            "max_rows_per_member": setting.max_rows_per_member,
        }
        if setting.member_level
        else {"unit": "row", "max_groups": None, "max_rows_per_group": None, "max_rows_per_member": None}
    )
    budget = {"accounting": setting.accounting, "epsilon": 10.0, "max_epsilon_per_query": 2.0}
    return base.model_copy(
        update={
            "privacy": base.privacy.model_copy(update=privacy),
            "budget": base.budget.model_copy(update=budget),
        }
    )


@dataclass(frozen=True)
class Bound:
    """A part's contribution bound, derived here from the policy and the key sets (not from the plan)."""

    groups: int
    per_group: int
    total: bool = False
    """Total mode: a unit's rows are capped over all groups, so L1 and L2 are one group's worth."""

    @property
    def l1(self) -> int:
        return self.per_group if self.total else self.groups * self.per_group

    @property
    def l2(self) -> int:
        """The least integer at or above √groups · per_group (total mode: per_group)."""
        if self.total:
            return self.per_group
        square = self.groups * self.per_group**2
        root = math.isqrt(square)
        return root if root * root == square else root + 1


def bound_of(setting: Setting, part: Part, total: bool) -> Bound:
    """The bound in the mode the planner picked (``total``), each mode's own from the policy."""
    public_keys = KEY_SETS[setting.group_by]
    cap = setting.max_rows_per_member if total else setting.max_groups
    assert cap is not None
    groups = cap if public_keys is None else min(cap, public_keys)
    rows = setting.max_rows_per_member if total else setting.max_rows_per_group
    assert rows is not None
    match part.kind:
        case PartKind.COUNT_UNITS:
            return Bound(groups, 1)
        case PartKind.SUM:
            assert part.value is not None
            return Bound(groups, rows * max(-part.value.lower, part.value.upper), total)
        case PartKind.CENTERED_SUM:
            assert part.value is not None
            middle = (part.value.lower + part.value.upper) // 2
            return Bound(groups, rows * max(middle - part.value.lower, part.value.upper - middle), total)
    return Bound(groups, rows, total)  # row counts, value counts, and a quantile (whose distance is in rows)


def part_loss(setting: Setting, part: Part, scale: float, total: bool) -> float:
    """ε (pure) or ρ (zCDP) of one vector or quantile part, by OpenDP's map."""
    bound = bound_of(setting, part, total)
    pure = setting.accounting == "pure"
    if part.kind is PartKind.QUANTILE:
        assert part.alpha is not None
        measure = dp.max_divergence() if pure else dp.zero_concentrated_divergence()
        quantile = dp.m.make_private_quantile(
            dp.vector_domain(dp.atom_domain(T=float, nan=False)),
            dp.symmetric_distance(),
            measure,
            candidates=[0.0, 1.0],  # its map (the engine's intervals pay the same) does not depend on the candidates
            alpha=part.alpha,
            scale=scale,
        )
        return bound.groups * float(quantile.map(bound.per_group))  # one quantile per group a unit touches
    domain = dp.vector_domain(dp.atom_domain(T="i64"))
    if pure:
        return float(dp.m.make_laplace(domain, dp.l1_distance(T="i64"), scale=scale).map(bound.l1))
    return float(dp.m.make_gaussian(domain, dp.l2_distance(T="i64"), scale=scale).map(bound.l2))


def threshold_loss(setting: Setting, part: Part, scale: float, value: int, total: bool) -> tuple[float, float]:
    """(ε or ρ, δ) of releasing the keys whose noisy unit count reaches ``value``, by OpenDP's map."""
    bound = bound_of(setting, part, total)
    domain = dp.map_domain(dp.atom_domain(T=str), dp.atom_domain(T="i64"))
    if setting.accounting == "pure":
        metric = dp.l01inf_distance(dp.absolute_distance(T="i64"))
        measurement = dp.m.make_laplace_threshold(domain, metric, scale=scale, threshold=value)
        loss, delta = measurement.map((bound.groups, bound.l1, bound.per_group))
    else:
        metric = dp.l02inf_distance(dp.absolute_distance(T="i64"))
        measurement = dp.m.make_gaussian_threshold(domain, metric, scale=scale, threshold=value)
        loss, delta = measurement.map((bound.groups, bound.l2, bound.per_group))
    return float(loss), float(delta)


def epsilon_of_rho(rho: float, delta: float) -> float:
    """OpenDP's zCDP → (ε, δ) conversion of ``rho`` at ``delta`` (a unit Gaussian queried at √(2ρ))."""
    gaussian = dp.m.make_gaussian(dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float), scale=1.0)
    profile = dp.c.make_zCDP_to_approxDP(gaussian).map(math.nextafter(math.sqrt(2 * rho), math.inf))
    return float(profile.epsilon(delta))


@dataclass(frozen=True)
class Recomputed:
    loss: float
    """Composed ε (pure) or ρ (zCDP) of every part, the threshold's included."""
    threshold_delta: float


def recompute(setting: Setting, plan: QueryPlan, noise: NoisePlan) -> Recomputed:
    """The losses in the mode the planner picked (which mode adds less noise is no privacy question)."""
    total = plan.contribution.total
    if setting.max_rows_per_member is None or not setting.per_group:
        assert total == (setting.max_rows_per_member is not None), "a policy with one mode gets that mode"
    losses, threshold_delta = [], 0.0
    for index, part_noise in enumerate(noise.parts):
        if index == plan.threshold_part:
            assert noise.threshold is not None
            value = noise.threshold.value
            loss, threshold_delta = threshold_loss(setting, part_noise.part, part_noise.scale, value, total)
            losses.append(loss)
        else:
            losses.append(part_loss(setting, part_noise.part, part_noise.scale, total))
    return Recomputed(math.fsum(losses), threshold_delta)


def calibrated(base: Policy, setting: Setting) -> tuple[QueryPlan, NoisePlan]:
    policy = policy_for(base, setting)
    plan = plan_query(parse(setting.sql), policy)
    request = PrivacyRequest.validate(setting.epsilon, setting.delta, policy.budget)
    return plan, calibrate(plan, request)


GROUPED_MEDIAN = Setting("pure", True, 2, 3, "region", ("MEDIAN(hours)",), 1.0, 1e-6)
PRIVATE_ZCDP = Setting("zcdp", True, 3, 2, "city", ("COUNT(*)", "SUM(hours)"), 1.0, 1e-6)
PRIVATE_PURE = Setting("pure", True, 2, 4, "city", ("AVG(age)",), 0.5, 1e-8)
TOTAL_PRIVATE_ZCDP = Setting("zcdp", True, 1, 1, "city", ("COUNT(*)", "SUM(hours)"), 1.0, 1e-6, 7, per_group=False)
TOTAL_MEDIAN = Setting("pure", True, 1, 1, "region", ("MEDIAN(hours)", "COUNT(*)"), 1.0, 1e-6, 6, per_group=False)
BOTH_PURE = Setting("pure", True, 2, 5, "region, member_flag", ("AVG(age)", "COUNT(DISTINCT member_id)"), 1.0, 1e-6, 8)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(GROUPED_MEDIAN)
@example(Setting("zcdp", True, 4, 2, "region, member_flag", ("QUANTILE(age, 0.25)", "COUNT(*)"), 0.5, 1e-6))
@example(PRIVATE_ZCDP)
@example(PRIVATE_PURE)
@example(TOTAL_PRIVATE_ZCDP)
@example(TOTAL_MEDIAN)
@example(BOTH_PURE)
@given(setting=settings_())
def test_the_charge_covers_what_opendp_says_the_release_costs(base_policy: Policy, setting: Setting) -> None:
    plan, noise = calibrated(base_policy, setting)
    recomputed = recompute(setting, plan, noise)
    private = plan.threshold_part is not None
    assert private == (KEY_SETS[setting.group_by] is None)
    epsilon, delta = Decimal(repr(setting.epsilon)), Decimal(repr(setting.delta))
    spends_delta = private or setting.accounting == "zcdp"
    assert noise.cost.epsilon == epsilon and noise.cost.delta == (delta if spends_delta else 0)
    assert recomputed.loss == pytest.approx(noise.loss, rel=1e-6), "the engine reports another loss than OpenDP"
    if setting.accounting == "pure":
        assert recomputed.loss <= setting.epsilon * (1 + RELATIVE)
        assert recomputed.loss >= setting.epsilon * 0.99, "noise larger than the budget needs"
        assert recomputed.threshold_delta <= setting.delta
        return
    assert recomputed.threshold_delta < setting.delta
    # The two δ shares, the threshold's and the conversion's, add up to at most the δ charged.
    converted = epsilon_of_rho(recomputed.loss, setting.delta - recomputed.threshold_delta)
    assert converted <= setting.epsilon * (1 + RELATIVE)
    # Calibrated to the conversion at the rest of δ: half of it with private keys (the threshold's share).
    design = epsilon_of_rho(recomputed.loss, setting.delta / 2 if private else setting.delta)
    assert design >= setting.epsilon * 0.99, "noise larger than the budget needs"


@pytest.mark.parametrize(
    "setting",
    [PRIVATE_PURE, PRIVATE_ZCDP, TOTAL_PRIVATE_ZCDP, Setting("pure", False, 1, 1, "city", ("COUNT(*)",), 1.0, 1e-6)],
)
def test_the_released_threshold_is_the_smallest_whose_delta_fits(base_policy: Policy, setting: Setting) -> None:
    """Recomputed from the released threshold: its δ fits the share, and one step lower would not."""
    plan, noise = calibrated(base_policy, setting)
    assert plan.threshold_part is not None and noise.threshold is not None
    part_noise = noise.parts[plan.threshold_part]
    value = noise.threshold.value
    share = setting.delta if setting.accounting == "pure" else setting.delta / 2
    total = plan.contribution.total
    _, released = threshold_loss(setting, part_noise.part, part_noise.scale, value, total)
    _, lower = threshold_loss(setting, part_noise.part, part_noise.scale, value - 1, total)
    assert released <= share < lower
    assert noise.threshold.delta == pytest.approx(released, rel=1e-12)


def test_a_grouped_quantile_pays_in_every_group_a_member_may_touch(base_policy: Policy) -> None:
    """At max_groups = 2 the median's noise doubles (its loss per group halves) against max_groups = 1."""
    one = calibrated(base_policy, Setting("pure", True, 1, 3, "region", ("MEDIAN(hours)",), 1.0, 1e-6))[1]
    two = calibrated(base_policy, GROUPED_MEDIAN)[1]
    assert two.parts[0].scale == pytest.approx(2 * one.parts[0].scale, rel=1e-6)
