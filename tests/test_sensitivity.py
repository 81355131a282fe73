"""Property tests of the privacy claim: one unit moves the exact bounded aggregates by at most the planned sensitivity.

For random small pools and a random unit (a member, with ALL its rows, at
member level; one row at row level), the exact bounded aggregates a backend
(Polars; and Spark, with fewer examples) computes before any noise are
compared on the two neighbouring pools.
For every measured part, the difference vector over the public groups must
satisfy ``‖Δ‖₁ ≤ l1``, ``‖Δ‖₂ ≤ l2`` (what the noise is calibrated to) and
change at most ``groups_touched_per_unit`` groups (the L0 bound both rely on),
and no group by more than the claimed ``per_group`` (L∞). Policies in total
mode (``max_rows_per_member``) run alike: there L1 and L2 are the total cap's worth.
Both neighbours run with the same seed: the per-member random choice of groups
is a hash of member, group and seed, so the other members keep their choices.
"""

from __future__ import annotations

import datetime as dt
import math
import tempfile
from collections import Counter
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from engine.backends.base import Backend
from engine.backends.polars import PolarsBackend
from engine.plan import PartKind, QueryPlan
from engine.planner import plan_query
from engine.policy import load_policy
from engine.sql import parse
from tests.conftest import ROW_LEVEL, write_dataset

SEED = 20240611
REGIONS = ("north", "south", "east", "west")
SCHEMA = {
    "member_id": pl.Int64,
    "region": pl.String,
    "city": pl.String,
    "hours": pl.Float64,
    "age": pl.Int64,
    "member_flag": pl.Boolean,
    "day": pl.Date,
}
DAY_COLUMN = '\n[columns.day]\ntype = "date"\nbounds = ["2024-01-01", "2024-12-31"]\n'
"""A date column; the strategies also draw days outside its declared range."""
ZONES = '\n[public_tables.zones]\nsource = "../data/zones.csv"\nkey = "region"\n'
"""A public lookup table: two regions share a zone, one region has none."""
ZONES_TABLE = pl.DataFrame(
    {"region": ["north", "south", "east"], "zone": ["NS", "NS", "E"], "weight": [0.5, 2.0, None]}
)
JOINS = (
    "shifts JOIN zones z USING (region)",
    "shifts s LEFT JOIN zones z ON s.region = z.region",
)
JOIN_AGGREGATES = ("SUM(hours * z.weight)", "COUNT(z.zone)", "AVG(COALESCE(weight, 1) + age)", "SUM(age / z.weight)")
JOIN_GROUPINGS = (("z.zone",), ("zone", "member_flag"))

AGGREGATES = (
    "COUNT(*)",
    "COUNT(hours)",
    "COUNT(age)",
    "SUM(hours)",
    "SUM(age)",
    "AVG(hours)",
    "AVG(age)",
    "COUNT(DISTINCT member_id)",
    "SUM(CASE WHEN age > 40 THEN hours ELSE 0 END)",
    "COUNT(CASE WHEN hours > 8 THEN 1 END)",
    "AVG(hours * 1.5 + 2)",
    "SUM(LEAST(GREATEST(hours - age, -10), 10))",
    "SUM(COALESCE(hours, 30) / 4)",
    "VAR_POP(hours)",
    "MEDIAN(hours)",
    "SUM(ROUND(hours / 7, 1) + CAST(age * 0.5 AS INT))",
    "QUANTILE(age - hours, 0.9)",
    "STDDEV(age - hours)",
    "AVG(EXTRACT(YEAR FROM day))",
    "SUM(hours / age)",
    "SUM(MONTH(day) * hours)",
    "COUNT(day)",
)
MEMBER_ONLY = {"COUNT(DISTINCT member_id)": "COUNT(member_id)"}
"""Aggregates only a member-level dataset answers, and their row-level stand-ins."""
FILTERS = (
    None,
    "hours > 10",
    "hours IS NULL",
    "hours IS NOT NULL AND age >= 30",
    "age BETWEEN 20 AND 50",
    "NOT (hours < 5) OR age > 60",
    "member_flag",
    "region IN ('north', 'east')",
    "city LIKE 'a%'",
    "hours * 2 > age",
    "member_id IN (1, 2, 5)",
    "day >= '2024-06-01'",
    "EXTRACT(DOW FROM day) IN (0, 6)",
)
GROUPINGS = (
    (),
    ("region",),
    ("member_flag",),
    ("region", "member_flag"),
    ("CASE WHEN age < 40 THEN 'younger' WHEN hours > 5 THEN 'busy' ELSE 'other' END", "region"),
    ("FLOOR(age / 20) * 20",),
    ("CEIL(hours / 15) - 1", "member_flag"),
    ("DATE_TRUNC('month', day)",),
    ("EXTRACT(QUARTER FROM day)", "region"),
)


def member_level(max_groups: int, max_rows_per_group: int) -> str:
    return f'unit = "member_id"\nmax_groups = {max_groups}\nmax_rows_per_group = {max_rows_per_group}'


def member_total(max_rows_per_member: int) -> str:
    """A member-level policy in total mode: at most ``max_rows_per_member`` rows per member over all groups."""
    return f'unit = "member_id"\nmax_rows_per_member = {max_rows_per_member}'


TOTAL_PRIVACY = [pytest.param(member_total(n), id=f"member-total{n}") for n in (1, 3, 10)] + [
    pytest.param(member_level(2, 3) + "\nmax_rows_per_member = 4", id="member-g2-r3-total4")
]
"""Total mode, and a policy allowing both modes (the planner picks one per query)."""
PRIVACY = (
    [pytest.param(member_level(g, r), id=f"member-g{g}-r{r}") for g in (1, 2) for r in (1, 3, 10)]
    + TOTAL_PRIVACY
    + [pytest.param(ROW_LEVEL, id="row")]
)

# --- strategies ------------------------------------------------------------------

hours_values = st.one_of(
    st.none(),
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 0.0, 60.0, 1e300, -1e300, 1e-300]),
    st.floats(min_value=-10.0, max_value=80.0),
    st.floats(allow_nan=True, allow_infinity=True),
)
age_values = st.one_of(
    st.none(),
    st.integers(min_value=18, max_value=80),
    st.integers(min_value=-1_000, max_value=1_000),
    st.sampled_from([-(2**63), 2**63 - 1, -(2**40), 2**40, 0]),
)


def row_strategy(regions: st.SearchStrategy) -> st.SearchStrategy:
    return st.fixed_dictionaries(
        {
            "member_id": st.integers(min_value=1, max_value=8),
            "region": regions,
            "city": st.sampled_from(["a", "b", "ab", None]),
            "hours": hours_values,
            "age": age_values,
            "member_flag": st.one_of(st.booleans(), st.none()),
            "day": st.one_of(st.none(), st.dates(min_value=dt.date(2023, 10, 1), max_value=dt.date(2025, 3, 31))),
        }
    )


rows = row_strategy(st.sampled_from(REGIONS))
"""Rows whose region is always a public key."""
stray_rows = row_strategy(st.sampled_from(REGIONS * 4 + (None, "elsewhere")))
"""Mostly public keys, sometimes a NULL or non-public region (dropped by grouped queries, counted by others)."""
pools = st.lists(stray_rows, min_size=1, max_size=40)


@st.composite
def queries(draw: st.DrawFn) -> str:
    aggregates = draw(st.lists(st.sampled_from(AGGREGATES), min_size=1, max_size=4, unique=True))
    where = draw(st.sampled_from(FILTERS))
    keys = draw(st.sampled_from(GROUPINGS))
    source = draw(st.sampled_from(("shifts", *JOINS)))
    if source != "shifts":
        aggregates += draw(st.lists(st.sampled_from(JOIN_AGGREGATES), max_size=2, unique=True))
        keys = draw(st.sampled_from((keys, *JOIN_GROUPINGS)))
    select = ", ".join([*keys, *aggregates])
    sql = f"SELECT {select} FROM {source}"
    if where:
        sql += f" WHERE {where}"
    if keys:
        sql += f" GROUP BY {', '.join(keys)}"
    return sql


# --- helpers ---------------------------------------------------------------------


def write_pool(root: Path, frame: pl.DataFrame, privacy: str) -> Path:
    """The pool, its policy (with a date column and the public table ``zones``) and that table."""
    policies = write_dataset(root, frame, privacy=privacy, extra=DAY_COLUMN + ZONES)
    ZONES_TABLE.write_csv(root / "data" / "zones.csv")
    return policies


def frame_of(pool: list[dict[str, object]]) -> pl.DataFrame:
    return pl.DataFrame(pool, schema=SCHEMA)


def exact_parts(
    root: Path, pool: list[dict[str, object]], privacy: str, sql: str, backend: Backend | None = None
) -> tuple[QueryPlan, dict]:
    """Plan ``sql`` on a fresh pool under ``root``; return the plan and ``{key: [part values]}``."""
    return exact_parts_of(write_pool(root, frame_of(pool), privacy), sql, backend)


def exact_parts_of(policies: Path, sql: str, backend: Backend | None = None) -> tuple[QueryPlan, dict]:
    """Plan ``sql`` on the pool of ``policies/shifts.toml``; return the plan and ``{key: [part values]}``."""
    plan = plan_query(parse(sql), load_policy(policies / "shifts.toml"))
    exact = (backend or PolarsBackend()).execute(plan, seed=SEED)
    assert len(exact.parts) == len(plan.parts)
    assert all(len(values) == len(exact.keys) for values in exact.parts)
    assert len(set(exact.keys)) == len(exact.keys), "a group appears twice"
    by_key = {key: [values[i] for values in exact.parts] for i, key in enumerate(exact.keys)}
    return plan, by_key


def _multiset_distance(larger: list[int], smaller: list[int]) -> int:
    """Symmetric distance between two lists of values (rows added plus rows removed)."""
    a, b = Counter(larger), Counter(smaller)
    return sum(((a - b) + (b - a)).values())


def assert_neighbours_within_sensitivity(
    privacy: str, sql: str, larger: list[dict], smaller: list[dict], backend: Backend | None = None
) -> None:
    backend = backend or PolarsBackend()
    if privacy == ROW_LEVEL:
        for member_only, stand_in in MEMBER_ONLY.items():
            sql = sql.replace(member_only, stand_in)
    with tempfile.TemporaryDirectory() as directory:
        plan, with_unit = exact_parts(Path(directory) / "with", larger, privacy, sql, backend)
        plan_without, without_unit = exact_parts(Path(directory) / "without", smaller, privacy, sql, backend)
    assert_moved_within_sensitivity(privacy, sql, (plan, with_unit), (plan_without, without_unit))


def assert_moved_within_sensitivity(
    privacy: str, sql: str, larger: tuple[QueryPlan, dict], smaller: tuple[QueryPlan, dict]
) -> None:
    """The exact parts (``exact_parts``) of two neighbouring pools differ by at most the plan's claimed sensitivity."""
    (plan, with_unit), (plan_without, without_unit) = larger, smaller
    assert plan_without.parts == plan.parts
    assert set(with_unit) == set(without_unit), "both neighbours must release the same public keys"
    expected_groups = math.prod(len(key.values) for key in plan.group_keys)
    assert len(with_unit) == expected_groups
    changed_groups: set[object] = set()
    for index, part in enumerate(plan.parts):
        claimed = plan.sensitivity(part)
        if part.kind is PartKind.QUANTILE:
            # A quantile's input per group is a list of bounded values: one unit adds at most per_group of them,
            # and at most l1 over all groups.
            moved = {key: _multiset_distance(with_unit[key][index], without_unit[key][index]) for key in with_unit}
            assert max(moved.values(), default=0) <= claimed.per_group, (sql, privacy, moved)
            assert sum(moved.values()) <= claimed.l1, (sql, privacy, moved)
            changed_groups |= {key for key, distance in moved.items() if distance}
            continue
        diff = [with_unit[key][index] - without_unit[key][index] for key in with_unit]
        changed_groups |= {key for key, d in zip(with_unit, diff, strict=True) if d != 0}
        l1 = sum(abs(d) for d in diff)
        squared = sum(d * d for d in diff)
        context = f"{part.label} in {sql!r} under {privacy!r}: diff {diff}, claimed {claimed}"
        assert l1 <= claimed.l1, f"L1 {l1} above the claimed sensitivity: {context}"
        assert squared <= claimed.l2 * claimed.l2, f"L2 {math.sqrt(squared)} above the claimed sensitivity: {context}"
        assert max(map(abs, diff), default=0) <= claimed.per_group, f"L∞ above the claimed sensitivity: {context}"
        if part.kind in (PartKind.COUNT_ROWS, PartKind.COUNT_VALUES):
            # Adding a unit never lowers a count.
            assert all(d >= 0 for d in diff), context
    assert len(changed_groups) <= plan.groups_touched_per_unit, (
        f"one unit changed {len(changed_groups)} groups, the plan claims at most "
        f"{plan.groups_touched_per_unit}: {sql!r} under {privacy!r}"
    )


# --- the property ------------------------------------------------------------------

_SETTINGS = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


_SPARK_SETTINGS = settings(
    max_examples=4,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # no shrinking: every step costs Spark jobs
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
"""The same properties on Spark: few examples (each costs two Spark jobs); tests/test_spark.py checks equality."""
SPARK_PRIVACY = [
    pytest.param(member_level(2, 3), id="member-g2-r3"),
    pytest.param(member_total(3), id="member-total3"),
    pytest.param(ROW_LEVEL, id="row"),
]


@pytest.mark.parametrize("privacy", PRIVACY)
@_SETTINGS
@given(pool=pools, sql=queries(), data=st.data())
def test_one_unit_moves_bounded_aggregates_by_at_most_the_claimed_sensitivity(
    privacy: str, pool: list[dict], sql: str, data: st.DataObject
) -> None:
    one_unit_moves_aggregates_within_sensitivity(PolarsBackend(), privacy, pool, sql, data)


@pytest.mark.spark
@pytest.mark.parametrize("privacy", SPARK_PRIVACY)
@_SPARK_SETTINGS
@given(pool=pools, sql=queries(), data=st.data())
def test_one_unit_moves_bounded_aggregates_by_at_most_the_claimed_sensitivity_on_spark(
    spark_backend: Backend, privacy: str, pool: list[dict], sql: str, data: st.DataObject
) -> None:
    one_unit_moves_aggregates_within_sensitivity(spark_backend, privacy, pool, sql, data)


def one_unit_moves_aggregates_within_sensitivity(
    backend: Backend, privacy: str, pool: list[dict], sql: str, data: st.DataObject
) -> None:
    """Remove one unit (a row, or a member with all its rows) from ``pool``: the aggregates move within bounds."""
    if privacy == ROW_LEVEL:
        removed = data.draw(st.integers(min_value=0, max_value=len(pool) - 1), label="removed row")
        smaller = pool[:removed] + pool[removed + 1 :]
    else:
        members = sorted({row["member_id"] for row in pool})
        member = data.draw(st.sampled_from(members), label="removed member")
        smaller = [row for row in pool if row["member_id"] != member]
    assert_neighbours_within_sensitivity(privacy, sql, pool, smaller, backend)


heavy_members = st.fixed_dictionaries(
    {
        "others": st.lists(stray_rows, max_size=25),
        "member_rows": st.lists(stray_rows, min_size=1, max_size=30),
        "member": st.integers(min_value=1, max_value=9),
    }
)
"""A member with many rows over many groups, and a pool of others (maybe empty) to add them to."""


def assert_heavy_member_bounded(backend: Backend, privacy: str, heavy: dict, sql: str) -> None:
    others = [row for row in heavy["others"] if row["member_id"] != heavy["member"]]
    added = [{**row, "member_id": heavy["member"]} for row in heavy["member_rows"]]
    assert_neighbours_within_sensitivity(privacy, sql, others + added, others, backend)


@pytest.mark.parametrize(
    "privacy",
    [pytest.param(member_level(g, r), id=f"member-g{g}-r{r}") for g in (1, 2) for r in (1, 3, 10)] + TOTAL_PRIVACY,
)
@_SETTINGS
@given(heavy=heavy_members, sql=queries())
def test_adding_a_heavy_member_spread_over_groups_is_bounded(privacy: str, heavy: dict, sql: str) -> None:
    assert_heavy_member_bounded(PolarsBackend(), privacy, heavy, sql)


@pytest.mark.spark
@_SPARK_SETTINGS
@given(heavy=heavy_members, sql=queries())
def test_adding_a_heavy_member_spread_over_groups_is_bounded_on_spark(
    spark_backend: Backend, heavy: dict, sql: str
) -> None:
    assert_heavy_member_bounded(spark_backend, member_level(1, 3), heavy, sql)
    assert_heavy_member_bounded(spark_backend, member_total(4), heavy, sql)


# --- contribution bounds, directly ------------------------------------------------


def _execute(root: Path, frame: pl.DataFrame, privacy: str, sql: str) -> tuple[QueryPlan, dict]:
    policies = write_pool(root, frame, privacy)
    plan = plan_query(parse(sql), load_policy(policies / "shifts.toml"))
    exact = PolarsBackend().execute(plan, seed=SEED)
    return plan, {key: [values[i] for values in exact.parts] for i, key in enumerate(exact.keys)}


@pytest.mark.parametrize("max_groups", [1, 2, 3])
@pytest.mark.parametrize("max_rows_per_group", [1, 3, 10])
@pytest.mark.parametrize("seed", range(5))
def test_one_member_over_every_region_is_capped(
    tmp_path: Path, max_groups: int, max_rows_per_group: int, seed: int
) -> None:
    assert_one_member_over_every_region_is_capped(PolarsBackend(), tmp_path, max_groups, max_rows_per_group, seed)


@pytest.mark.spark
@pytest.mark.parametrize("max_groups", [1, 3])
def test_one_member_over_every_region_is_capped_on_spark(
    spark_backend: Backend, tmp_path: Path, max_groups: int
) -> None:
    assert_one_member_over_every_region_is_capped(spark_backend, tmp_path, max_groups, 3, seed=0)


def assert_one_member_over_every_region_is_capped(
    backend: Backend, tmp_path: Path, max_groups: int, max_rows_per_group: int, seed: int
) -> None:
    """One member with 25 rows in each of the 4 regions: at most max_groups regions, max_rows_per_group rows each."""
    frame = frame_of(
        [
            {"member_id": 7, "region": region, "city": "a", "hours": 100.0, "age": 99, "member_flag": True}
            for region in REGIONS
            for _ in range(25)
        ]
    )
    sql = "SELECT region, COUNT(*), COUNT(hours), SUM(hours), SUM(age), AVG(hours) FROM shifts GROUP BY region"
    policies = write_dataset(tmp_path, frame, privacy=member_level(max_groups, max_rows_per_group))
    plan = plan_query(parse(sql), load_policy(policies / "shifts.toml"))
    exact = backend.execute(plan, seed=seed)
    counts = exact.parts[0]
    touched = [count for count in counts if count]
    assert len(touched) == max_groups, "the member keeps exactly max_groups of its regions"
    assert all(count == max_rows_per_group for count in touched)
    assert sum(counts) == max_groups * max_rows_per_group
    assert exact.parts[1] == counts  # COUNT(hours): no NULLs
    scale = plan.parts[2].value.scale
    # hours = 100 is clamped to 60, age = 99 to 80: each kept row adds the upper bound.
    assert exact.parts[2] == [count * 60 * scale for count in counts]
    assert exact.parts[3] == [count * 80 for count in counts]
    assert exact.parts[4] == [count * 30 * scale for count in counts]  # centred on 30


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pool=st.lists(rows, min_size=1, max_size=60),
    max_groups=st.integers(min_value=1, max_value=4),
    max_rows_per_group=st.sampled_from([1, 3, 10]),
)
def test_bounded_member_counts_respect_the_contribution_limits(
    pool: list[dict], max_groups: int, max_rows_per_group: int
) -> None:
    """Per group, COUNT(*) ≤ max_rows_per_group × its members; overall ≤ max_groups × max_rows_per_group × members."""
    sql = "SELECT region, COUNT(*), COUNT(hours) FROM shifts GROUP BY region"
    with tempfile.TemporaryDirectory() as directory:
        _, by_key = _execute(Path(directory), frame_of(pool), member_level(max_groups, max_rows_per_group), sql)
    members_in = {region: {row["member_id"] for row in pool if row["region"] == region} for region in REGIONS}
    rows_in = {region: sum(1 for row in pool if row["region"] == region) for region in REGIONS}
    for (region,), (count, count_hours) in by_key.items():
        assert count <= max_rows_per_group * len(members_in[region])
        assert count <= rows_in[region]
        assert count_hours <= count
    members = {row["member_id"] for row in pool}
    assert sum(count for count, _ in by_key.values()) <= max_groups * max_rows_per_group * len(members)
    # Every member keeps min(max_groups, its regions) regions and min(cap, its rows) rows in each:
    # a member with rows everywhere adds exactly that much, so the total is at least what
    # members confined to a single region keep.
    single_region_members = [m for m in members if len({r["region"] for r in pool if r["member_id"] == m}) == 1]
    floor = sum(min(max_rows_per_group, sum(1 for r in pool if r["member_id"] == m)) for m in single_region_members)
    assert sum(count for count, _ in by_key.values()) >= floor


def test_row_level_counts_every_row(tmp_path: Path) -> None:
    """At row level nothing is capped: the exact count is the number of rows in the public keys."""
    pool = [
        {"member_id": 1, "region": region, "city": "a", "hours": None, "age": 30, "member_flag": False}
        for region in REGIONS
        for _ in range(12)
    ]
    sql = "SELECT region, COUNT(*), COUNT(hours) FROM shifts GROUP BY region"
    _, by_key = _execute(tmp_path, frame_of(pool), ROW_LEVEL, sql)
    assert by_key == {(region,): [12, 0] for region in REGIONS}
