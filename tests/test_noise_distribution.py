"""Statistical tests: the released noise has the distribution, accuracy and privacy loss the engine claims.

OpenDP's samplers are seeded from the OS, so these tests cannot be seeded:
each goodness-of-fit test fails by chance with probability about 1e-4, which
keeps the suite reliable while still catching a wrong scale (with the 20 000
cells drawn per part, a scale 15% off is rejected with near certainty; see
``test_noise_scale_is_not_off_by_a_small_factor``).

* Pure DP releases discrete Laplace noise: ``P(k) ∝ exp(-|k| / scale)``.
* zCDP releases discrete Gaussian noise: ``P(k) ∝ exp(-k² / (2 scale²))``.
"""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from engine import Engine
from engine.accounting import Accounting, Cost, PrivacyRequest, zcdp_to_epsilon
from engine.ledger import ChargeReceipt
from engine.mechanisms import ALPHA, NoisePlan, add_noise, calibrate
from engine.plan import QueryPlan
from engine.planner import plan_query
from engine.policy import Policy, load_policy
from engine.sql import parse
from tests.conftest import ROW_LEVEL, small_pool, write_dataset

P_VALUE_FLOOR = 1e-4
"""A correct sampler fails one goodness-of-fit test with about this probability."""
DELTA = 1e-6
MEMBER_LEVEL_G2_R3 = 'unit = "member_id"\nmax_groups = 2\nmax_rows_per_group = 3'


# --- exact distributions ---------------------------------------------------------


def support(scale: float) -> np.ndarray:
    """Integers holding all but a negligible (< 1e-15) share of either distribution's mass at ``scale``."""
    reach = int(math.ceil(40 * scale)) + 10
    return np.arange(-reach, reach + 1)


def pmf(accounting: Accounting, scale: float, ks: np.ndarray) -> np.ndarray:
    """The exact probability of each integer in ``ks`` (which must be a symmetric support)."""
    if accounting is Accounting.PURE:
        # Discrete Laplace: normalising constant (1 - e^{-1/s}) / (1 + e^{-1/s}) = tanh(1 / 2s).
        return math.tanh(1 / (2 * scale)) * np.exp(-np.abs(ks) / scale)
    weights = np.exp(-(ks.astype(float) ** 2) / (2 * scale * scale))
    return weights / weights.sum()


def binned(samples: np.ndarray, ks: np.ndarray, probabilities: np.ndarray, min_expected: float = 10.0):
    """Observed and expected counts over integer bins, each bin expecting at least ``min_expected`` samples.

    Bins are consecutive integer runs; the two extreme bins absorb the tails.
    """
    n = len(samples)
    probabilities = probabilities / probabilities.sum()
    uppers: list[int] = []  # inclusive upper integer of each bin
    accumulated = 0.0
    for k, p in zip(ks, probabilities, strict=True):
        accumulated += p * n
        if accumulated >= min_expected:
            uppers.append(int(k))
            accumulated = 0.0
    if accumulated > 0 or not uppers:  # fold the leftover right tail into the last bin
        if uppers:
            uppers.pop()
        uppers.append(int(ks[-1]))
    uppers[-1] = int(ks[-1])
    cumulative = np.concatenate([[0.0], np.cumsum(probabilities)])
    edges = np.searchsorted(ks, uppers, side="right")  # bin i covers ks[edges[i-1]:edges[i]]
    expected = np.diff(np.concatenate([[0.0], cumulative[edges]])) * n
    expected[-1] += n - expected.sum()  # exact total, despite float rounding
    clipped = np.clip(samples, ks[0], ks[-1])
    observed = np.bincount(np.searchsorted(uppers, clipped, side="left"), minlength=len(uppers))
    return observed, expected


def assert_fits(samples: np.ndarray, accounting: Accounting, scale: float, what: str) -> None:
    ks = support(scale)
    observed, expected = binned(samples, ks, pmf(accounting, scale, ks))
    assert len(observed) >= 3, "too few bins for a meaningful test"
    result = stats.chisquare(observed, expected)
    assert result.pvalue > P_VALUE_FLOOR, (
        f"{what}: noise does not fit the {accounting} pmf at scale {scale} "
        f"(chi² {result.statistic:.1f} on {len(observed) - 1} df, p {result.pvalue:.2e}; "
        f"sample mean {samples.mean():.3f}, sd {samples.std():.3f})"
    )


def exact_coverage(accounting: Accounting, scale: float, half_width: float) -> float:
    """P(|noise| < half_width) under the exact pmf (OpenDP's α is P(|noise| ≥ accuracy))."""
    ks = support(scale)
    probabilities = pmf(accounting, scale, ks)
    return float(probabilities[np.abs(ks) < half_width].sum() / probabilities.sum())


# --- plans and noise -------------------------------------------------------------


@pytest.fixture(scope="module")
def policies(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Policy]:
    """(accounting, privacy) → a loaded policy over a small pool."""
    loaded = {}
    for accounting in ("pure", "zcdp"):
        for level, privacy in (("row", ROW_LEVEL), ("member", MEMBER_LEVEL_G2_R3)):
            root = tmp_path_factory.mktemp(f"{accounting}-{level}")
            policies_dir = write_dataset(root, small_pool(60, 10), privacy=privacy, accounting=accounting)
            loaded[(accounting, level)] = load_policy(policies_dir / "shifts.toml")
    return loaded


def noise_for(policy: Policy, sql: str, epsilon: float) -> tuple[QueryPlan, NoisePlan, PrivacyRequest]:
    plan = plan_query(parse(sql), policy)
    delta = DELTA if policy.budget.accounting == "zcdp" else None
    request = PrivacyRequest.validate(epsilon, delta, policy.budget)
    return plan, calibrate(plan, request), request


def draw(noise: NoisePlan, entries_per_part: int, exact: int = 1_000) -> list[np.ndarray]:
    """One call of :func:`add_noise` on ``entries_per_part`` equal cells per part; returns the noise per part."""
    receipt = ChargeReceipt("q_test", noise.cost)
    values = [[exact] * entries_per_part for _ in noise.parts]
    noisy = add_noise(noise, values, receipt)
    return [np.asarray(part, dtype=np.int64) - exact for part in noisy]


CASES = [
    # accounting, level, sql, epsilon
    pytest.param("pure", "row", "SELECT COUNT(*) FROM shifts", 0.1, id="pure-row-count-eps0.1"),
    pytest.param("pure", "row", "SELECT COUNT(*) FROM shifts", 0.5, id="pure-row-count-eps0.5"),
    pytest.param("pure", "row", "SELECT COUNT(*) FROM shifts", 2.0, id="pure-row-count-eps2"),
    pytest.param(
        "pure",
        "member",
        "SELECT region, COUNT(*), AVG(age) FROM shifts GROUP BY region",
        1.0,
        id="pure-member-grouped-avg",
    ),
    pytest.param("zcdp", "row", "SELECT COUNT(*) FROM shifts", 0.1, id="zcdp-row-count-eps0.1"),
    pytest.param("zcdp", "row", "SELECT COUNT(*) FROM shifts", 0.5, id="zcdp-row-count-eps0.5"),
    pytest.param("zcdp", "row", "SELECT COUNT(*) FROM shifts", 2.0, id="zcdp-row-count-eps2"),
    pytest.param(
        "zcdp",
        "member",
        "SELECT region, COUNT(*), AVG(age) FROM shifts GROUP BY region",
        1.0,
        id="zcdp-member-grouped-avg",
    ),
]


# --- distribution ----------------------------------------------------------------


@pytest.mark.parametrize(("accounting", "level", "sql", "epsilon"), CASES)
def test_noise_of_every_part_fits_the_claimed_distribution(
    policies: dict, accounting: str, level: str, sql: str, epsilon: float
) -> None:
    """20 000 i.i.d. cells per part in one call: each part's noise follows its pmf at the plan's scale."""
    plan, noise, _ = noise_for(policies[(accounting, level)], sql, epsilon)
    assert noise.accounting is Accounting(accounting)
    for index, (part_noise, samples) in enumerate(zip(noise.parts, draw(noise, 20_000), strict=True)):
        assert part_noise.part == plan.parts[index]
        assert_fits(samples, noise.accounting, part_noise.scale, f"{part_noise.part.label} of {sql!r}")


@pytest.mark.parametrize("accounting", ["pure", "zcdp"])
def test_one_cell_per_call_fits_the_claimed_distribution(policies: dict, accounting: str) -> None:
    """A one-entry vector noised 3000 times, one add_noise call each (fresh measurement every call)."""
    _, noise, _ = noise_for(policies[(accounting, "row")], "SELECT COUNT(*) FROM shifts", 0.3)
    samples = np.array([draw(noise, 1)[0][0] for _ in range(3_000)])
    assert_fits(samples, noise.accounting, noise.parts[0].scale, "one cell per call")


def test_noise_scale_is_not_off_by_a_small_factor(policies: dict) -> None:
    """The fit test has power: the same samples are rejected against a scale 15% too small or too large."""
    _, noise, _ = noise_for(policies[("pure", "row")], "SELECT COUNT(*) FROM shifts", 0.1)
    (samples,) = draw(noise, 20_000)
    scale = noise.parts[0].scale
    assert_fits(samples, noise.accounting, scale, "true scale")
    for wrong in (scale * 0.85, scale * 1.15):
        ks = support(wrong)
        observed, expected = binned(samples, ks, pmf(noise.accounting, wrong, ks))
        assert stats.chisquare(observed, expected).pvalue < P_VALUE_FLOOR


def test_scales_match_the_sensitivity_and_the_budget_split(policies: dict) -> None:
    """scale = multiplier × sensitivity, the same multiplier for every part (an even split of the loss)."""
    for accounting in ("pure", "zcdp"):
        plan, noise, _ = noise_for(
            policies[(accounting, "member")],
            "SELECT region, COUNT(*), SUM(age), AVG(hours) FROM shifts GROUP BY region",
            1.0,
        )
        multipliers = set()
        for part_noise, part in zip(noise.parts, plan.parts, strict=True):
            claimed = plan.sensitivity(part)
            assert part_noise.sensitivity == (claimed.l1 if accounting == "pure" else claimed.l2)
            assert part_noise.units_per_value == (part.value.scale if part.value else 1)
            multipliers.add(part_noise.scale / part_noise.sensitivity)
        assert max(multipliers) / min(multipliers) - 1 < 1e-9


# --- accuracy --------------------------------------------------------------------


def _binomial_ok(hits: int, n: int, p: float) -> bool:
    return stats.binomtest(hits, n, p).pvalue > P_VALUE_FLOOR


@pytest.mark.parametrize(("accounting", "level", "sql", "epsilon"), CASES)
def test_reported_accuracy_covers_95_percent_of_noise(
    policies: dict, accounting: str, level: str, sql: str, epsilon: float
) -> None:
    """|noise| < accuracy in 95% of cells: exactly by the pmf, and empirically within a binomial tolerance."""
    _, noise, _ = noise_for(policies[(accounting, level)], sql, epsilon)
    n = 4_000
    # A 95% band for the share of n Bernoulli(0.95) draws is about ±4.5 standard errors wide at p 1e-5.
    tolerance = 4.5 * math.sqrt(0.95 * 0.05 / n)
    for index, (part_noise, samples) in enumerate(zip(noise.parts, draw(noise, n), strict=True)):
        half_width = noise.accuracy(index) * part_noise.units_per_value  # back to integer units
        expected = exact_coverage(noise.accounting, part_noise.scale, half_width)
        # The claim: P(|noise| ≥ accuracy) ≤ α. Integer noise can make it conservative, but by less
        # than one integer step: one unit narrower, the interval would cover less than 95%.
        assert expected >= 1 - ALPHA, (part_noise.part.label, part_noise.scale, expected)
        assert exact_coverage(noise.accounting, part_noise.scale, half_width - 1) < 1 - ALPHA
        if part_noise.scale >= 10:  # discreteness negligible: the coverage is 95%, not more
            assert expected <= 1 - ALPHA + 0.005
        hits = int((np.abs(samples) < half_width).sum())
        assert _binomial_ok(hits, n, expected), (part_noise.part.label, hits / n, expected)
        assert hits / n >= 1 - ALPHA - tolerance, (part_noise.part.label, hits / n)


def test_accuracy_is_in_the_column_units(policies: dict) -> None:
    """A SUM over a float column is noised in fixed-point units; its accuracy is reported in the column's units."""
    plan, noise, _ = noise_for(policies[("pure", "member")], "SELECT SUM(hours), SUM(age) FROM shifts", 1.0)
    hours, age = noise.parts
    assert hours.units_per_value == plan.parts[0].value.scale > 1
    assert age.units_per_value == 1
    # Sensitivity 3 rows × 60 hours, half the budget each: a 95% half-width near 360 ln(20) ≈ 1078 hours.
    assert noise.accuracy(0) == pytest.approx(360 * math.log(20), rel=0.01)
    assert noise.accuracy(1) == pytest.approx(480 * math.log(20), rel=0.01)


# --- privacy loss ----------------------------------------------------------------


def _check_loss(noise: NoisePlan, request: PrivacyRequest) -> None:
    epsilon = float(request.epsilon)
    spends_delta = noise.accounting is Accounting.ZCDP
    assert noise.cost == Cost(request.epsilon, request.delta if spends_delta else Decimal(0))
    if noise.accounting is Accounting.PURE:
        assert noise.cost.delta == Decimal(0)
        assert noise.loss <= epsilon
        # Independently of OpenDP's maps: discrete Laplace at scale b with L1 sensitivity s is (s/b)-DP.
        by_formula = math.fsum(p.sensitivity / p.scale for p in noise.parts)
        assert by_formula <= epsilon * (1 + 1e-12)
        assert by_formula >= epsilon * (1 - 1e-9), "budget left unused"
        assert noise.loss == pytest.approx(by_formula, rel=1e-9)
    else:
        delta = float(request.delta)
        assert noise.cost.delta == request.delta
        # Discrete Gaussian at scale σ with L2 sensitivity s is s²/(2σ²)-zCDP.
        by_formula = math.fsum(p.sensitivity**2 / (2 * p.scale**2) for p in noise.parts)
        assert noise.loss == pytest.approx(by_formula, rel=1e-9)
        converted = zcdp_to_epsilon(noise.loss, delta)
        assert converted <= epsilon
        assert converted >= 0.99 * epsilon, f"only {converted} of ε {epsilon} used"
        # And never below the classic conversion's guarantee ε = ρ + 2√(ρ ln 1/δ), which is looser.
        assert converted <= noise.loss + 2 * math.sqrt(noise.loss * math.log(1 / delta))


@pytest.mark.parametrize(("accounting", "level", "sql", "epsilon"), CASES)
def test_composed_loss_fits_the_request(policies: dict, accounting: str, level: str, sql: str, epsilon: float) -> None:
    _, noise, request = noise_for(policies[(accounting, level)], sql, epsilon)
    _check_loss(noise, request)


@settings(max_examples=25, deadline=None)
@given(
    accounting=st.sampled_from(["pure", "zcdp"]),
    level=st.sampled_from(["row", "member"]),
    aggregates=st.lists(
        st.sampled_from(["COUNT(*)", "COUNT(hours)", "SUM(age)", "SUM(hours)", "AVG(hours)", "AVG(age)"]),
        min_size=1,
        max_size=5,
        unique=True,
    ),
    grouped=st.booleans(),
    epsilon=st.floats(min_value=0.001, max_value=2.0),
)
def test_composed_loss_never_exceeds_the_request(
    policies: dict, accounting: str, level: str, aggregates: list[str], grouped: bool, epsilon: float
) -> None:
    sql = f"SELECT {', '.join(aggregates)} FROM shifts" + (" GROUP BY region" if grouped else "")
    _, noise, request = noise_for(policies[(accounting, level)], sql, epsilon)
    _check_loss(noise, request)


# --- end to end ------------------------------------------------------------------


@pytest.fixture
def row_level_engine(tmp_path: Path) -> Iterator[Engine]:
    """Row level, 500 rows in each region: noisy counts stay far from the clamp at zero."""
    frame = small_pool(2_000, 100).with_columns(region=pl.Series(["north", "south", "east", "west"] * 500))
    policies_dir = write_dataset(tmp_path, frame, privacy=ROW_LEVEL, epsilon=1_000.0, max_epsilon_per_query=2.0)
    engine = Engine.from_policies(policies_dir, ledger=f"sqlite:///{tmp_path / 'ledger.db'}")
    yield engine
    engine.close()


def test_engine_query_releases_exact_count_plus_discrete_laplace(row_level_engine: Engine) -> None:
    """Through Engine.query: released counts minus the true 500 per region follow the plan's discrete Laplace.

    A repeated query returns its stored release (no fresh noise), so each of the
    200 queries differs by an always-true filter: 200 charged, independent releases.
    """
    epsilon = 0.5
    policy = row_level_engine.policy("shifts")
    _, noise, _ = noise_for(policy, "SELECT region, COUNT(*) AS n FROM shifts GROUP BY region", epsilon)
    samples, reported, query_ids = [], set(), set()
    for i in range(200):
        sql = f"SELECT region, COUNT(*) AS n FROM shifts WHERE age > {-1 - i} GROUP BY region"
        result = row_level_engine.query("shifts", sql, epsilon=epsilon)
        assert not result.cached
        assert sorted(row[0] for row in result.rows) == ["east", "north", "south", "west"]
        samples += [row[1] - 500 for row in result.rows]
        reported.add(result.accuracy["n"])
        query_ids.add(result.query_id)
    assert len(query_ids) == 200, "every query must be a fresh release"
    samples_array = np.array(samples)
    assert_fits(samples_array, Accounting.PURE, noise.parts[0].scale, "Engine.query COUNT(*)")
    assert reported == {noise.accuracy(0)}
    expected = exact_coverage(Accounting.PURE, noise.parts[0].scale, noise.accuracy(0))
    assert _binomial_ok(int((np.abs(samples_array) < noise.accuracy(0)).sum()), len(samples), expected)


def test_engine_repeated_query_is_not_fresh_noise(row_level_engine: Engine) -> None:
    """The same query twice is one release: averaging repeats cannot shrink the noise."""
    sql = "SELECT region, COUNT(*) AS n FROM shifts GROUP BY region"
    first = row_level_engine.query("shifts", sql, epsilon=0.5)
    second = row_level_engine.query("shifts", sql, epsilon=0.5)
    assert not first.cached and second.cached
    assert second.rows == first.rows


# --- discrete Gaussian accuracy at large scales -----------------------------------


def discrete_gaussian_tail(scale: float, k: int) -> float:
    """P(|X| ≥ k) for the discrete Gaussian of ``scale``, exactly to double precision."""
    ks = np.arange(0, int(math.ceil(40 * scale)) + 10)
    weights = np.exp(-(ks.astype(float) ** 2) / (2 * scale * scale))
    total = 2 * math.fsum(weights) - 1  # k and -k, 0 once
    return 2 * math.fsum(weights[k:]) / total


def gaussian_noise_plan(scale: float) -> NoisePlan:
    from engine.accounting import Cost
    from engine.mechanisms import PartNoise
    from engine.plan import Part, PartKind

    part = PartNoise(
        Part(PartKind.COUNT_ROWS), sensitivity=1, scale=scale, units_per_value=1, loss=1 / (2 * scale * scale)
    )
    return NoisePlan(Accounting.ZCDP, (part,), Cost(Decimal(1), Decimal("1e-6")), loss=1 / (2 * scale * scale))


@pytest.mark.parametrize("scale", [2.5, 10.0, 123.4, 1_000.0, 9_990.3])
def test_exact_tail_oracle_agrees_with_opendp_below_the_cut_over(scale: float) -> None:
    """The oracle below: the smallest k with P(|X| ≥ k) ≤ α is OpenDP's exact discrete-Gaussian accuracy."""
    import opendp.prelude as dp

    exact = int(dp.discrete_gaussian_scale_to_accuracy(scale, ALPHA))
    assert discrete_gaussian_tail(scale, exact) <= ALPHA < discrete_gaussian_tail(scale, exact - 1)


@pytest.mark.parametrize("scale", [9_990.3, 10_000.0, math.nextafter(10_000.0, math.inf), 10_000.5, 10_003.0, 12_345.6])
def test_large_scale_gaussian_accuracy_keeps_its_coverage(scale: float) -> None:
    """The 95% half-width must satisfy P(|noise| ≥ accuracy) ≤ α under the exact discrete Gaussian.

    ENGINE BUG (engine/mechanisms.py:61): above the cut-over scale 10 000,
    ``floor(continuous accuracy) + 1`` is used. The discrete tail P(|X| ≥ k)
    is about the continuous P(|Y| ≥ k - 1/2), so where the continuous
    half-width c has a fractional part above 1/2 this is one unit too narrow:
    at scale 10 000.5 it reports 19 601, where P(|X| ≥ 19 601) = 0.0500014 > α.
    ``math.ceil(c + 0.5)`` (or, with margin, ``floor(c) + 2``) matches OpenDP's
    exact answers below the cut-over.
    """
    accuracy = gaussian_noise_plan(scale).accuracy(0)
    assert accuracy == int(accuracy)
    assert discrete_gaussian_tail(scale, int(accuracy)) <= ALPHA, f"scale {scale}: accuracy {accuracy} is too narrow"
    # …and is the tightest such integer (no more than one unit conservative).
    assert discrete_gaussian_tail(scale, int(accuracy) - 2) > ALPHA


def test_gaussian_accuracy_does_not_shrink_across_the_exact_cut_over() -> None:
    """More noise never means a narrower interval. ENGINE BUG: 19 601 at scale 10 000, 19 600 just above it."""
    below = gaussian_noise_plan(10_000.0).accuracy(0)
    above = gaussian_noise_plan(math.nextafter(10_000.0, math.inf)).accuracy(0)
    assert above >= below


def test_zcdp_sum_of_a_float_column_reports_accuracy_promptly(tmp_path: Path) -> None:
    """Regression: a zCDP SUM over a float column noises at a scale near 3e9 fixed-point units.

    OpenDP's exact ``discrete_gaussian_scale_to_accuracy`` is linear in the
    scale (~0.24 s per 1e6), so computing it there took ~10 minutes and
    Engine.query (after charging) and every dry run hung. Run in a subprocess
    so that a regression fails instead of stalling the suite.
    """
    policies_dir = write_dataset(tmp_path, small_pool(), accounting="zcdp")
    script = textwrap.dedent(
        f"""
        from engine import Engine
        engine = Engine.from_policies({str(policies_dir)!r}, ledger={f"sqlite:///{tmp_path / 'ledger.db'}"!r})
        result = engine.query("shifts", "SELECT SUM(hours) FROM shifts", epsilon=1.0, delta=1e-6, dry_run=True)
        print(result.accuracy["sum(hours)"])
        """
    )
    try:
        completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("a zCDP dry run of SELECT SUM(hours) did not finish within 60 s (NoisePlan.accuracy)")
    assert completed.returncode == 0, completed.stderr
    # Scale ≈ 2.85e9 units = 2718 hours: the half-width is about 1.96 × that.
    assert float(completed.stdout) == pytest.approx(1.96 * 2718.5, rel=0.01)
