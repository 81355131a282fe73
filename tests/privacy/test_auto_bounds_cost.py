"""The charge of a query whose bounds are chosen by DP (or whose bias is disclosed), against OpenDP's maps.

Such a query makes two kinds of release: the member profile (integer-vector
noise on ``k`` histograms, one count per member in each) and the query's
parts at the bounds chosen from it. For random policies (``"auto"`` or fixed
contribution bounds, ``hours`` with a fixed or an ``"auto"`` clamp bound,
limits, shares, accounting) and queries, the test runs the engine,
catches the noise it actually draws (the profile's and the parts' at the
chosen bounds), and recomputes every loss from OpenDP's own measurements with
sensitivities it derives itself from the policy, the key sets and the chosen
bounds (as ``test_charged_cost.py`` does, never with the engine's calibration
math; a chosen clamp bound is read from the result's ``value_bounds``).
Together they must fit the charged (ε, δ) and spend at least 99% of it.
Then: the profile is read only after the charge, and a refused query is charged nothing.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import opendp.prelude as dp
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import engine.engine as engine_module
from engine import Engine
from engine.accounting import Accounting, PrivacyRequest
from engine.backends.polars import PolarsBackend
from engine.bounds_choice import candidates, value_candidates, with_value_bounds
from engine.errors import BudgetExhausted, PolicyViolation
from engine.ledger import open_ledger
from engine.mechanisms import NoisePlan, calibrate, part_weights
from engine.member_profile import ProfileNoise
from engine.plan import QueryPlan
from engine.planner import plan_query
from engine.policy import Policy, load_policies
from engine.sql import parse
from tests.bounds_pools import HOURS_SCALE, aggregate_query
from tests.conftest import ROW_LEVEL, small_pool, write_dataset
from tests.privacy.test_charged_cost import KEY_SETS, RELATIVE, Setting, epsilon_of_rho, recompute

dp.enable_features("contrib")

AGGREGATES = (
    "COUNT(*)",
    "SUM(hours)",
    "AVG(age)",
    "MEDIAN(hours)",
    "QUANTILE(age, 0.25)",
    "COUNT(DISTINCT member_id)",
    "VAR_POP(hours)",
)
BOUND = st.one_of(st.just("auto"), st.integers(1, 5))
HOURS_RANGE = (0.0, 60.0)


@dataclass(frozen=True)
class AutoSetting:
    """A policy whose bounds are chosen per query (or fixed, with the bias disclosed), and a query."""

    accounting: str
    max_groups: int | str
    max_rows_per_group: int | str
    auto_limit: int
    auto_share: float
    group_by: str
    aggregates: tuple[str, ...]
    epsilon: float
    delta: float
    explain_bias: bool
    weights: tuple[float, ...] | None = None
    pick: float = 0.5
    """Which other candidate bounds to calibrate at too (a fraction of the way through the list)."""
    auto_hours: bool = False
    """``hours`` with ``bounds = "auto"`` in its range [0, 60] (else fixed at [0, 60])."""

    @property
    def weights_by_column(self) -> dict[str, float] | None:
        return {f"c{i}": w for i, w in enumerate(self.weights)} if self.weights else None

    @property
    def sql(self) -> str:
        return aggregate_query(self.group_by, self.aggregates)

    @property
    def auto(self) -> bool:
        """Whether the engine chooses bounds for this query (contribution bounds, or a column's clamp bound)."""
        return "auto" in (self.max_groups, self.max_rows_per_group) or bool(self.auto_columns)

    @property
    def auto_columns(self) -> tuple[str, ...]:
        """The ``"auto"`` columns whose values the query sums or ranks (a variance keeps the range)."""
        reads = {"SUM(hours)", "MEDIAN(hours)"} & set(self.aggregates)
        return ("hours",) if self.auto_hours and reads and "VAR_POP(hours)" not in self.aggregates else ()

    def at(self, bounds: dict[str, int]) -> Setting:
        """The fixed-bounds setting of ``test_charged_cost`` the query ran with."""
        assert set(bounds) == {"max_groups", "max_rows_per_group"}, bounds
        return Setting(
            self.accounting,
            True,
            bounds["max_groups"],
            bounds["max_rows_per_group"],
            self.group_by,
            self.aggregates,
            self.epsilon,
            self.delta,
        )


@st.composite
def auto_settings(draw: st.DrawFn) -> AutoSetting:
    max_groups, max_rows = draw(BOUND), draw(BOUND)
    aggregates = tuple(draw(st.lists(st.sampled_from(AGGREGATES), min_size=1, max_size=3, unique=True)))
    weighted = draw(st.booleans())
    return AutoSetting(
        accounting=draw(st.sampled_from(["pure", "zcdp"])),
        max_groups=max_groups,
        max_rows_per_group=max_rows,
        auto_limit=draw(st.sampled_from([1, 3, 16, 100, 1024])),
        auto_share=draw(st.sampled_from([0.05, 0.1, 0.5])),
        group_by=draw(st.sampled_from(sorted(KEY_SETS))),
        aggregates=aggregates,
        epsilon=draw(st.sampled_from([0.1, 0.5, 1.0, 2.0])),
        delta=draw(st.sampled_from([1e-6, 1e-8])),
        explain_bias=draw(st.booleans()) or "auto" not in (max_groups, max_rows),
        weights=tuple(draw(st.sampled_from([1.0, 3.0, 0.25])) for _ in aggregates) if weighted else None,
        pick=draw(st.floats(min_value=0.0, max_value=1.0, exclude_max=True)),
        auto_hours=draw(st.booleans()),
    )


@pytest.fixture(scope="module")
def base_policy(tmp_path_factory: pytest.TempPathFactory) -> Policy:
    root = tmp_path_factory.mktemp("auto_cost")
    pool = small_pool(rows=400, members=40)
    return load_policies(write_dataset(root, pool, epsilon=1e9, max_epsilon_per_query=2.0))["shifts"]


def policy_for(base: Policy, setting: AutoSetting) -> Policy:
    privacy = {
        "max_groups": setting.max_groups,
        "max_rows_per_group": setting.max_rows_per_group,
        "auto_limit": setting.auto_limit,
        "auto_share": setting.auto_share,
    }
    columns = dict(base.columns)
    if setting.auto_hours:
        columns["hours"] = columns["hours"].model_copy(update={"bounds": "auto", "range": HOURS_RANGE})
    return base.model_copy(
        update={
            "privacy": base.privacy.model_copy(update=privacy),
            "budget": base.budget.model_copy(update={"accounting": setting.accounting}),
            "columns": columns,
        }
    )


# --- what the engine draws -------------------------------------------------------------------------------------


@dataclass
class Drawn:
    """The noise the engine drew for one query: the profile's, and the parts' (at the bounds chosen)."""

    profiles: list[ProfileNoise] = field(default_factory=list)
    parts: list[NoisePlan] = field(default_factory=list)
    receipts: list[Any] = field(default_factory=list)


@contextmanager
def drawn_noise() -> Iterator[Drawn]:
    """Catch every profile and every query release the engine makes (they still run)."""
    drawn = Drawn()
    release_profile, release = engine_module.release_profile, engine_module.release

    def profile_spy(noise: ProfileNoise, exact: Any, receipt: Any, cost: Any) -> Any:
        drawn.profiles.append(noise)
        drawn.receipts.append(receipt)
        return release_profile(noise, exact, receipt, cost)

    def release_spy(noise: NoisePlan, exact: Any, receipt: Any) -> Any:
        drawn.parts.append(noise)
        drawn.receipts.append(receipt)
        return release(noise, exact, receipt)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine_module, "release_profile", profile_spy)
        patch.setattr(engine_module, "release", release_spy)
        yield drawn


def profile_loss(setting: AutoSetting, noise: ProfileNoise) -> float:
    """ε or ρ of the profile by OpenDP's map: one count in each of its histograms (rows; groups and fullest when
    grouped per group; a value histogram per ``"auto"`` column read)."""
    histograms = (3 if setting.group_by else 1) + len(setting.auto_columns)
    assert len(noise.histograms) == histograms
    domain = dp.vector_domain(dp.atom_domain(T="i64"))
    if setting.accounting == "pure":
        return float(dp.m.make_laplace(domain, dp.l1_distance(T="i64"), scale=noise.scale).map(histograms))
    l2 = math.isqrt(histograms - 1) + 1  # the least integer at or above √histograms
    return float(dp.m.make_gaussian(domain, dp.l2_distance(T="i64"), scale=noise.scale).map(l2))


def assert_fits_and_spends_the_request(setting: AutoSetting, loss: float, threshold_delta: float) -> None:
    if setting.accounting == "pure":
        assert loss <= setting.epsilon * (1 + RELATIVE), "profile and parts together spend more than the charge"
        assert loss >= setting.epsilon * 0.99, "noise larger than the budget needs"
        assert threshold_delta <= setting.delta
        return
    assert threshold_delta < setting.delta
    assert epsilon_of_rho(loss, setting.delta - threshold_delta) <= setting.epsilon * (1 + RELATIVE)
    private = KEY_SETS[setting.group_by] is None
    design = epsilon_of_rho(loss, setting.delta / 2 if private else setting.delta)
    assert design >= setting.epsilon * 0.99, "noise larger than the budget needs"


def run(base: Policy, setting: AutoSetting) -> tuple[Any, Drawn, Engine]:
    policy = policy_for(base, setting)
    directory = tempfile.mkdtemp(prefix="auto_cost")
    engine = Engine({"shifts": policy}, open_ledger(f"sqlite:///{Path(directory) / 'ledger.db'}"))
    with drawn_noise() as drawn:
        result = engine.query(
            "shifts",
            setting.sql,
            epsilon=setting.epsilon,
            delta=setting.delta,
            weights=setting.weights_by_column,
            explain_bias=setting.explain_bias,
        )
    return result, drawn, engine


GROUPED_AUTO = AutoSetting("pure", "auto", "auto", 1024, 0.1, "region", ("COUNT(*)", "SUM(hours)"), 1.0, 1e-6, False)
PRIVATE_ZCDP = AutoSetting("zcdp", "auto", 3, 100, 0.5, "city", ("COUNT(*)", "MEDIAN(hours)"), 0.5, 1e-6, False)
FIXED_EXPLAINED = AutoSetting("pure", 2, 4, 1024, 0.1, "region, member_flag", ("AVG(age)",), 1.0, 1e-8, True)
DISTINCT_WEIGHTED = AutoSetting(
    "zcdp", "auto", "auto", 16, 0.05, "member_flag", ("COUNT(DISTINCT member_id)", "SUM(hours)"), 2.0, 1e-8, True,
    (3.0, 0.25),
)  # fmt: skip
AUTO_HOURS_FIXED = AutoSetting(
    "pure", 2, 3, 1024, 0.1, "region", ("SUM(hours)", "COUNT(*)"), 1.0, 1e-6, False, auto_hours=True
)
AUTO_HOURS_PRIVATE = AutoSetting(
    "zcdp", "auto", "auto", 100, 0.5, "city", ("MEDIAN(hours)", "AVG(age)"), 0.5, 1e-6, False, pick=0.9,
    auto_hours=True,
)  # fmt: skip


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(GROUPED_AUTO)
@example(PRIVATE_ZCDP)
@example(FIXED_EXPLAINED)
@example(DISTINCT_WEIGHTED)
@example(AUTO_HOURS_FIXED)
@example(AUTO_HOURS_PRIVATE)
@given(setting=auto_settings())
def test_the_charge_covers_the_profile_and_the_parts_at_the_chosen_bounds(
    base_policy: Policy, setting: AutoSetting
) -> None:
    result, drawn, engine = run(base_policy, setting)
    try:
        (profile,), (parts,) = drawn.profiles, drawn.parts
        charged = engine.ledger.spent("shifts").dataset
        assert {receipt.cost for receipt in drawn.receipts} == {charged} == {result.cost}
        assert result.cost.epsilon == Decimal(repr(setting.epsilon))
        chosen = setting.at(result.bounds)
        for name, value in result.bounds.items():
            fixed = getattr(setting, name)
            assert value == fixed if fixed != "auto" else 1 <= value <= setting.auto_limit
        plan = plan_query(parse(setting.sql), policy_for(base_policy, setting))
        assert (plan.auto_bounds.columns if plan.auto_bounds else ()) == setting.auto_columns
        assert set(result.value_bounds) == set(setting.auto_columns)
        for part_noise in parts.parts:  # the parts ran clamped at the bound the result discloses, inside the range
            value = part_noise.part.value
            if value is not None and value.column in setting.auto_columns:
                low, high = result.value_bounds[value.column]
                assert low == HOURS_RANGE[0] and 0 < high <= HOURS_RANGE[1]
                assert value.scale == HOURS_SCALE and value.lower == 0 and value.upper == high * HOURS_SCALE
        recomputed = recompute(chosen, plan, parts)
        from_profile = profile_loss(setting, profile)
        total = recomputed.loss + from_profile
        assert total == pytest.approx(parts.loss, rel=1e-6), "the engine reports another loss than OpenDP"
        assert from_profile == pytest.approx(setting.auto_share * total, rel=0.02), "the profile's share of the loss"
        assert_fits_and_spends_the_request(setting, total, recomputed.threshold_delta)
        if setting.auto:  # any other bounds the choice might have made (on this small pool it often takes the least)
            found = candidates(plan, Accounting(setting.accounting))
            other = found[int(setting.pick * len(found))]
            uppers = {}
            for column in setting.auto_columns:
                values = value_candidates(plan, column)
                uppers[column] = values[int(setting.pick * len(values))]
                assert 0 < uppers[column] <= HOURS_RANGE[1] * HOURS_SCALE
            request = PrivacyRequest.validate(setting.epsilon, setting.delta, policy_for(base_policy, setting).budget)
            weights = part_weights(plan, setting.weights_by_column) if setting.weights_by_column else None
            bounded = with_value_bounds(replace(plan, contribution=other), uppers)
            noise = calibrate(bounded, request, weights, profile.loss)
            assert noise.cost == charged
            bounds = {"max_groups": other.max_groups, "max_rows_per_group": other.max_rows_per_group}
            again = recompute(setting.at(bounds), bounded, noise)
            assert again.loss + from_profile == pytest.approx(noise.loss, rel=1e-6)
            assert_fits_and_spends_the_request(setting, again.loss + from_profile, again.threshold_delta)
    finally:
        engine.close()


# --- the order: charge, then profile ----------------------------------------------------------------------------


@pytest.fixture
def auto_engine(tmp_path: Path) -> Iterator[Engine]:
    privacy = 'unit = "member_id"\nmax_groups = "auto"\nmax_rows_per_group = "auto"'
    policies = write_dataset(tmp_path, small_pool(), privacy=privacy, epsilon=1.0, max_epsilon_per_query=1.0)
    write_dataset(tmp_path, small_pool(), name="rows", privacy=ROW_LEVEL, epsilon=1.0, max_epsilon_per_query=1.0)
    created = Engine.from_policies(policies, ledger=f"sqlite:///{tmp_path / 'ledger.db'}")
    yield created
    created.close()


def test_the_profile_is_read_only_after_the_charge(auto_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    spent_when_read: list[Decimal] = []
    profile = PolarsBackend.profile

    def reading(backend: PolarsBackend, plan: QueryPlan) -> Any:
        spent_when_read.append(auto_engine.ledger.spent("shifts").dataset.epsilon)
        return profile(backend, plan)

    monkeypatch.setattr(PolarsBackend, "profile", reading)
    auto_engine.query("shifts", "SELECT region, COUNT(*) FROM shifts GROUP BY region", epsilon=0.75)
    assert spent_when_read == [Decimal("0.75")]
    with pytest.raises(BudgetExhausted):
        auto_engine.query("shifts", "SELECT COUNT(*) FROM shifts", epsilon=0.5)
    assert spent_when_read == [Decimal("0.75")], "a query refused by the budget read the profile"


@pytest.mark.parametrize(
    ("dataset", "sql", "options", "message"),
    [
        ("shifts", "SELECT COUNT(*) AS n FROM shifts", {"accuracy": {"n": 10.0}}, "accuracy targets need fixed"),
        ("shifts", "SELECT COUNT(*) AS n FROM shifts", {"accuracy": {"n": 10.0}, "explain_bias": True}, "accuracy"),
        ("rows", "SELECT COUNT(*) FROM rows", {"epsilon": 0.5, "explain_bias": True}, "member-level"),
        ("shifts", "SELECT city, COUNT(*) FROM shifts GROUP BY city", {"epsilon": 0.5}, "delta > 0"),
        ("shifts", "SELECT COUNT(*) FROM shifts", {"epsilon": 1.5}, "max_epsilon_per_query"),
    ],
)
def test_a_refused_query_with_auto_bounds_or_explain_bias_is_charged_nothing(
    auto_engine: Engine, monkeypatch: pytest.MonkeyPatch, dataset: str, sql: str, options: dict, message: str
) -> None:
    read: list[QueryPlan] = []
    monkeypatch.setattr(PolarsBackend, "profile", lambda backend, plan: read.append(plan))
    with pytest.raises(PolicyViolation, match=message):
        auto_engine.query(dataset, sql, **options)
    assert read == []
    for name in ("shifts", "rows"):
        assert auto_engine.ledger.spent(name).dataset.epsilon == 0
    assert auto_engine.releases() == []


def test_a_dry_run_with_auto_bounds_reads_nothing_and_says_the_bounds_come_later(
    auto_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(PolarsBackend, "profile", lambda backend, plan: pytest.fail("a dry run read the profile"))
    result = auto_engine.query("shifts", "SELECT COUNT(*) FROM shifts", epsilon=0.5, dry_run=True)
    assert result.rows == [] and result.bounds == {} and result.bias == {}
    assert any("chosen when the query runs" in note for note in result.notes)
    assert auto_engine.ledger.spent("shifts").dataset.epsilon == 0 and auto_engine.releases() == []
