"""The quantile mechanism (engine/quantiles.py): its scores, its privacy map, its released distribution, its accuracy.

* The scores are OpenDP's quantile scores, the least over each candidate's
  points, and move between neighbouring pools by at most the sensitivity
  OpenDP's score transformation reports (what its noisy max's map is given).
* The loss is OpenDP's map, equal to ``make_private_quantile``'s at the same
  scale: the charged cost did not change.
* The released values follow the mechanism exactly: OpenDP's noisy min over
  the candidates (permute-and-flip under pure DP, Gumbel under zCDP), then a
  uniform draw inside the chosen interval (OpenDP's sampler too). It cannot be
  seeded, so the check bounds the distance of distribution functions (DKW) at a
  failure rate of 1e-6: never flaky, and a wrong scale, no uniform draw or the
  worst candidate chosen are far outside it.
* At equal ε the median is closer to the truth than the old 1,001-point grid's.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import opendp.prelude as dp
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from engine import Engine, quantiles
from engine.accounting import PrivacyRequest
from engine.backends.polars import PolarsBackend
from engine.mechanisms import calibrate
from engine.plan_parts import FixedPoint, Part, PartKind
from engine.planner import plan_query
from engine.policy import load_policy
from engine.sql import parse
from tests.conftest import small_pool, write_dataset

dp.enable_features("contrib")

MEASURES = {"pure": dp.max_divergence(), "zcdp": dp.zero_concentrated_divergence()}
ALPHAS = [0.5, 0.05, 0.25, 0.3, 0.9, 0.95, 0.123]
FAILURE = 1e-6
"""The chance that a correct sampler fails the distribution check."""


def quantile(lower: int, upper: int, alpha: float, scale: int = 1) -> Part:
    return Part(PartKind.QUANTILE, value=FixedPoint("x", lower, upper, scale), alpha=alpha)


@pytest.fixture
def few_intervals(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bounds wider than 8 fixed-point values are cut into 8 intervals: small enough to check exhaustively."""
    monkeypatch.setattr(quantiles, "INTERVALS", 8)


# --- scores --------------------------------------------------------------------------------------------------


def brute_force_scores(values: np.ndarray, grid: quantiles.Candidates, alpha: float) -> np.ndarray:
    """The least OpenDP score over each candidate: at its ends, at every value and quarter-step inside it.

    OpenDP's score is constant between consecutive distinct values (integers),
    so these points meet every piece of it that the candidate touches.
    """
    domain = dp.vector_domain(dp.atom_domain(T=float, nan=False))
    data = [float(v) for v in values]
    least = []
    for left, right in zip(grid.left, grid.right, strict=True):
        low, high = grid.edge(int(left)), grid.edge(int(right))
        points = np.concatenate(([low, high], np.arange(low, high, 0.25), np.arange(math.ceil(low), high + 1)))
        points = np.unique(points[(points >= low) & (points <= high)])
        score = dp.t.make_quantile_score_candidates(
            domain, dp.symmetric_distance(), candidates=[float(p) for p in points], alpha=alpha
        )
        least.append(min(score(data)))
    return np.asarray(least, dtype=np.uint64)


@st.composite
def pools(draw: st.DrawFn) -> tuple[Part, np.ndarray]:
    lower = draw(st.integers(-20, 20))
    upper = lower + draw(st.integers(1, 40))
    values = draw(st.lists(st.integers(lower, upper), max_size=25))
    return quantile(lower, upper, draw(st.sampled_from(ALPHAS))), np.asarray(values, dtype=np.int64)


@settings(max_examples=150, deadline=None)
@given(pool=pools())
# the crossing interval [0, 1] holds no value inside, two on its left edge and three on its right: its least score
# is in the open gap between (|2 - 3| = 1), below both ends' (3 and 2)
@example(pool=(quantile(0, 8, 0.5), np.array([0, 0, 1, 1, 1], dtype=np.int64)))
def test_scores_are_the_least_opendp_score_over_each_candidate(pool: tuple[Part, np.ndarray]) -> None:
    part, values = pool
    assert part.value is not None and part.alpha is not None
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(quantiles, "INTERVALS", 8)  # both kinds of candidates: points (span < 8) and intervals
        grid = quantiles.candidates(part.value)
        mine = quantiles.scores(values, grid, quantiles.weights(part.alpha))
    assert np.array_equal(mine, brute_force_scores(values, grid, part.alpha))


def test_narrow_bounds_have_every_value_as_a_point_and_wide_ones_equal_intervals() -> None:
    ages = quantiles.candidates(FixedPoint("age", 18, 80, 1))
    assert ages.count == 63 and np.array_equal(ages.left, ages.right)
    assert [ages.edge(int(k)) for k in ages.left] == list(range(18, 81))
    hours = quantiles.candidates(FixedPoint("hours", 0, 24 * 2**20, 2**20))
    assert hours.count == quantiles.INTERVALS and np.array_equal(hours.right, hours.left + 1)
    widths = np.diff([hours.edge(k) for k in range(hours.steps + 1)])
    assert np.allclose(widths, 24 * 2**20 / quantiles.INTERVALS) and hours.edge(hours.steps) == 24 * 2**20


@settings(max_examples=200, deadline=None)
@given(
    pool=pools(),
    changed=st.lists(st.integers(-60, 60), min_size=1, max_size=10),
    added=st.booleans(),
    wide=st.booleans(),
)
def test_neighbouring_pools_move_every_score_by_at_most_the_sensitivity(
    pool: tuple[Part, np.ndarray], changed: list[int], added: bool, wide: bool
) -> None:
    """One unit adds or removes up to ``d`` rows (values anywhere, clamped): no score moves more than OpenDP says."""
    part, values = pool
    assert part.value is not None and part.alpha is not None
    clamped = np.clip(np.asarray(changed, dtype=np.int64), part.value.lower, part.value.upper)
    if added:
        neighbour = np.concatenate((values, clamped))
    else:
        neighbour, values = values, np.concatenate((values, clamped))  # the unit's rows removed
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(quantiles, "INTERVALS", 4096 if wide else 8)
        grid = quantiles.candidates(part.value)
        weight = quantiles.weights(part.alpha)
        moved = np.abs(
            quantiles.scores(values, grid, weight).astype(np.int64)
            - quantiles.scores(neighbour, grid, weight).astype(np.int64)
        )
    sensitivity = quantiles._score_transformation(part.alpha, (0, 1)).map(len(changed))
    assert moved.max() <= sensitivity


@pytest.mark.parametrize("alpha", ALPHAS)
def test_weights_are_opendps(alpha: float) -> None:
    weight = quantiles.weights(alpha)
    assert quantiles._score_transformation(alpha, (0, 1)).map(1) == max(weight.below, weight.above)
    assert math.isclose(weight.above / weight.per_row, alpha, abs_tol=1e-4)


# --- the privacy map -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("accounting", ["pure", "zcdp"])
@pytest.mark.parametrize("alpha", ALPHAS)
def test_the_loss_is_opendps_map_and_the_same_as_make_private_quantiles(accounting: str, alpha: float) -> None:
    measure = MEASURES[accounting]
    part = quantile(0, 24 * 2**20, alpha, scale=2**20)
    for rows, scale in [(1, 1.0), (10, 10.0), (10, 3.7), (3, 250.0)]:
        loss = quantiles.measurement(part, measure, scale).map(rows)
        private_quantile = dp.m.make_private_quantile(
            dp.vector_domain(dp.atom_domain(T=float, nan=False)),
            dp.symmetric_distance(),
            measure,
            candidates=[0.0, 24.0],
            alpha=alpha,
            scale=scale,
        )
        assert loss == private_quantile.map(rows)
        # the noisy min that releases is OpenDP's, given the scores' sensitivity: the same map
        sensitivity = quantiles._score_transformation(alpha, (0, 1)).map(rows)
        selection = quantiles._selection(measure, scale * quantiles.weights(alpha).per_row)
        assert selection.map(sensitivity) == loss


# --- the released distribution --------------------------------------------------------------------------------


def chosen_probabilities(scores: np.ndarray, scale: float, accounting: str) -> np.ndarray:
    """The exact chance of each candidate under OpenDP's noisy min of ``scores`` at ``scale`` (score units).

    Gumbel noise is the exponential mechanism (a softmax). Exponential noise
    is permute-and-flip: candidate i wins with chance ∫₀¹ pᵢ ∏_{j≠i} (1 − t·pⱼ) dt,
    pⱼ = exp(−(scoreⱼ − best) / scale), integrated here by Gauss–Legendre.
    """
    gaps = (scores.astype(float) - scores.min()) / scale
    if accounting == "zcdp":
        weights = np.exp(-gaps)
        return weights / weights.sum()
    p = np.exp(-gaps)
    nodes, quadrature = np.polynomial.legendre.leggauss(200)
    factors = 1 - np.outer((nodes + 1) / 2, p)  # [node, candidate]: every node is below 1, so none is 0
    others = np.prod(factors, axis=1)[:, None] / factors
    probabilities = (quadrature / 2) @ (others * p)
    return probabilities / probabilities.sum()


def released_cdf(at: np.ndarray, grid: quantiles.Candidates, probabilities: np.ndarray) -> np.ndarray:
    """The chance that the released value is ≤ each point of ``at``: each interval's chance spread uniformly."""
    low = np.array([grid.edge(int(k)) for k in grid.left])
    high = np.array([grid.edge(int(k)) for k in grid.right])
    inside = np.clip((at[:, None] - low) / np.where(high > low, high - low, 1), 0, 1)
    inside = np.where(high > low, inside, (at[:, None] >= low).astype(float))
    return inside @ probabilities


@pytest.mark.parametrize("accounting", ["pure", "zcdp"])
@pytest.mark.parametrize(("alpha", "scale"), [(0.5, 2.0), (0.25, 6.0)])
def test_released_values_follow_the_mechanism(
    accounting: str, alpha: float, scale: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """10,000 releases of one group: the largest gap between the empirical and exact distribution functions.

    The bounds are fixed-point [0, 4096) units cut into 16 intervals; the
    values cluster around a few places so that several intervals have a
    real chance. By DKW, a correct sampler exceeds ``sqrt(ln(2/FAILURE) / 2N)``
    with chance at most FAILURE.
    """
    monkeypatch.setattr(quantiles, "INTERVALS", 16)
    part = quantile(0, 4095 * 16, alpha, scale=16)
    assert part.value is not None
    values = np.concatenate([np.full(3, 100), np.arange(30_000, 30_010), np.full(4, 64_000)]).astype(np.int64)
    grid = quantiles.candidates(part.value)
    weight = quantiles.weights(alpha)
    probabilities = chosen_probabilities(quantiles.scores(values, grid, weight), scale * weight.per_row, accounting)
    draws = 10_000
    released = quantiles.release(MEASURES[accounting], part, scale, [values] * draws)
    points, counts = np.unique(released, return_counts=True)
    at_most = np.cumsum(counts) / draws  # the empirical P(released ≤ v), and below: P(released < v)
    below = at_most - counts / draws
    # the drawn value is rounded to the nearest fixed-point unit
    gap = max(
        np.abs(at_most - released_cdf(points + 0.5, grid, probabilities)).max(),
        np.abs(below - released_cdf(points - 0.5, grid, probabilities)).max(),
    )
    assert gap <= math.sqrt(math.log(2 / FAILURE) / (2 * draws)), f"distribution functions {gap:.4f} apart"


def test_the_exact_distribution_of_permute_and_flip_matches_opendps_sampler() -> None:
    """The oracle above agrees with OpenDP on two candidates (McKenna & Sheldon: 1 − e⁻¹/2 for the better one)."""
    assert chosen_probabilities(np.array([0, 1]), 1.0, "pure")[0] == pytest.approx(1 - math.exp(-1) / 2, abs=1e-9)
    assert chosen_probabilities(np.array([0, 1]), 1.0, "zcdp")[0] == pytest.approx(1 / (1 + math.exp(-1)))


def test_points_are_released_as_they_are_and_an_empty_group_anywhere_in_the_bounds() -> None:
    ages = quantile(18, 80, 0.5)
    released = quantiles.release(MEASURES["pure"], ages, 1.0, [np.array([40] * 50), np.array([], dtype=np.int64)])
    assert released[0] == 40 and 18 <= released[1] <= 80
    hours = quantile(0, 60 * 2**20, 0.5, scale=2**20)
    assert all(0 <= v <= 60 * 2**20 for v in quantiles.release(MEASURES["zcdp"], hours, 1.0, [[]] * 50))


# --- accuracy ------------------------------------------------------------------------------------------------------


def test_the_median_is_closer_to_the_truth_than_the_old_grids_at_equal_epsilon() -> None:
    """20,000 rows whose median lies half-way between two points of the old grid ([0, 24] in steps of 0.024).

    Row level, ε = 1 for each: the old mechanism (OpenDP's private quantile
    over 1,001 points) releases one of the two neighbours, 0.012 away; the new
    one an interval of width 0.006 around the median. Medians over 20 runs.
    """
    rng = np.random.default_rng(11)
    units = 2**20
    hours = rng.normal(12.0, 1.0, 20_000)
    hours += 12.012 - np.median(hours)
    truth = float(np.median(hours))
    fixed = np.trunc(hours * units).astype(np.int64)
    part = quantile(0, 24 * units, 0.5, scale=units)
    scale = 1.0
    measure = MEASURES["pure"]
    old = dp.m.make_private_quantile(
        dp.vector_domain(dp.atom_domain(T=float, nan=False)),
        dp.symmetric_distance(),
        measure,
        candidates=list(np.linspace(0, 24, 1001)),
        alpha=0.5,
        scale=scale,
    )
    assert old.map(1) == quantiles.measurement(part, measure, scale).map(1) == 1.0
    new_errors = [abs(v / units - truth) for v in quantiles.release(measure, part, scale, [fixed] * 20)]
    old_errors = [abs(float(old(fixed / units)) - truth) for _ in range(20)]
    assert np.median(new_errors) < 0.5 * np.median(old_errors)
    assert np.median(new_errors) < 24 / quantiles.INTERVALS


# --- several quantiles of one column -----------------------------------------------------------------------------------


def test_quantiles_of_one_column_share_the_member_sample_and_split_the_budget(tmp_path: Path) -> None:
    """Members with more rows than ``max_rows_per_group``: all three quantiles rank the same sample of them."""
    pool = small_pool(rows=3_000, members=40)  # 75 rows a member on average, 10 kept per group
    policies = write_dataset(tmp_path, pool, epsilon=100.0)
    policy = load_policy(policies / "shifts.toml")
    sql = (
        "SELECT region, PERCENTILE_CONT(0.25) WITHIN GROUP (ORDER BY hours) AS q1, MEDIAN(hours) AS m, "
        "PERCENTILE_CONT(0.75) WITHIN GROUP (ORDER BY hours) AS q3 FROM shifts GROUP BY region"
    )
    plan = plan_query(parse(sql), policy)
    assert [part.alpha for part in plan.parts] == [0.25, 0.5, 0.75]
    exact = PolarsBackend().execute(plan, seed=42)
    for first, *others in zip(*exact.parts, strict=True):
        assert len(first) <= 10 * 40
        for other in others:
            assert np.array_equal(np.sort(first), np.sort(other))
    noise = calibrate(plan, PrivacyRequest.validate(1.5, None, policy.budget))
    assert [part.loss for part in noise.parts] == pytest.approx([0.5, 0.5, 0.5])


def test_quantiles_of_one_column_are_released_in_order() -> None:
    """Post-processing sorts each group's quantiles of one column by their quantile; other parts are left alone."""
    hours, age = FixedPoint("hours", 0, 60, 1), FixedPoint("age", 18, 80, 1)
    parts = [
        Part(PartKind.QUANTILE, value=hours, alpha=0.75),
        Part(PartKind.COUNT_ROWS),
        Part(PartKind.QUANTILE, value=hours, alpha=0.25),
        Part(PartKind.QUANTILE, value=age, alpha=0.9),
        Part(PartKind.QUANTILE, value=hours, alpha=0.5),
        Part(PartKind.QUANTILE, value=age, alpha=0.1),
    ]
    noisy = [[10, 40], [7, 3], [30, 20], [20, 70], [20, 30], [50, 60]]
    assert quantiles.in_order(parts, noisy) == [[30, 40], [7, 3], [10, 20], [50, 70], [20, 30], [20, 60]]
    assert noisy[0] == [10, 40], "the released lists are not changed in place"


def test_an_engine_release_of_three_quantiles_is_ordered(tmp_path: Path) -> None:
    """At a tiny ε the three noisy quantiles are far apart at random; the result is still q1 ≤ m ≤ q3 in every row."""
    policies = write_dataset(tmp_path, small_pool(), epsilon=100.0)
    engine = Engine.from_policies(policies, ledger=f"sqlite:///{tmp_path / 'ledger.db'}")
    result = engine.query(
        "shifts",
        "SELECT region, PERCENTILE_CONT(0.75) WITHIN GROUP (ORDER BY hours) AS q3, MEDIAN(hours) AS m, "
        "PERCENTILE_CONT(0.25) WITHIN GROUP (ORDER BY hours) AS q1, MIN(hours) AS low FROM shifts GROUP BY region",
        epsilon=0.01,
    )
    assert len(result.rows) == 4
    for _, q3, m, q1, low in result.rows:
        assert low <= q1 <= m <= q3
