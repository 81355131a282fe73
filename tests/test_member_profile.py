"""The member profile (``engine.member_profile``): one member moves what it releases by at most its sensitivity.

The profile is the exact count of members per bin of three per-member
statistics (rows, groups touched, rows in the fullest group), binned and then
noised by OpenDP at ``profile_sensitivity(k)`` for the ``k`` histograms a query
releases. The property tests compare the exact binned vectors (what
``member_profile.release`` noises) of neighbouring pools: adding one member
(any rows, any groups, values past every bound, its rows first in the file,
a NULL id) moves each histogram by exactly one count or, when none of its rows
is read, not at all; so the released vector moves by at most the sensitivity
in L1 and L2. Then the release itself: no noise without the query's receipt,
and nothing above the highest occupied bin.
"""

from __future__ import annotations

import math
import tempfile
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from engine.accounting import Accounting, ChargeReceipt, Cost
from engine.backends import bounding
from engine.backends.base import Backend, MemberProfile
from engine.backends.polars import PolarsBackend
from engine.bounds_choice import profiled_statistics
from engine.errors import InternalError
from engine.mechanisms import PURE, ZCDP, Mode
from engine.member_profile import EDGES, SPREAD, TOTAL, ProfileNoise, _binned, bin_of, release, representative
from engine.plan import QueryPlan
from engine.planner import plan_query
from engine.policy import load_policy
from engine.sensitivity import profile_sensitivity
from engine.sql import parse
from tests.test_sensitivity import frame_of, member_level, queries, stray_rows, write_pool

SEED = 20261130
AUTO_PER_GROUP = 'unit = "member_id"\nmax_groups = "auto"\nmax_rows_per_group = "auto"\nauto_limit = 64'
PRIVACY = [
    pytest.param(AUTO_PER_GROUP, id="auto-g-r"),
    pytest.param('unit = "member_id"\nmax_groups = 2\nmax_rows_per_group = "auto"', id="g2-auto-r"),
    pytest.param('unit = "member_id"\nmax_rows_per_member = "auto"\nauto_limit = 100', id="auto-total"),
    pytest.param(
        'unit = "member_id"\nmax_groups = "auto"\nmax_rows_per_group = "auto"\nmax_rows_per_member = "auto"',
        id="auto-both",
    ),
    pytest.param(member_level(1, 10), id="fixed-g1-r10"),
]

# --- the profile of a pool -----------------------------------------------------------------------------------


def profile_of(backend: Backend, pool: list[dict], privacy: str, sql: str) -> tuple[QueryPlan, dict[str, list[int]]]:
    """Plan ``sql`` over ``pool``; the exact binned histogram of every statistic (what ``release`` noises)."""
    with tempfile.TemporaryDirectory() as directory:
        policies = write_pool(Path(directory), frame_of(pool), privacy)
        plan = plan_query(parse(sql), load_policy(policies / "shifts.toml"))
        exact = backend.profile(plan)
    assert set(exact.members) == set(bounding.PROFILE_STATISTICS)
    return plan, {name: _binned(exact.members[name]) for name in bounding.PROFILE_STATISTICS}


def assert_one_member_moves_one_count_per_histogram(
    backend: Backend, privacy: str, larger: list[dict], smaller: list[dict], sql: str
) -> None:
    plan, with_member = profile_of(backend, larger, privacy, sql)
    _, without = profile_of(backend, smaller, privacy, sql)
    moved = {name: [a - b for a, b in zip(with_member[name], without[name], strict=True)] for name in with_member}
    for name, difference in moved.items():
        # Each member is one count of each histogram: the member's, or none when the plan reads none of its rows.
        assert sorted(difference)[-1:] in ([0], [1]) and min(difference) == 0 and sum(difference) <= 1, (name, sql)
    assert len({sum(difference) for difference in moved.values()}) == 1, f"histograms disagree on the member: {sql}"
    for accounting in Accounting:
        statistics = profiled_statistics(plan, accounting)
        vector = [entry for name in statistics for entry in moved[name]]
        claimed = profile_sensitivity(len(statistics))
        assert sum(abs(entry) for entry in vector) <= claimed.l1, (statistics, sql)
        assert sum(entry * entry for entry in vector) <= claimed.l2**2, (statistics, sql)


# --- the properties ------------------------------------------------------------------------------------------

_SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
_SPARK_SETTINGS = settings(
    max_examples=3,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # no shrinking: every step costs Spark jobs
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

added_members = st.fixed_dictionaries(
    {
        "others": st.lists(stray_rows, max_size=25),
        "rows": st.lists(stray_rows, min_size=1, max_size=30),
        "member": st.one_of(st.integers(min_value=1, max_value=9), st.none()),
        "first": st.booleans(),
    }
)
"""A member (maybe the NULL id, itself one member) with rows over any groups and hostile values, and the others."""


def with_and_without(added: dict) -> tuple[list[dict], list[dict]]:
    others = [row for row in added["others"] if row["member_id"] != added["member"]]
    rows = [{**row, "member_id": added["member"]} for row in added["rows"]]
    return (rows + others if added["first"] else others + rows), others


@pytest.mark.parametrize("privacy", PRIVACY)
@_SETTINGS
@given(added=added_members, sql=queries())
def test_adding_a_member_moves_each_histogram_by_one_count(privacy: str, added: dict, sql: str) -> None:
    larger, smaller = with_and_without(added)
    assert_one_member_moves_one_count_per_histogram(PolarsBackend(), privacy, larger, smaller, sql)


@_SETTINGS
@given(pool=st.lists(stray_rows, min_size=1, max_size=40), sql=queries(), data=st.data())
def test_removing_any_member_moves_each_histogram_by_one_count(pool: list[dict], sql: str, data: st.DataObject) -> None:
    member = data.draw(st.sampled_from(sorted({row["member_id"] for row in pool})), label="removed member")
    smaller = [row for row in pool if row["member_id"] != member]
    assert_one_member_moves_one_count_per_histogram(PolarsBackend(), AUTO_PER_GROUP, pool, smaller, sql)


@pytest.mark.spark
@_SPARK_SETTINGS
@given(added=added_members, sql=queries())
def test_adding_a_member_moves_each_histogram_by_one_count_on_spark(
    spark_backend: Backend, added: dict, sql: str
) -> None:
    larger, smaller = with_and_without(added)
    assert_one_member_moves_one_count_per_histogram(spark_backend, AUTO_PER_GROUP, larger, smaller, sql)


SPARK_QUERIES = (
    "SELECT COUNT(*) FROM shifts",
    "SELECT region, COUNT(*), SUM(hours) FROM shifts WHERE hours > 2 GROUP BY region",
    "SELECT city, region, COUNT(DISTINCT member_id) FROM shifts GROUP BY city, region",
    "SELECT z.zone, SUM(hours * z.weight) FROM shifts JOIN zones z USING (region) GROUP BY z.zone",
)


@pytest.mark.spark
@pytest.mark.parametrize("sql", SPARK_QUERIES)
def test_spark_profiles_exactly_what_polars_profiles(spark_backend: Backend, sql: str) -> None:
    pool = [
        {"member_id": member, "region": region, "city": city, "hours": 3.0 * member, "age": 30, "member_flag": True}
        for member in range(1, 9)
        for region in ("north", "south", "east", "west", None)[: member % 5 + 1]
        for city in ("a", "b", None)[: member % 3 + 1]
        for _ in range(member)
    ]
    _, on_spark = profile_of(spark_backend, pool, AUTO_PER_GROUP, sql)
    assert on_spark == profile_of(PolarsBackend(), pool, AUTO_PER_GROUP, sql)[1]


def test_the_profile_counts_members_per_value_of_each_statistic(tmp_path: Path) -> None:
    """Three members: one row in one region; five rows over two regions (4 + 1); a NULL id's two rows in one."""
    rows = [(1, "north"), (2, "north"), (2, "north"), (2, "north"), (2, "north"), (2, "south"), (None, "east")]
    rows.append((None, "east"))
    pool = [{"member_id": m, "region": r, "city": "a", "hours": 1.0, "age": 30, "member_flag": True} for m, r in rows]
    grouped = "SELECT region, COUNT(*) FROM shifts GROUP BY region"
    policies = write_pool(tmp_path, frame_of(pool), AUTO_PER_GROUP)
    plan = plan_query(parse(grouped), load_policy(policies / "shifts.toml"))
    assert PolarsBackend().profile(plan) == MemberProfile(
        {"rows": {1: 1, 5: 1, 2: 1}, "groups": {1: 2, 2: 1}, "fullest": {1: 1, 4: 1, 2: 1}}
    )
    ungrouped = plan_query(
        parse("SELECT COUNT(*) FROM shifts WHERE region <> 'east'"), load_policy(policies / "shifts.toml")
    )
    assert PolarsBackend().profile(ungrouped).members["rows"] == {1: 1, 5: 1}


def test_what_is_profiled_follows_the_modes_the_choice_may_make(tmp_path: Path) -> None:
    """Grouped per-group choices read all three statistics; ungrouped ones and the total mode, the rows only."""
    policies = write_pool(tmp_path, frame_of([]), AUTO_PER_GROUP)
    policy = load_policy(policies / "shifts.toml")
    grouped = plan_query(parse("SELECT region, COUNT(*) FROM shifts GROUP BY region"), policy)
    ungrouped = plan_query(parse("SELECT COUNT(*) FROM shifts"), policy)
    for accounting in Accounting:
        assert profiled_statistics(grouped, accounting) == (TOTAL, *SPREAD)
        assert profiled_statistics(ungrouped, accounting) == (TOTAL,)


# --- bins and sensitivity ------------------------------------------------------------------------------------


def test_the_bins_are_fixed_and_cover_every_value() -> None:
    assert EDGES[:12] == (1, 2, 3, 4, 6, 8, 11, 16, 23, 32, 45, 64) and EDGES[-1] == 2**20
    assert list(EDGES) == sorted(set(EDGES))
    for value in [*range(1, 200), 1023, 1024, 1025, 2**20 - 1, 2**20, 2**20 + 1, 2**40]:
        index = bin_of(value)
        assert EDGES[index] <= value and (index == len(EDGES) - 1 or value < EDGES[index + 1])
        if index < len(EDGES) - 1:
            assert EDGES[index] <= representative(index) < EDGES[index + 1]


@pytest.mark.parametrize("histograms", range(1, 10))
def test_profile_sensitivity_covers_one_count_in_each_histogram(histograms: int) -> None:
    claimed = profile_sensitivity(histograms)
    assert claimed.l1 == histograms
    assert claimed.l2 >= math.sqrt(histograms) and claimed.l2 - 1 < math.sqrt(histograms)


# --- the release -----------------------------------------------------------------------------------------------

EXACT = MemberProfile({"rows": {1: 5_000, 3: 4_000, 5: 3_000}, "groups": {1: 9_000, 2: 3_000}, "fullest": {2: 12_000}})
COST = Cost(Decimal("1.0"), Decimal(0))


@pytest.mark.parametrize("mode", [PURE, ZCDP], ids=["pure", "zcdp"])
def test_no_noise_is_drawn_without_a_receipt_for_the_query_cost(mode: Mode, monkeypatch: pytest.MonkeyPatch) -> None:
    noise = ProfileNoise.fitted(mode, (TOTAL, *SPREAD), 0.1)
    drawn: list[object] = []
    monkeypatch.setattr("engine.member_profile.add_vector_noise", lambda *args: drawn.append(args) or [])
    for receipt in (
        ChargeReceipt("q", Cost(Decimal("0.9"), Decimal(0))),
        ChargeReceipt("q", Cost(COST.epsilon, Decimal("1e-6"))),
    ):
        with pytest.raises(InternalError, match="different cost"):
            release(noise, EXACT, receipt, COST)
    assert drawn == []


def test_the_release_noises_each_histogram_by_opendp_at_its_scale() -> None:
    noise = ProfileNoise.fitted(PURE, (TOTAL, *SPREAD), 0.5)
    assert noise.scale == pytest.approx(3 / 0.5) and noise.loss <= 0.5
    released = release(noise, EXACT, ChargeReceipt("q", COST), COST)
    assert set(released.counts) == {TOTAL, *SPREAD}
    assert all(len(counts) == len(EDGES) and min(counts) >= 0 for counts in released.counts.values())
    assert released.counts[TOTAL][0] == pytest.approx(5_000, abs=150)
    assert released.counts["fullest"][1] == pytest.approx(12_000, abs=150)
    assert released.members() == pytest.approx(12_000, abs=300)


def test_the_release_zeroes_every_bin_above_the_highest_occupied(monkeypatch: pytest.MonkeyPatch) -> None:
    """Noise in the empty bins of large values would read as members with millions of rows: they are zeroed."""
    monkeypatch.setattr(
        "engine.member_profile.add_vector_noise", lambda mode, scale, values: [value + 5 for value in values]
    )
    noise = ProfileNoise.fitted(PURE, (TOTAL,), 0.1)
    released = release(noise, EXACT, ChargeReceipt("q", COST), COST).counts[TOTAL]
    top = bin_of(5)
    assert released[: top + 1] == (5_005.0, 5.0, 4_005.0, 3_005.0)[: top + 1]
    assert set(released[top + 1 :]) == {0.0}


def test_the_highest_occupied_bin_needs_more_than_noise() -> None:
    noise = ProfileNoise.fitted(PURE, (TOTAL,), 0.1)
    single = PURE.accuracy(noise.scale, 0.05 / (2 * len(EDGES)))
    empty = [0] * len(EDGES)
    assert noise.highest_occupied(empty) == -1
    assert noise.highest_occupied([*empty[:-1], math.floor(single)]) == -1
    assert noise.highest_occupied([*empty[:-1], math.floor(single) + 1]) == len(EDGES) - 1
    thin = [0] * 30 + [math.ceil(single / 2)] * 10  # no one bin passes, several together do
    assert 30 <= noise.highest_occupied(thin) < len(EDGES) - 1
    assert noise.highest_occupied([*[0] * 30, 1, *[0] * 9]) == -1


@pytest.mark.parametrize("mode", [PURE, ZCDP], ids=["pure", "zcdp"])
def test_the_released_counts_spread_as_the_noise_scale_says(mode: Mode) -> None:
    """400 releases of one occupied bin: the spread of its released count is the noise's (Laplace or Gaussian)."""
    noise = ProfileNoise.fitted(mode, (TOTAL, *SPREAD), 0.1)
    exact = MemberProfile({"rows": {1: 100_000}, "groups": {1: 100_000}, "fullest": {1: 100_000}})
    released = [release(noise, exact, ChargeReceipt("q", COST), COST).counts[TOTAL][0] for _ in range(400)]
    mean = sum(released) / len(released)
    spread = math.sqrt(sum((count - mean) ** 2 for count in released) / (len(released) - 1))
    expected = noise.scale * (math.sqrt(2) if mode is PURE else 1.0)  # discrete Laplace: about √2 · scale
    assert 0.75 * expected < spread < 1.25 * expected
    assert abs(mean - 100_000) < 5 * expected / math.sqrt(len(released))
