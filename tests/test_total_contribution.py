"""Total mode: each member keeps at most ``max_rows_per_member`` = N rows over all its groups.

A member with T > N rows is sampled systematically across its groups
(``engine.backends.bounding._with_total_cap``): it keeps exactly N rows, no
group more than it has, each group ``r·N/T`` of its ``r`` rows in
expectation (so ⌊r·N/T⌋ or ⌈r·N/T⌉ of them), whatever order the files store
the rows in. The neighbouring-pool properties of the sensitivity claims run
in ``tests/test_sensitivity.py`` (total-mode policies among the others) and
``tests/test_private_keys.py``; here are the sampling itself, the planner's
choice between the modes, the overflow limits, and what the mode is for: a
member spread over many groups loses far fewer rows than under
``max_groups × max_rows_per_group`` = N.
"""

from __future__ import annotations

import math
import random
import tempfile
from dataclasses import astuple
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from engine import Engine
from engine.backends.base import Backend
from engine.backends.polars import PolarsBackend
from engine.errors import PolicyViolation
from engine.plan import PartKind, QueryPlan
from engine.planner import plan_query
from engine.policy import load_policy
from engine.sensitivity import MAX_ROWS, MAX_ROWS_PER_MEMBER, SUM_LIMIT
from engine.sql import parse
from tests.conftest import write_dataset
from tests.golden.explain import golden_engine
from tests.test_private_keys import assert_private_key_neighbours
from tests.test_sensitivity import (
    REGIONS,
    age_values,
    exact_parts_of,
    frame_of,
    hours_values,
    member_level,
    member_total,
    queries,
    rows,
    write_pool,
)

GROUPS = [(region, flag) for region in REGIONS for flag in (False, True)]
"""The eight public groups of ``GROUP BY region, member_flag``, in the order the engine lays them out."""
BY_GROUP = "SELECT region, member_flag, COUNT(*), COUNT(hours), SUM(age) FROM shifts GROUP BY region, member_flag"
_FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def one_member(layout: list[int], hours: float | None = 5.0) -> pl.DataFrame:
    """One member with ``layout[i]`` rows in the i-th of ``GROUPS``."""
    return frame_of(
        [
            {"member_id": 7, "region": region, "city": "a", "hours": hours, "age": 30, "member_flag": flag}
            for (region, flag), count in zip(GROUPS, layout, strict=False)
            for _ in range(count)
        ]
    )


def kept_per_group(policies: Path, seed: int, sql: str = BY_GROUP) -> list[int]:
    """The exact bounded COUNT(*) of each of ``GROUPS`` (the first part after the keys)."""
    plan = plan_query(parse(sql), load_policy(policies / "shifts.toml"))
    return PolarsBackend().execute(plan, seed=seed).parts[0]


# --- systematic sampling -----------------------------------------------------------


@_FAST
@example(layout=[1, 2, 3, 5, 8, 13, 0, 20], cap=10, seeds=[0, 1])
@example(layout=[40, 0, 0, 0, 0, 0, 0, 1], cap=1, seeds=[3])
@given(
    layout=st.lists(st.integers(0, 15), min_size=8, max_size=8).filter(any),
    cap=st.integers(1, 40),
    seeds=st.lists(st.integers(0, 2**63 - 1), min_size=1, max_size=3),
)
def test_a_member_keeps_exactly_min_of_its_rows_and_the_cap_and_a_share_of_each_group(
    layout: list[int], cap: int, seeds: list[int]
) -> None:
    """Σ kept = min(T, N); 0 ≤ kept ≤ r per group; over the cap, kept is ⌊r·N/T⌋ or ⌈r·N/T⌉."""
    total = sum(layout)
    with tempfile.TemporaryDirectory() as directory:
        policies = write_dataset(Path(directory), one_member(layout), privacy=member_total(cap))
        for seed in seeds:
            kept = kept_per_group(policies, seed)
            assert sum(kept) == min(total, cap)
            for rows_there, kept_there in zip(layout, kept, strict=True):
                assert 0 <= kept_there <= rows_there
                if total <= cap:
                    assert kept_there == rows_there
                else:
                    share = rows_there * cap / total
                    assert math.floor(share) <= kept_there <= math.ceil(share)


@pytest.mark.parametrize(
    ("layout", "cap"),
    [([1, 2, 3, 5, 8, 13, 0, 20], 10), ([30, 1, 1, 1, 0, 0, 2, 5], 7), ([3, 3, 3, 3, 3, 3, 3, 3], 5)],
)
def test_systematic_sampling_is_unbiased_across_groups(tmp_path: Path, layout: list[int], cap: int) -> None:
    """Over 400 fixed seeds each group keeps r·N/T rows on average, within 0.1 (sd at most 0.5/√400 = 0.025)."""
    policies = write_dataset(tmp_path, one_member(layout), privacy=member_total(cap))
    draws = np.array([kept_per_group(policies, seed) for seed in range(400)])
    expected = np.array(layout) * cap / sum(layout)
    assert np.all(draws.sum(axis=1) == cap)
    assert np.max(np.abs(draws.mean(axis=0) - expected)) < 0.1, (draws.mean(axis=0), expected)


def test_private_keys_are_sampled_alike_and_a_member_adds_only_keys_it_keeps_rows_of(tmp_path: Path) -> None:
    """One member over 40 cities, N = 3: 3 rows kept, in at most 3 cities; an empty city is not even observed."""
    frame = frame_of(
        [
            {"member_id": 7, "region": "north", "city": f"c{i}", "hours": 1.0, "age": 30, "member_flag": True}
            for i in range(40)
            for _ in range(i % 3 + 1)
        ]
    )
    policies = write_dataset(tmp_path, frame, privacy=member_total(3))
    sql = "SELECT city, COUNT(*), COUNT(DISTINCT member_id) FROM shifts GROUP BY city"
    plan = plan_query(parse(sql), load_policy(policies / "shifts.toml"))
    assert plan.threshold_part is not None
    assert plan.sensitivity(plan.parts[plan.threshold_part]).groups == 3
    for seed in range(20):
        exact = PolarsBackend().execute(plan, seed=seed)
        assert len(exact.keys) <= 3, "a key the member keeps no row of would count against the threshold's L0"
        assert sum(exact.parts[0]) == 3
        assert all(count >= 1 for count in exact.parts[0])
        assert exact.parts[plan.threshold_part] == [1] * len(exact.keys)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pool=st.lists(rows, min_size=1, max_size=60), cap=st.sampled_from([1, 2, 3, 5, 10]))
def test_every_member_keeps_min_of_its_rows_and_the_cap(pool: list[dict], cap: int) -> None:
    """Over many members: the kept rows add up to Σ min(T_m, N); NULL-valued rows are never counted as more."""
    with tempfile.TemporaryDirectory() as directory:
        policies = write_pool(Path(directory), frame_of(pool), member_total(cap))
        plan, by_key = exact_parts_of(policies, BY_GROUP)
    grouped = [row for row in pool if row["member_flag"] is not None]  # NULL is no public key of member_flag
    members = {row["member_id"] for row in grouped}
    total_rows = {m: sum(1 for row in grouped if row["member_id"] == m) for m in members}
    assert sum(values[0] for values in by_key.values()) == sum(min(t, cap) for t in total_rows.values())
    for (region, flag), (count, count_hours, _) in by_key.items():
        assert count <= sum(1 for row in grouped if (row["region"], row["member_flag"]) == (region, flag))
        assert count_hours <= count
    assert plan.contribution.total and plan.contribution.max_rows_per_member == cap


many_cities = st.fixed_dictionaries(
    {
        "member_id": st.integers(1, 6),
        "region": st.sampled_from(REGIONS),
        "city": st.sampled_from([f"c{i}" for i in range(12)] + [None]),
        "hours": hours_values,
        "age": age_values,
        "member_flag": st.one_of(st.booleans(), st.none()),
        "day": st.none(),
    }
)
"""Rows over a dozen private keys (cities), with hostile values."""
PRIVATE_QUERIES = (
    "SELECT city, COUNT(*), SUM(hours), AVG(age), COUNT(DISTINCT member_id) FROM shifts GROUP BY city",
    "SELECT city, region, COUNT(hours), MEDIAN(age) FROM shifts GROUP BY city, region",
    "SELECT city, member_flag, VAR_POP(hours), SUM(age) FROM shifts WHERE hours > 3 GROUP BY city, member_flag",
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    pool=st.lists(many_cities, min_size=1, max_size=50),
    added=st.lists(many_cities, min_size=1, max_size=40),
    cap=st.sampled_from([1, 2, 5, 10]),
    sql=st.sampled_from(PRIVATE_QUERIES),
)
def test_a_member_over_many_private_keys_moves_them_within_the_total_mode_claims(
    pool: list[dict], added: list[dict], cap: int, sql: str
) -> None:
    """A member with any rows over up to a dozen cities is added: keys, counts, sums and samples within the claims."""
    add_a_member_over_private_keys(PolarsBackend(), pool, added, cap, sql)


@pytest.mark.spark
@settings(
    max_examples=4,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # no shrinking: every step costs Spark jobs
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    pool=st.lists(many_cities, min_size=1, max_size=30),
    added=st.lists(many_cities, min_size=1, max_size=30),
    cap=st.sampled_from([1, 3]),
    sql=st.sampled_from(PRIVATE_QUERIES),
)
def test_a_member_over_many_private_keys_moves_them_within_the_total_mode_claims_on_spark(
    spark_backend: Backend, pool: list[dict], added: list[dict], cap: int, sql: str
) -> None:
    add_a_member_over_private_keys(spark_backend, pool, added, cap, sql)


def add_a_member_over_private_keys(backend: Backend, pool: list[dict], added: list[dict], cap: int, sql: str) -> None:
    others = [row for row in pool if row["member_id"] != 0]
    member = [{**row, "member_id": 0} for row in added]
    assert_private_key_neighbours(member_total(cap), sql, others + member, others, backend)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(pool=st.lists(rows, min_size=1, max_size=40), sql=queries(), order=st.randoms(use_true_random=False))
def test_the_exact_aggregates_do_not_depend_on_the_order_of_rows_in_the_file(
    pool: list[dict], sql: str, order: random.Random
) -> None:
    shuffled = list(pool)
    order.shuffle(shuffled)
    answers = []
    with tempfile.TemporaryDirectory() as directory:
        for name, rows_in_order in (("stored", pool), ("shuffled", shuffled)):
            policies = write_pool(Path(directory) / name, frame_of(rows_in_order), member_total(4))
            _, by_key = exact_parts_of(policies, sql)
            answers.append({key: [_comparable(v) for v in values] for key, values in by_key.items()})
    assert answers[0] == answers[1], sql


def _comparable(value: object) -> object:
    """A quantile's sample as a sorted list (a multiset); a count or sum as it is."""
    return sorted(value.tolist()) if isinstance(value, np.ndarray) else value


def test_a_quantile_gets_at_most_n_of_a_members_values_over_all_groups(tmp_path: Path) -> None:
    frame = frame_of(
        [
            {"member_id": 7, "region": region, "city": "a", "hours": float(i), "age": 30, "member_flag": True}
            for region in REGIONS
            for i in range(25)
        ]
    )
    policies = write_dataset(tmp_path, frame, privacy=member_total(7))
    plan = plan_query(
        parse("SELECT region, MEDIAN(hours) FROM shifts GROUP BY region"), load_policy(policies / "shifts.toml")
    )
    assert plan.contribution.total
    assert (plan.sensitivity(plan.parts[0]).per_group, plan.sensitivity(plan.parts[0]).groups) == (7, 4)
    for seed in range(10):
        samples = PolarsBackend().execute(plan, seed=seed).parts[0]
        assert sum(len(sample) for sample in samples) == 7


# --- the mode the planner picks -------------------------------------------------------


def _plan(tmp_path: Path, privacy: str, sql: str, accounting: str = "pure") -> QueryPlan:
    policies = write_dataset(tmp_path, one_member([1]), privacy=privacy, accounting=accounting)
    return plan_query(parse(sql), load_policy(policies / "shifts.toml"))


BOTH = member_level(2, 10) + "\nmax_rows_per_member = 12"
"""A policy allowing both modes: G = 2, R = 10 (G·R = 20) or N = 12."""


@pytest.mark.parametrize(
    ("privacy", "sql", "accounting", "total"),
    [
        pytest.param(BOTH, "SELECT region, COUNT(*), SUM(hours) FROM shifts GROUP BY region", "pure", True, id="pure"),
        pytest.param(BOTH, "SELECT COUNT(*) FROM shifts", "pure", False, id="ungrouped-pure-g1"),
        pytest.param(
            BOTH, "SELECT region, MEDIAN(hours), COUNT(*) FROM shifts GROUP BY region", "pure", False, id="quantile"
        ),
        pytest.param(BOTH, "SELECT region, MIN(age) FROM shifts GROUP BY region", "zcdp", False, id="min-as-quantile"),
        pytest.param(
            member_level(4, 10) + "\nmax_rows_per_member = 30",
            "SELECT region, COUNT(*) FROM shifts GROUP BY region",
            "zcdp",
            False,
            id="zcdp-per-group-wins",
        ),
        pytest.param(
            member_level(4, 10) + "\nmax_rows_per_member = 30",
            "SELECT region, COUNT(*) FROM shifts GROUP BY region",
            "pure",
            True,
            id="pure-total-wins",
        ),
        pytest.param(
            member_level(1, 10) + "\nmax_rows_per_member = 12",
            "SELECT region, COUNT(DISTINCT member_id) FROM shifts GROUP BY region",
            "pure",
            False,
            id="distinct-members",
        ),
        pytest.param(
            BOTH,  # a count, a fixed-point sum and the threshold's distinct members: 20·1200·2 < 12·720·12
            "SELECT city, COUNT(*), SUM(hours) FROM shifts GROUP BY city",
            "pure",
            False,
            id="private-keys-product-not-sum",
        ),
        pytest.param(
            member_level(1, 10) + "\nmax_rows_per_member = 10", "SELECT SUM(age) FROM shifts", "pure", True, id="tie"
        ),
        pytest.param(
            member_total(5), "SELECT region, MEDIAN(hours) FROM shifts GROUP BY region", "pure", True, id="only-total"
        ),
        pytest.param(
            member_level(2, 3),
            "SELECT region, COUNT(*) FROM shifts GROUP BY region",
            "pure",
            False,
            id="only-per-group",
        ),
    ],
)
def test_the_planner_picks_the_mode_with_less_noise(
    tmp_path: Path, privacy: str, sql: str, accounting: str, total: bool
) -> None:
    plan = _plan(tmp_path, privacy, sql, accounting)
    assert plan.contribution.total is total


def test_the_pick_compares_the_parts_norms_by_their_product_not_their_sum(tmp_path: Path) -> None:
    """A fixed-point sum's norm dwarfs a count's: summed, the sum alone would pick total mode here."""
    plan = _plan(tmp_path, BOTH, "SELECT city, COUNT(*), SUM(hours) FROM shifts GROUP BY city")
    total = _plan(tmp_path / "total", member_total(12), "SELECT city, COUNT(*), SUM(hours) FROM shifts GROUP BY city")
    per_group = [plan.sensitivity(part).l1 for part in plan.parts]
    in_total = [total.sensitivity(part).l1 for part in total.parts]
    assert sum(per_group) > sum(in_total) and math.prod(per_group) < math.prod(in_total)
    assert not plan.contribution.total


def test_explain_shows_the_mode_picked_and_the_one_not_used() -> None:
    with golden_engine() as engine:
        counts = engine.explain(
            "shifts_total", "SELECT region, COUNT(*) FROM shifts_total GROUP BY region", epsilon=1.0
        )
        median = engine.explain("shifts_total", "SELECT MEDIAN(hours) FROM shifts_total", epsilon=1.0)
    contribution = counts.to_dict()["contribution"]
    assert (contribution["mode"], contribution["max_rows_per_member"], contribution["groups_touched"]) == (
        "total",
        8,
        4,
    )
    assert contribution["other_mode"] == "max_groups 2 × max_rows_per_group 5 (no less noise for this query)"
    contribution = median.to_dict()["contribution"]
    assert (contribution["mode"], contribution["max_rows_per_member"], contribution["max_groups"]) == (
        "per_group",
        None,
        2,
    )
    assert contribution["other_mode"] == "max_rows_per_member 8 (quantiles need a per-group row cap)"


def test_the_pick_compares_the_norm_the_noise_is_calibrated_to(tmp_path: Path) -> None:
    """G = 4, R = 10 against N = 30 on four regions: L1 40 > 30 (pure picks total), L2 20 < 30 (zCDP per group)."""
    privacy = member_level(4, 10) + "\nmax_rows_per_member = 30"
    sql = "SELECT region, COUNT(*) FROM shifts GROUP BY region"
    pure = _plan(tmp_path / "pure", privacy, sql, "pure")
    zcdp = _plan(tmp_path / "zcdp", privacy, sql, "zcdp")
    assert (pure.sensitivity(pure.parts[0]).l1, pure.contribution.max_rows_per_member) == (30, 30)
    assert (zcdp.sensitivity(zcdp.parts[0]).l2, zcdp.contribution.max_rows_per_member) == (20, None)


def test_total_mode_sensitivities(tmp_path: Path) -> None:
    """N = 6 rows per member: counts and sums move by N rows' worth in L1, L2 and one group; L0 is min(N, keys)."""
    sql = (
        "SELECT region, member_flag, COUNT(*), SUM(age), AVG(age), COUNT(DISTINCT member_id) "
        "FROM shifts GROUP BY region, member_flag"
    )
    plan = _plan(tmp_path / "public", member_total(6), sql)
    claims = [(part.kind, *astuple(plan.sensitivity(part))) for part in plan.parts]
    assert claims == [  # (kind, L1, L2, per group, groups)
        (PartKind.COUNT_ROWS, 6, 6, 6, 6),
        (PartKind.SUM, 480, 480, 480, 6),  # 6 rows at most 80 each
        (PartKind.COUNT_VALUES, 6, 6, 6, 6),  # AVG's count
        (PartKind.CENTERED_SUM, 186, 186, 186, 6),  # AVG's sum, centred on 49: 6 rows at most 31 from it
        (PartKind.COUNT_UNITS, 6, 3, 1, 6),  # distinct members: one in each of at most 6 groups
    ]
    ungrouped = _plan(tmp_path / "ungrouped", member_total(6), "SELECT COUNT(*), COUNT(DISTINCT member_id) FROM shifts")
    assert [(s.l1, s.groups) for s in map(ungrouped.sensitivity, ungrouped.parts)] == [(6, 1), (1, 1)]
    private = _plan(tmp_path / "private", member_total(6), "SELECT city, COUNT(*) FROM shifts GROUP BY city")
    assert [(s.l1, s.l2, s.per_group, s.groups) for s in map(private.sensitivity, private.parts)] == [
        (6, 6, 6, 6),
        (6, 3, 1, 6),
    ]


# --- overflow limits -----------------------------------------------------------------


def test_a_cap_too_large_for_exact_sampling_is_refused_while_planning(tmp_path: Path) -> None:
    with pytest.raises(PolicyViolation, match="max_rows_per_member .* too large for exact integer sampling"):
        _plan(tmp_path / "over", member_total(MAX_ROWS_PER_MEMBER + 1), "SELECT COUNT(*) FROM shifts")
    at_limit = _plan(tmp_path / "at", member_total(MAX_ROWS_PER_MEMBER), "SELECT COUNT(*) FROM shifts")
    assert at_limit.sensitivity(at_limit.parts[0]).l1 == MAX_ROWS_PER_MEMBER


def test_at_the_limits_no_sum_can_overflow(tmp_path: Path) -> None:
    """The widest bounds fixed point allows (±2²⁸) times the largest cap (2²⁸) stays below the sum limit."""
    column = f'\n[columns.score]\ntype = "int"\nbounds = [{-(SUM_LIMIT // MAX_ROWS)}, {SUM_LIMIT // MAX_ROWS}]\n'
    frame = one_member([1]).with_columns(score=pl.lit(1))
    policies = write_dataset(tmp_path, frame, privacy=member_total(MAX_ROWS_PER_MEMBER), extra=column)
    plan = plan_query(parse("SELECT SUM(score), AVG(score) FROM shifts"), load_policy(policies / "shifts.toml"))
    assert max(plan.sensitivity(part).l1 for part in plan.parts) == 2**56 <= SUM_LIMIT


# --- what the mode is for -------------------------------------------------------------


def spread_members(members: int = 200, rows_per_group: int = 2) -> pl.DataFrame:
    """Every member has ``rows_per_group`` rows in each of the eight groups (16 rows in all at 2)."""
    return frame_of(
        [
            {"member_id": m, "region": region, "city": "a", "hours": 4.0, "age": 40, "member_flag": flag}
            for m in range(members)
            for region, flag in GROUPS
            for _ in range(rows_per_group)
        ]
    )


def test_members_spread_over_many_groups_lose_far_fewer_rows_in_total_mode(tmp_path: Path) -> None:
    """N = 16 against G × R = 2 × 8 = 16 (the same L1): total mode keeps all 16 rows of each member, per group 4."""
    frame = spread_members()
    policies = write_dataset(tmp_path, frame, name="total", privacy=member_total(16))
    write_dataset(tmp_path, frame, name="per_group", privacy=member_level(2, 8))
    engine = Engine.from_policies(policies, ledger=f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        released = {}
        for name in ("total", "per_group"):
            sql = f"SELECT region, member_flag, COUNT(*) AS n FROM {name} GROUP BY region, member_flag"
            plan = plan_query(parse(sql), engine.policy(name))
            assert plan.sensitivity(plan.parts[0]).l1 == 16
            exact = PolarsBackend().execute(plan, seed=1).parts[0]
            released[name] = (sum(exact), sum(row[2] for row in engine.query(name, sql, epsilon=2.0).rows))
    finally:
        engine.close()
    assert released["total"][0] == frame.height == 3200
    assert released["per_group"][0] == 200 * 2 * 2 == 800  # two groups of each member, its two rows in each
    # The noise (scale 8 per cell, eight cells) is far below the 2400 rows between them.
    assert released["total"][1] > 3000 > 1000 > released["per_group"][1]
