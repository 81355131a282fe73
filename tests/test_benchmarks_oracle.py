"""The oracle of issue 13: bounded aggregates by hand on a tiny pool, the noise expectations, the search.

Three members, values chosen so every bounded aggregate can be worked out on paper:

    member 1: 5 rows in north, hours 1, 2, 3, 4, 30   (30 is clamped to 24, or 12, …)
    member 2: 2 rows in north (hours 2, 2) and 3 in south (hours 1, 1, 1)
    member 3: 1 row in south, hours 6
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from benchmarks.bounds import Bounds
from benchmarks.generate import MEMBER_DATASET, POLICY_COLUMNS, PoolSpec, generate_pool
from benchmarks.oracle import (
    ROW_GRID,
    bounded_answer,
    contributions,
    expected_abs_discrete_laplace,
    expected_abs_laplace,
    expected_error,
    kept_share,
    l1_scale,
    modes,
    removed_share,
    search,
)
from benchmarks.peers.compare import exact_cells
from benchmarks.policy_file import Contribution, write_policy
from benchmarks.queries import QUERIES, Aggregate, BenchQuery
from engine import Engine
from engine.backends.polars import bounded_aggregates
from engine.planner import plan_query
from engine.sql import parse

COUNT = BenchQuery("count", Aggregate.COUNT, None, ("region",))
SUM = BenchQuery("sum", Aggregate.SUM, "hours", ("region",))
AVG = BenchQuery("avg", Aggregate.AVG, "hours", ("region",))
NORTH, SOUTH = 0, 1  # groups in key order: ["north"], ["south"]


def tiny() -> pl.LazyFrame:
    return pl.LazyFrame(
        {
            "member_id": [1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 3],
            "region": ["north"] * 5 + ["north", "north", "south", "south", "south"] + ["south"],
            "hours": [1.0, 2.0, 3.0, 4.0, 30.0, 2.0, 2.0, 1.0, 1.0, 1.0, 6.0],
        }
    )


def test_truth_and_groups_are_the_unbounded_answer() -> None:
    count = contributions(COUNT, tiny(), "member_id")
    assert count.groups == ('["north"]', '["south"]')
    assert count.truth.tolist() == [7, 4]
    assert count.public_groups == 4
    total = contributions(SUM, tiny(), "member_id")
    assert total.truth.tolist() == [44.0, 9.0]
    average = contributions(AVG, tiny(), "member_id")
    assert average.truth.tolist() == pytest.approx([44 / 7, 9 / 4])


def test_total_mode_spreads_each_members_rows_proportionally() -> None:
    table = contributions(COUNT, tiny(), "member_id")
    count, _ = bounded_answer(table, Bounds(max_rows_per_member=2))
    # member 1 keeps 2 of 5 (north); member 2 keeps 2 of 5: 0.8 north, 1.2 south; member 3 keeps its 1
    assert count.tolist() == pytest.approx([2 + 0.8, 1.2 + 1])
    assert removed_share(table, Bounds(max_rows_per_member=2)) == pytest.approx(1 - 5 / 11)
    assert removed_share(table, Bounds(max_rows_per_member=5)) == 0.0


def test_sums_are_the_clamped_mean_times_the_rows_kept() -> None:
    table = contributions(SUM, tiny(), "member_id")
    # clamped to [0, 24]: member 1 sums 1+2+3+4+24 = 34 (mean 6.8), member 2 north 4, south 3, member 3 6
    _, total = bounded_answer(table, Bounds(max_rows_per_member=2, lower=0.0, upper=24.0))
    assert total is not None
    assert total.tolist() == pytest.approx([6.8 * 2 + 4 * 0.4, 3 * 0.4 + 6])
    # clamped to [0, 3]: member 1 sums 1+2+3+3+3 = 12; R = 2 keeps 2 rows of each group's mean
    _, total = bounded_answer(table, Bounds(max_groups=4, max_rows_per_group=2, lower=0.0, upper=3.0))
    assert total is not None
    assert total.tolist() == pytest.approx([12 / 5 * 2 + 2 * 2, 1 * 2 + 3 * 1])
    share = removed_share(table, Bounds(max_groups=4, max_rows_per_group=2, lower=0.0, upper=3.0))
    assert share == pytest.approx(1 - (4.8 + 4 + 2 + 3) / 53)  # mass removed by clamping and capping


def test_average_bias_is_the_share_of_its_value_that_bounding_removes() -> None:
    table = contributions(AVG, tiny(), "member_id")
    # keeping every row, only 30 → 24 lowers the average: 47/11 against 53/11
    assert removed_share(table, Bounds(max_rows_per_member=5, lower=0.0, upper=24.0)) == pytest.approx(6 / 53)
    # C = 1: member 1 keeps a fifth of 34, member 2 a fifth of 4 + 3, member 3 its 6; one row each
    kept_mean = (34 / 5 + 7 / 5 + 6) / 3
    assert removed_share(table, Bounds(max_rows_per_member=1, lower=0.0, upper=24.0)) == pytest.approx(
        1 - kept_mean / (53 / 11)
    )


def test_per_group_mode_caps_rows_and_keeps_a_random_g_groups() -> None:
    table = contributions(COUNT, tiny(), "member_id")
    count, _ = bounded_answer(table, Bounds(max_groups=4, max_rows_per_group=2))  # every group kept
    assert count.tolist() == [2 + 2, 2 + 1]
    count, _ = bounded_answer(table, Bounds(max_groups=1, max_rows_per_group=2))
    # member 2 keeps one of its two groups, 2 rows: north gets 2 + 2·[north], south 1 + 2·[south]
    assert count.sum() == 5 and sorted(count.tolist()) in ([2.0, 3.0], [1.0, 4.0])
    share = kept_share(table, Bounds(max_groups=1, max_rows_per_group=2))
    member_two = table.member == table.member[np.flatnonzero(table.counted == 3)[0]]
    assert (share[member_two] > 0).sum() == 1  # exactly one group of member 2 kept


def test_l1_and_expected_error_by_hand() -> None:
    table = contributions(COUNT, tiny(), "member_id")
    bounds = Bounds(max_rows_per_member=2)  # L1 = 2 rows, scale 2 / ε
    p = math.exp(-1 / 2)
    expected = [expected_abs_discrete_laplace(np.array([d]), 2.0)[0] for d in (2.8 - 7, 2.2 - 4)]
    by_hand = (expected[0] / 7 + expected[1] / 4) / 2
    assert expected_error(table, bounds, 1.0) == pytest.approx(by_hand)
    # at an integer offset the closed form is d + 2p^(d+1) / (1 − p²)
    assert expected_abs_discrete_laplace(np.array([3.0]), 2.0)[0] == pytest.approx(3 + 2 * p**4 / (1 - p * p))
    # per group G×R: L1 = min(G, 4 public keys) · R = 4 · 2 rows, no bias in either group
    exact = Bounds(max_groups=8, max_rows_per_group=5)
    no_bias = expected_abs_discrete_laplace(np.array([0.0]), 20.0)[0]
    assert expected_error(table, exact, 1.0) == pytest.approx((no_bias / 7 + no_bias / 4) / 2)
    # sums: Laplace of scale C · magnitude / ε
    total = contributions(SUM, tiny(), "member_id")
    clamp = Bounds(max_rows_per_member=5, lower=0.0, upper=24.0)  # keeps every row; only 30 → 24 is lost
    laplace = expected_abs_laplace(np.array([-6.0, 0.0]), 5 * 24 / 0.5)
    assert expected_error(total, clamp, 0.5) == pytest.approx((laplace[0] / 44 + laplace[1] / 9) / 2)


@pytest.mark.parametrize("offset", [0.0, 1.0, 2.5, -3.25, 7.0])
@pytest.mark.parametrize("scale", [0.5, 2.0, 10.0])
def test_discrete_laplace_expectation_is_the_sum_over_its_law(offset: float, scale: float) -> None:
    k = np.arange(-2_000, 2_001)
    law = np.exp(-np.abs(k) / scale)
    law /= law.sum()
    exact = float((law * np.abs(offset + k)).sum())
    assert expected_abs_discrete_laplace(np.array([offset]), scale)[0] == pytest.approx(exact, rel=1e-9)


def test_laplace_expectations_agree_with_sampling() -> None:
    rng = np.random.default_rng(5)
    p = math.exp(-1 / 3.0)
    discrete = rng.geometric(1 - p, 400_000) - rng.geometric(1 - p, 400_000)  # discrete Laplace of scale 3
    assert np.abs(2 + discrete).mean() == pytest.approx(expected_abs_discrete_laplace(np.array([2.0]), 3.0)[0], 0.01)
    continuous = rng.laplace(scale=3.0, size=400_000)
    assert np.abs(2 + continuous).mean() == pytest.approx(expected_abs_laplace(np.array([2.0]), 3.0)[0], rel=0.01)
    assert expected_abs_laplace(np.array([-4.0]), 0.0)[0] == 4.0  # no noise: the bias alone


def test_search_finds_lossless_bounds_when_noise_is_free_and_the_least_sensitive_when_it_is_dear() -> None:
    count = contributions(COUNT, tiny(), "member_id")
    free = search(count, [1e9])[1e9]
    assert free.error < 1e-6 and free.removed_share == 0.0
    assert free.bounds == Bounds(max_rows_per_member=6)  # the first lossless point of the grid (1, 2, 3, 4, 6, …)
    total = contributions(SUM, tiny(), "member_id")
    answers = search(total, [1e9, 1e-3])
    free = answers[1e9]
    assert free.bounds.upper == 24.0 and free.removed_share == pytest.approx(6 / 53)  # 30 → 24 cannot be avoided
    assert free.error == pytest.approx(6 / 44 / 2, rel=1e-6)
    dear = answers[1e-3]
    assert dear.bounds.upper == 24.0 / 64 and l1_scale(total, dear.bounds) == 1
    assert free.candidates == len(modes(total)) * 7  # every mode with every clamp
    assert len(modes(total)) == len(ROW_GRID) * (1 + 4)  # total, and G = 1 … 4 (4 public regions)


def test_average_oracle_is_finite_and_shrinks_with_epsilon() -> None:
    table = contributions(AVG, tiny(), "member_id")
    bounds = Bounds(max_rows_per_member=5, lower=0.0, upper=24.0)
    errors = [expected_error(table, bounds, epsilon) for epsilon in (10.0, 1e3, 1e6)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] == pytest.approx(abs(38 / 7 - 44 / 7) / (44 / 7) / 2, rel=1e-3)  # 30 → 24 in north only


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory):
    return generate_pool(PoolSpec(rows=20_000, seed=3, chunk_rows=20_000), tmp_path_factory.mktemp("p"), False)


def test_truth_matches_the_suites_exact_answer(pool) -> None:
    scan = pl.scan_parquet([str(part) for part in pool.parts])
    for query in QUERIES:
        if query.name in ("count_by_region", "sum_by_sector", "filtered_sum", "avg_by_region"):
            table = contributions(query, scan, "member_id")
            exact = exact_cells(query, pool)
            assert dict(zip(table.groups, table.truth.tolist(), strict=True)) == pytest.approx(exact)


@pytest.mark.parametrize(("groups", "rows"), [(4, 3), (1, 10)])
def test_per_group_bounding_matches_the_engines(pool, tmp_path: Path, groups: int, rows: int) -> None:
    """The oracle's G×R answer equals the engine's exact bounded aggregates (G = all keys: no random choice).

    With G = 1 each member's kept group is a random draw, the engine's hash or
    ours, so the totals agree only within the spread of that draw (a few
    percent on this small pool's filtered sum; both draws are seeded).
    """
    source = str(pool.directory.resolve() / "parts" / "*.parquet")
    contribution = Contribution("member_id", max_groups=groups, max_rows_per_group=rows)
    write_policy(tmp_path / f"{MEMBER_DATASET}.toml", MEMBER_DATASET, source, contribution, POLICY_COLUMNS)
    engine = Engine.from_policies(tmp_path, ledger=f"sqlite:///{tmp_path / 'ledger.db'}")
    scan = pl.scan_parquet([str(part) for part in pool.parts])
    try:
        for query in (QUERIES[0], QUERIES[4]):  # count_by_region, filtered_sum
            plan = plan_query(parse(query.sql(MEMBER_DATASET)), engine.policy(MEMBER_DATASET))
            frame = bounded_aggregates(plan, seed=1).collect().sort("region")
            part = plan.parts[0]
            ours = frame["__part_0"].to_numpy() / (part.value.scale if part.value else 1)
            table = contributions(query, scan, "member_id")
            clamp = (0.0, 24.0) if query.column else (None, None)
            count, total = bounded_answer(table, Bounds(None, groups, rows, *clamp))
            theirs = count if total is None else total
            assert [json.loads(group)[0] for group in table.groups] == frame["region"].to_list()
            if groups == 4:
                assert theirs == pytest.approx(ours, rel=1e-6)
            else:
                assert theirs.sum() == pytest.approx(ours.sum(), rel=0.06)
    finally:
        engine.close()
