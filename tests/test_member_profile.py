"""The member profile (``engine.member_profile``): one member moves what it releases by at most its sensitivity.

The profile is the exact count of members per bin of per-member statistics:
rows, groups touched and rows in the fullest group (dense contribution
histograms, up to the query's limit and one bin above it), and, for each
column whose clamp bound is chosen (``bounds = "auto"``), the member's median
value (a sparse value histogram over the column's range). Binned, then noised
by OpenDP at ``profile_sensitivity(k)`` for the ``k`` histograms a query
releases. The property tests compare the exact statistics and the binned
vectors (what ``member_profile.release`` noises) of neighbouring pools: adding
one member (any rows, any groups, values past every bound, its rows first in
the file, a NULL id) adds one count to each contribution histogram or, when
none of its rows is read, none; and one count to a value histogram, or none
when it has no value there. So the released vector moves by at most the
sensitivity in L1 and L2. At row level a row is the unit: one count of each
value histogram. Then the release itself: no noise without the query's
receipt; dense counts lowered by the noise's mean size and floored at 0;
sparse counts zeroed above the highest occupied bin.
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
from engine.backends.bounding import value_statistic
from engine.backends.polars import PolarsBackend
from engine.bounds_choice import DISCLOSED_SPAN, profiled_histograms
from engine.errors import InternalError
from engine.mechanisms import PURE, ZCDP, Mode, add_vector_noise
from engine.member_profile import (
    DETECTION_ALPHA,
    EDGES,
    SHRINKAGE,
    SPREAD,
    TOTAL,
    Histogram,
    NoisyProfile,
    ProfileNoise,
    _binned,
    contribution_histogram,
    release,
    value_histogram,
)
from engine.plan import FixedPoint, QueryPlan
from engine.planner import plan_query
from engine.policy import Policy, load_policy
from engine.sensitivity import profile_sensitivity
from engine.sql import parse
from tests.bounds_pools import HOURS_SCALE, with_auto_hours
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


def pool_policy(root: Path, pool: list[dict], privacy: str, auto_hours: bool = False) -> Policy:
    """The pool and its policy (``tests.test_sensitivity.write_pool``), ``hours`` fixed or ``"auto"``."""
    policies = write_pool(root, frame_of(pool), privacy)
    return load_policy((with_auto_hours(policies) if auto_hours else policies) / "shifts.toml")


def auto_columns(plan: QueryPlan) -> tuple[str, ...]:
    return plan.auto_bounds.columns if plan.auto_bounds else ()


def profile_of(
    backend: Backend, pool: list[dict], privacy: str, sql: str, auto_hours: bool = False
) -> tuple[QueryPlan, MemberProfile]:
    """Plan ``sql`` over ``pool``; the exact profile (what ``release`` bins and noises)."""
    with tempfile.TemporaryDirectory() as directory:
        plan = plan_query(parse(sql), pool_policy(Path(directory), pool, privacy, auto_hours))
        exact = backend.profile(plan)
    contribution = bounding.PROFILE_STATISTICS if plan.contribution.unit_column is not None else ()
    assert set(exact.members) == {*contribution, *map(value_statistic, auto_columns(plan))}
    return plan, exact


def binned(histograms: tuple[Histogram, ...], exact: MemberProfile) -> dict[str, list[int]]:
    """The exact counts per bin of each histogram, as ``release`` bins them."""
    return {histogram.name: _binned(histogram, exact.members.get(histogram.name, {})) for histogram in histograms}


def assert_one_member_moves_at_most_one_count_per_histogram(
    backend: Backend, privacy: str, larger: list[dict], smaller: list[dict], sql: str, auto_hours: bool = False
) -> None:
    plan, with_member = profile_of(backend, larger, privacy, sql, auto_hours)
    _, without = profile_of(backend, smaller, privacy, sql, auto_hours)
    # Exact: the unit has one value of each statistic (or none, when none of its rows is read or its values are
    # NULL): one count more at that value, and no other member's count moves.
    added: dict[str, int] = {}
    for statistic in with_member.members:
        a, b = with_member.members[statistic], without.members.get(statistic, {})
        moved = {value: a.get(value, 0) - b.get(value, 0) for value in {*a, *b} if a.get(value, 0) != b.get(value, 0)}
        assert set(moved.values()) <= {1} and len(moved) <= 1, (statistic, moved, sql)
        added[statistic] = len(moved)
    read = {added[statistic] for statistic in bounding.PROFILE_STATISTICS if statistic in added}
    assert len(read) <= 1, f"the contribution statistics disagree on the member: {sql}"
    if read:
        assert all(count <= min(read) for count in added.values()), "a value of a member none of whose rows is read"
    for accounting in Accounting:
        histograms = profiled_histograms(plan, accounting)
        if not histograms:  # row level, no "auto" column read: no profile is released
            assert plan.contribution.unit_column is None and plan.auto_bounds is None
            continue
        assert {h.name for h in histograms if h.sparse} == {value_statistic(c) for c in auto_columns(plan)}
        larger_bins, smaller_bins = binned(histograms, with_member), binned(histograms, without)
        vector = []
        for histogram in histograms:
            difference = [a - b for a, b in zip(larger_bins[histogram.name], smaller_bins[histogram.name], strict=True)]
            assert set(difference) <= {0, 1} and sum(difference) == added.get(histogram.name, 0), (histogram, sql)
            vector += difference
        claimed = profile_sensitivity(len(histograms))
        assert sum(abs(entry) for entry in vector) <= claimed.l1, (histograms, sql)
        assert sum(entry * entry for entry in vector) <= claimed.l2**2, (histograms, sql)


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
@given(added=added_members, sql=queries(), auto_hours=st.booleans())
def test_adding_a_member_moves_each_histogram_by_one_count(
    privacy: str, added: dict, sql: str, auto_hours: bool
) -> None:
    larger, smaller = with_and_without(added)
    assert_one_member_moves_at_most_one_count_per_histogram(PolarsBackend(), privacy, larger, smaller, sql, auto_hours)


@_SETTINGS
@given(pool=st.lists(stray_rows, min_size=1, max_size=40), sql=queries(), auto_hours=st.booleans(), data=st.data())
def test_removing_any_member_moves_each_histogram_by_one_count(
    pool: list[dict], sql: str, auto_hours: bool, data: st.DataObject
) -> None:
    member = data.draw(st.sampled_from(sorted({row["member_id"] for row in pool})), label="removed member")
    smaller = [row for row in pool if row["member_id"] != member]
    assert_one_member_moves_at_most_one_count_per_histogram(
        PolarsBackend(), AUTO_PER_GROUP, pool, smaller, sql, auto_hours
    )


HOURS_QUERIES = (
    "SELECT SUM(hours) FROM shifts",
    "SELECT region, AVG(hours), COUNT(*) FROM shifts WHERE age > 30 GROUP BY region",
    "SELECT member_flag, MEDIAN(hours) FROM shifts GROUP BY member_flag",
    "SELECT SUM(hours), VAR_POP(hours) FROM shifts WHERE hours IS NOT NULL",
)


@_SETTINGS
@given(pool=st.lists(stray_rows, max_size=30), row=stray_rows, sql=st.sampled_from(HOURS_QUERIES), first=st.booleans())
def test_adding_a_row_at_row_level_moves_each_value_histogram_by_one_count(
    pool: list[dict], row: dict, sql: str, first: bool
) -> None:
    """At row level every row's value is profiled: a row is the unit, one count of each value histogram."""
    larger = [row, *pool] if first else [*pool, row]
    assert_one_member_moves_at_most_one_count_per_histogram(
        PolarsBackend(), 'unit = "row"', larger, pool, sql, auto_hours=True
    )


@pytest.mark.spark
@_SPARK_SETTINGS
@given(added=added_members, sql=queries(), auto_hours=st.booleans())
def test_adding_a_member_moves_each_histogram_by_one_count_on_spark(
    spark_backend: Backend, added: dict, sql: str, auto_hours: bool
) -> None:
    larger, smaller = with_and_without(added)
    assert_one_member_moves_at_most_one_count_per_histogram(
        spark_backend, AUTO_PER_GROUP, larger, smaller, sql, auto_hours
    )


SPARK_QUERIES = (
    "SELECT COUNT(*) FROM shifts",
    "SELECT region, COUNT(*), SUM(hours) FROM shifts WHERE hours > 2 GROUP BY region",
    "SELECT city, region, COUNT(DISTINCT member_id) FROM shifts GROUP BY city, region",
    "SELECT z.zone, SUM(hours * z.weight) FROM shifts JOIN zones z USING (region) GROUP BY z.zone",
    "SELECT city, MEDIAN(hours), AVG(hours) FROM shifts GROUP BY city",
)


@pytest.mark.spark
@pytest.mark.parametrize("auto_hours", [False, True], ids=["fixed-hours", "auto-hours"])
@pytest.mark.parametrize("sql", SPARK_QUERIES)
def test_spark_profiles_exactly_what_polars_profiles(spark_backend: Backend, sql: str, auto_hours: bool) -> None:
    """Members with 1 to 8 rows of distinct values in units (odd and even sums of the two middles, NULLs, above 60)."""
    pool = [
        {
            "member_id": member,
            "region": region,
            "city": city,
            "hours": None
            if member == 5
            else (3 * member + 7 * copy + 1) / HOURS_SCALE + (70.0 if member == 8 else 0.0),
            "age": 30,
            "member_flag": True,
        }
        for member in range(1, 9)
        for region in ("north", "south", "east", "west", None)[: member % 5 + 1]
        for city in ("a", "b", None)[: member % 3 + 1]
        for copy in range(member)
    ]
    plan, on_spark = profile_of(spark_backend, pool, AUTO_PER_GROUP, sql, auto_hours)
    assert on_spark == profile_of(PolarsBackend(), pool, AUTO_PER_GROUP, sql, auto_hours)[1]
    assert len(on_spark.members) == 3 + len(auto_columns(plan))


def test_the_profile_counts_members_per_value_of_each_statistic(tmp_path: Path) -> None:
    """Three members: one row in one region; five rows over two regions (4 + 1); a NULL id's two rows in one."""
    rows = [(1, "north"), (2, "north"), (2, "north"), (2, "north"), (2, "north"), (2, "south"), (None, "east")]
    rows.append((None, "east"))
    pool = [{"member_id": m, "region": r, "city": "a", "hours": 1.0, "age": 30, "member_flag": True} for m, r in rows]
    grouped = "SELECT region, COUNT(*) FROM shifts GROUP BY region"
    policy = pool_policy(tmp_path, pool, AUTO_PER_GROUP)
    assert PolarsBackend().profile(plan_query(parse(grouped), policy)) == MemberProfile(
        {"rows": {1: 1, 5: 1, 2: 1}, "groups": {1: 2, 2: 1}, "fullest": {1: 1, 4: 1, 2: 1}}
    )
    ungrouped = plan_query(parse("SELECT COUNT(*) FROM shifts WHERE region <> 'east'"), policy)
    assert PolarsBackend().profile(ungrouped).members["rows"] == {1: 1, 5: 1}


def test_a_members_value_is_the_integer_middle_of_its_two_middle_values(tmp_path: Path) -> None:
    """Per member the median of its values in fixed-point units, rounded down; clamped into the range; NULLs skipped.

    At row level every row's value is counted.
    """
    units = {
        1: [1, 2],
        2: [5, 9, 7],
        3: [None, None],
        4: [100, 2, 7, 4],
        5: [3, None, 8],
        6: [61 * HOURS_SCALE, 70 * HOURS_SCALE],
    }
    pool = [
        {"member_id": member, "region": "north", "city": "a", "hours": None if unit is None else unit / HOURS_SCALE,
         "age": 30, "member_flag": True}
        for member, values in units.items()
        for unit in values
    ]  # fmt: skip
    sql = "SELECT SUM(hours) FROM shifts"
    plan = plan_query(parse(sql), pool_policy(tmp_path / "members", pool, AUTO_PER_GROUP, auto_hours=True))
    (value,) = {part.value for part in plan.parts if part.value is not None}
    assert value.scale == HOURS_SCALE and value.upper == 60 * HOURS_SCALE
    profile = PolarsBackend().profile(plan)
    assert profile.members[value_statistic("hours")] == {1: 1, 7: 1, 5: 2, 60 * HOURS_SCALE: 1}
    assert profile.members["rows"] == {2: 3, 3: 2, 4: 1}, "member 3, without a value, is still one member"
    rows = plan_query(parse(sql), pool_policy(tmp_path / "rows", pool, 'unit = "row"', auto_hours=True))
    every = [unit for values in units.values() for unit in values if unit is not None]
    expected: dict[int, int] = {}
    for unit in every:
        expected[min(unit, 60 * HOURS_SCALE)] = expected.get(min(unit, 60 * HOURS_SCALE), 0) + 1
    assert PolarsBackend().profile(rows).members == {value_statistic("hours"): expected}


def test_what_is_profiled_follows_the_modes_the_choice_may_make(tmp_path: Path) -> None:
    """Grouped per-group choices read all three statistics; ungrouped ones and the total mode, the rows only; each
    ``"auto"`` column a value histogram. Contribution bins reach the limit (``auto_limit``, or with fixed bounds
    ``DISCLOSED_SPAN`` times them), groups touched at most the groups public keys make, value bins the column's range."""
    ungrouped_sql = "SELECT COUNT(*) FROM shifts"
    grouped = {  # the query's groups, when its keys are public
        "SELECT region, COUNT(*) FROM shifts GROUP BY region": 4,
        "SELECT region, member_flag, COUNT(*) FROM shifts GROUP BY region, member_flag": 8,
        "SELECT city, COUNT(*) FROM shifts GROUP BY city": None,
    }
    for privacy, limit, spread in (
        (AUTO_PER_GROUP, 64, True),
        ('unit = "member_id"\nmax_rows_per_member = "auto"\nauto_limit = 100', 100, False),
        (member_level(2, 10), DISCLOSED_SPAN * 20, True),
        (member_level(1, 1), DISCLOSED_SPAN, True),
        (AUTO_PER_GROUP.replace("64", "6"), 6, True),
        ('unit = "member_id"\nmax_rows_per_member = 12', DISCLOSED_SPAN * 12, False),
    ):
        policy = pool_policy(tmp_path / f"{limit}-{spread}", [], privacy)
        ungrouped = plan_query(parse(ungrouped_sql), policy)
        for accounting in Accounting:
            assert profiled_histograms(ungrouped, accounting) == (contribution_histogram(TOTAL, limit),)
            for sql, keys in grouped.items():
                histograms = profiled_histograms(plan_query(parse(sql), policy), accounting)
                if not spread:
                    assert histograms == (contribution_histogram(TOTAL, limit),)
                    continue
                rows, groups, fullest = histograms
                assert rows == contribution_histogram(TOTAL, limit) and fullest == contribution_histogram(
                    "fullest", limit
                )
                if keys is None or keys > limit:
                    assert groups == contribution_histogram("groups", limit)
                else:  # no member touches more groups than there are: the last bin holds those in all of them
                    assert groups.edges == contribution_histogram("groups", keys).edges and groups.last == keys
                    assert groups.edges[-1] == keys and not groups.sparse
    policy = pool_policy(tmp_path / "hours", [], AUTO_PER_GROUP, auto_hours=True)
    plan = plan_query(parse("SELECT city, SUM(hours), MEDIAN(age) FROM shifts GROUP BY city"), policy)
    (value,) = {part.value for part in plan.parts if part.value is not None and part.value.column == "hours"}
    for accounting in Accounting:
        *contribution, values = profiled_histograms(plan, accounting)
        assert contribution == [contribution_histogram(name, 64) for name in (TOTAL, *SPREAD)]
        assert values == value_histogram(value) and values.sparse and not any(h.sparse for h in contribution)


# --- bins and sensitivity ------------------------------------------------------------------------------------


def assert_bins_cover(histogram: Histogram, values: list[int]) -> None:
    edges = histogram.edges
    assert list(edges) == sorted(set(edges))
    for value in values:
        index = histogram.bin_of(value)
        assert edges[index] <= value and (index == len(edges) - 1 or value < edges[index + 1]), (histogram, value)
        if index < len(edges) - 1:
            assert edges[index] <= histogram.representative(index) < edges[index + 1]


@pytest.mark.parametrize("limit", [1, 2, 5, 10, 64, 80, 1000, 1024, 2**20])
def test_the_contribution_bins_are_the_edges_below_the_limit_the_limit_and_one_bin_above(limit: int) -> None:
    assert EDGES[:12] == (1, 2, 3, 4, 6, 8, 11, 16, 23, 32, 45, 64) and EDGES[-1] == 2**20
    histogram = contribution_histogram("rows", limit)
    assert histogram.edges == tuple(edge for edge in EDGES if edge < limit) + (limit,) and not histogram.sparse
    assert histogram.representative(len(histogram.edges) - 1) == histogram.last == pytest.approx(limit * math.sqrt(2))
    assert_bins_cover(histogram, [*range(1, 200), 1023, 1024, 1025, 2**20 - 1, 2**20, 2**20 + 1, 2**40])


@pytest.mark.parametrize(("lower", "upper"), [(0, 60 * HOURS_SCALE), (0, 7), (3, 1000), (18 * 256, 80 * 256)])
def test_the_value_bins_split_the_range_from_its_top_down(lower: int, upper: int) -> None:
    histogram = value_histogram(FixedPoint("hours", lower, upper, HOURS_SCALE))
    edges = histogram.edges
    assert histogram.sparse and histogram.name == value_statistic("hours")
    assert edges[0] == lower and edges[-1] == upper and histogram.last == upper
    assert all(upper * 2**-20 <= edge or edge == lower + 1 for edge in edges[1:])
    assert_bins_cover(histogram, [lower, lower + 1, (lower + upper) // 2, upper - 1, upper])


@pytest.mark.parametrize("histograms", range(1, 10))
def test_profile_sensitivity_covers_one_count_in_each_histogram(histograms: int) -> None:
    claimed = profile_sensitivity(histograms)
    assert claimed.l1 == histograms
    assert claimed.l2 >= math.sqrt(histograms) and claimed.l2 - 1 < math.sqrt(histograms)


# --- the release -----------------------------------------------------------------------------------------------

EXACT = MemberProfile({"rows": {1: 5_000, 3: 4_000, 5: 3_000}, "groups": {1: 9_000, 2: 3_000}, "fullest": {2: 12_000}})
COST = Cost(Decimal("1.0"), Decimal(0))
CONTRIBUTION = tuple(contribution_histogram(name, 1024) for name in (TOTAL, *SPREAD))
HOURS = value_histogram(FixedPoint("hours", 0, 60 * HOURS_SCALE, HOURS_SCALE))


@pytest.mark.parametrize("mode", [PURE, ZCDP], ids=["pure", "zcdp"])
def test_no_noise_is_drawn_without_a_receipt_for_the_query_cost(mode: Mode, monkeypatch: pytest.MonkeyPatch) -> None:
    noise = ProfileNoise.fitted(mode, (*CONTRIBUTION, HOURS), 0.1)
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
    noise = ProfileNoise.fitted(PURE, CONTRIBUTION, 0.5)
    assert noise.scale == pytest.approx(3 / 0.5) and noise.loss <= 0.5
    released = release(noise, EXACT, ChargeReceipt("q", COST), COST)
    assert set(released.counts) == {TOTAL, *SPREAD} and released.histograms == {h.name: h for h in CONTRIBUTION}
    assert all(len(released.counts[h.name]) == len(h.edges) and min(released.counts[h.name]) >= 0 for h in CONTRIBUTION)
    assert released.counts[TOTAL][0] == pytest.approx(5_000, abs=150)
    assert released.counts["fullest"][1] == pytest.approx(12_000, abs=150)
    assert released.members() == pytest.approx(12_000, abs=300)
    one = {mode: ProfileNoise.fitted(mode, (HOURS,), 0.5).scale for mode in (PURE, ZCDP)}
    assert ProfileNoise.fitted(PURE, (*CONTRIBUTION, HOURS), 0.5).scale == pytest.approx(4 * one[PURE])
    assert ProfileNoise.fitted(ZCDP, (*CONTRIBUTION, HOURS), 0.5).scale == pytest.approx(2 * one[ZCDP])  # L2 = √4
    assert ProfileNoise.fitted(ZCDP, CONTRIBUTION, 0.5).scale == pytest.approx(2 * one[ZCDP])  # L2 = ⌈√3⌉


OFFSETS = (5, -3, 40, 0, 2, -100)
"""The noise drawn (instead of OpenDP's) in the tests of what the release does with it: cycled over the vector."""


def fixed_noise(mode: Mode, scale: float, values: list[int]) -> list[int]:
    return [value + OFFSETS[index % len(OFFSETS)] for index, value in enumerate(values)]


@pytest.mark.parametrize("mode", [PURE, ZCDP], ids=["pure", "zcdp"])
def test_dense_counts_fit_a_non_increasing_tail(mode: Mode) -> None:
    """Read as released, the noise in the many empty bins of busy members would show phantom rows. Below the fullest
    bin every count is lowered by the noise's mean size; above it the counts are fitted non-increasing (adjacent bins
    that break it pooled), each pooled run keeps its count less the mean size times √(its bins), shared among its bins
    as released, and nothing is negative."""
    noise = ProfileNoise.fitted(mode, CONTRIBUTION, 0.1)
    mean = SHRINKAGE * mode.mean_error(noise.scale)
    assert mean > 2
    big = 100 * mean
    # a real tail, decreasing bin by bin: each bin its own run, lowered by the mean size
    falling = [big, big / 2, big / 4, big / 8]
    assert noise.dense_counts(falling) == pytest.approx([count - mean for count in falling])
    # below the fullest bin: lowered and floored
    rising = [mean / 2, big / 2, big]
    assert noise.dense_counts(rising) == pytest.approx([0.0, big / 2 - mean, big - mean])
    # a cluster of busy members above empty bins stays in its bin, less the run's allowance
    cluster = [big, 0, 0, 0, big / 4]
    fitted = noise.dense_counts(cluster)
    assert fitted[:4] == pytest.approx([big - mean, 0, 0, 0]) and fitted[4] == pytest.approx(big / 4 - 2 * mean)
    # an empty tail of noise: never negative, and its phantoms are fewer than the noise released there
    tail = [math.floor(big), *(OFFSETS * 4)]
    fitted = noise.dense_counts(tail)
    assert min(fitted) >= 0.0
    assert math.fsum(fitted[1:]) <= max(math.fsum(OFFSETS * 4), 0) + max(OFFSETS)
    assert math.fsum(fitted[1:]) < math.fsum(max(offset, 0) for offset in OFFSETS * 4)


def test_release_reads_dense_histograms_through_the_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``release`` returns for a contribution histogram is ``dense_counts`` of its noisy window."""
    monkeypatch.setattr("engine.member_profile.add_vector_noise", fixed_noise)
    noise = ProfileNoise.fitted(PURE, CONTRIBUTION, 0.1)
    released = release(noise, EXACT, ChargeReceipt("q", COST), COST)
    start = 0
    for histogram in CONTRIBUTION:
        exact = _binned(histogram, EXACT.members[histogram.name])
        drawn = fixed_noise(PURE, noise.scale, [0] * (start + len(exact)))[start:]
        window = [count + offset for count, offset in zip(exact, drawn, strict=True)]
        assert released.counts[histogram.name] == pytest.approx(noise.dense_counts(window)), histogram.name
        start += len(exact)


@pytest.mark.parametrize("mode", [PURE, ZCDP], ids=["pure", "zcdp"])
def test_the_shrinkage_is_the_mean_size_of_the_noise_drawn(mode: Mode) -> None:
    """OpenDP's integer noise at the profile's scale: its mean absolute value is what dense counts are lowered by
    (``Mode.mean_error``)."""
    noise = ProfileNoise.fitted(mode, CONTRIBUTION, 0.1)
    drawn = add_vector_noise(mode, noise.scale, [0] * 20_000)
    mean = sum(abs(value) for value in drawn) / len(drawn)
    assert mean == pytest.approx(mode.mean_error(noise.scale), rel=0.05)


def test_a_value_histogram_is_zeroed_above_the_highest_occupied_bin(monkeypatch: pytest.MonkeyPatch) -> None:
    """Noise in the empty bins of a column's wide range would read as members with huge values: those bins above the
    highest occupied one read as 0; below it, counts as released (negative ones as 0), not shrunk."""
    monkeypatch.setattr(
        "engine.member_profile.add_vector_noise", lambda mode, scale, values: [value + 5 for value in values]
    )
    values = {HOURS.edges[3]: 2_000, HOURS.edges[10]: 1_000, HOURS.edges[10] + 1: 500}
    exact = MemberProfile({**EXACT.members, value_statistic("hours"): values})
    noise = ProfileNoise.fitted(PURE, (contribution_histogram(TOTAL, 1024), HOURS), 0.1)
    released = release(noise, exact, ChargeReceipt("q", COST), COST)
    counts = released.counts[HOURS.name]
    assert len(counts) == len(HOURS.edges)
    assert counts[:11] == (5.0,) * 3 + (2_005.0,) + (5.0,) * 6 + (1_505.0,)
    assert set(counts[11:]) == {0.0}
    shrunk = SHRINKAGE * PURE.mean_error(noise.scale)
    assert released.counts[TOTAL][0] == pytest.approx(5_005 - shrunk), "the rows histogram is dense"
    assert released.counts[TOTAL][-1] == 0.0, "5 on an empty dense bin is shrunk to 0, not zeroed above a top"


@pytest.mark.parametrize("histograms", [(HOURS,), (*CONTRIBUTION, HOURS)], ids=["one", "four"])
def test_the_highest_occupied_bin_needs_more_than_noise(histograms: tuple[Histogram, ...]) -> None:
    """The test is corrected for every bin of the profile (5% over all of them, two tests each)."""
    noise = ProfileNoise.fitted(PURE, histograms, 0.1)
    bins = sum(len(histogram.edges) for histogram in histograms)
    single = PURE.accuracy(noise.scale, DETECTION_ALPHA / (2 * bins))
    assert single > PURE.accuracy(noise.scale, DETECTION_ALPHA) + 1
    size = len(HOURS.edges)
    empty = [0] * size
    assert noise.highest_occupied(empty) == -1
    assert noise.highest_occupied([*empty[:-1], math.floor(single)]) == -1
    assert noise.highest_occupied([*empty[:-1], math.floor(single) + 1]) == size - 1
    thin = [0] * 30 + [math.ceil(single / 2)] * (size - 30)  # no one bin passes, several together do
    assert 30 <= noise.highest_occupied(thin) < size - 1
    assert noise.highest_occupied([*[0] * 30, 1, *[0] * (size - 31)]) == -1


def test_the_noisy_profile_reads_members_totals_excess_and_means() -> None:
    """Members per bin times each bin's typical value: a bin's middle, the last bin's ``last``."""
    rows = contribution_histogram(TOTAL, 8)  # edges 1, 2, 3, 4, 6, 8: bins [1], [2], [3], [4, 5], [6, 7], [8, …)
    counts = (10.0, 0.0, 2.0, 4.0, 0.0, 1.0)
    profile = NoisyProfile({TOTAL: counts}, {TOTAL: rows})
    assert profile.members() == 17.0
    last = 8 * math.sqrt(2)
    assert profile.total(TOTAL) == pytest.approx(10 + 6 + 4 * 4.5 + last)
    assert profile.excess(TOTAL, 3) == pytest.approx(4 * 1.5 + (last - 3))
    assert profile.excess(TOTAL, 100) == 0.0
    assert profile.mean(TOTAL) == pytest.approx(profile.total(TOTAL) / 17)
    assert profile.mean(TOTAL, cap=2) == pytest.approx((10 + 2 * 2 + 4 * 2 + 2) / 17)
    empty = NoisyProfile({TOTAL: (0.0,) * 6}, {TOTAL: rows})
    assert empty.members() == 1.0 and empty.total(TOTAL) == 1.0 and empty.mean(TOTAL) == 0.0


@pytest.mark.parametrize("mode", [PURE, ZCDP], ids=["pure", "zcdp"])
def test_the_released_counts_spread_as_the_noise_scale_says(mode: Mode) -> None:
    """400 releases of one occupied bin: the spread of its released count is the noise's (Laplace or Gaussian),
    centred on the count lowered by the shrinkage."""
    noise = ProfileNoise.fitted(mode, CONTRIBUTION, 0.1)
    exact = MemberProfile({"rows": {1: 100_000}, "groups": {1: 100_000}, "fullest": {1: 100_000}})
    released = [release(noise, exact, ChargeReceipt("q", COST), COST).counts[TOTAL][0] for _ in range(400)]
    mean = sum(released) / len(released)
    spread = math.sqrt(sum((count - mean) ** 2 for count in released) / (len(released) - 1))
    expected = noise.scale * (math.sqrt(2) if mode is PURE else 1.0)  # discrete Laplace: about √2 · scale
    assert 0.75 * expected < spread < 1.25 * expected
    shrunk = SHRINKAGE * mode.mean_error(noise.scale)
    assert abs(mean - (100_000 - shrunk)) < 5 * expected / math.sqrt(len(released))
