"""Distributions of the two mechanisms ``tests/test_noise_distribution.py`` does not cover: threshold and quantile.

* **Threshold** (private keys): a key whose exact unit count is ``c`` is
  released exactly when ``c + X ≥ T``, with ``X`` the part's discrete Laplace
  (pure) or Gaussian (zCDP) noise; its released value is ``c + X`` given that.
  Checked on thousands of keys in one release: release rates by a binomial
  test, released values by a chi-square fit to the truncated pmf.
* **Quantile** (exponential mechanism over a grid): every output is a grid
  candidate, and between neighbouring pools no candidate's probability moves
  by more than ``e^ε`` (Clopper–Pearson, Bonferroni over the candidates).
  OpenDP rescales the scores internally, so the exact pmf is not rebuilt here;
  the per-candidate ratio is the property the privacy claim rests on.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from engine.accounting import Accounting, PrivacyRequest
from engine.backends.base import ExactAggregates
from engine.ledger import ChargeReceipt
from engine.mechanisms import NoisePlan, calibrate, release
from engine.plan import QueryPlan
from engine.planner import plan_query
from engine.policy import load_policy
from engine.sql import parse
from tests.conftest import MEMBER_LEVEL, small_pool, write_dataset
from tests.privacy.audit import clopper_pearson
from tests.test_noise_distribution import P_VALUE_FLOOR, binned, pmf, support

KEYS_PER_COUNT = 6_000
QUANTILE_DRAWS = 2_500


def noise_plan(tmp_path: Path, accounting: str, sql: str, epsilon: float, delta: float) -> tuple[QueryPlan, NoisePlan]:
    policies = write_dataset(tmp_path, small_pool(), accounting=accounting, privacy=MEMBER_LEVEL)
    policy = load_policy(policies / "shifts.toml")
    plan = plan_query(parse(sql), policy)
    return plan, calibrate(plan, PrivacyRequest.validate(epsilon, delta, policy.budget))


@pytest.mark.parametrize("accounting", ["pure", "zcdp"])
def test_private_keys_pass_the_threshold_as_the_noise_distribution_says(accounting: str, tmp_path: Path) -> None:
    plan, noise = noise_plan(tmp_path, accounting, "SELECT city, COUNT(*) FROM shifts GROUP BY city", 1.0, 1e-6)
    assert noise.threshold is not None
    threshold, index = noise.threshold.value, noise.threshold.part_index
    scale = noise.parts[index].scale
    counts = (threshold - round(2 * scale), threshold, threshold + round(scale))
    keys = [(f"{count}/{i}",) for count in counts for i in range(KEYS_PER_COUNT)]
    parts = [[int(key[0].split("/")[0]) if p == index else 1_000 for key in keys] for p in range(len(plan.parts))]
    released = release(noise, ExactAggregates(keys, parts), ChargeReceipt("q_test", noise.cost))

    ks = support(scale)
    probabilities = pmf(Accounting(accounting), scale, ks)
    values_by_count: dict[int, list[int]] = {count: [] for count in counts}
    for key, value in zip(released.keys, released.parts[index], strict=True):
        values_by_count[int(str(key[0]).split("/")[0])].append(int(value))
    for count, values in values_by_count.items():
        passes = ks >= threshold - count
        rate = stats.binomtest(len(values), KEYS_PER_COUNT, float(probabilities[passes].sum()))
        assert rate.pvalue > P_VALUE_FLOOR, f"count {count}: {len(values)} of {KEYS_PER_COUNT} keys released"
        assert all(value >= threshold for value in values), "a key below the threshold was released"
    noise_of_passed = np.asarray(values_by_count[counts[2]]) - counts[2]
    truncated = np.where(ks >= threshold - counts[2], probabilities, 0.0)
    observed, expected = binned(noise_of_passed, ks, truncated)
    assert stats.chisquare(observed, expected).pvalue > P_VALUE_FLOOR


def _quantile_outputs(plan: QueryPlan, noise: NoisePlan, values: list[float]) -> Counter[float]:
    """The released median of ``values`` (ages), ``QUANTILE_DRAWS`` times through the engine's release path."""
    receipt = ChargeReceipt("q_test", noise.cost)
    exact = ExactAggregates([()] * QUANTILE_DRAWS, [[[int(v) for v in values]] * QUANTILE_DRAWS])
    (released,) = release(noise, exact, receipt).parts
    return Counter(float(value) for value in released)


@pytest.mark.parametrize("accounting", ["pure", "zcdp"])
def test_quantile_outputs_are_candidates_whose_odds_move_at_most_e_to_the_epsilon(
    accounting: str, tmp_path: Path
) -> None:
    plan, noise = noise_plan(tmp_path, accounting, "SELECT MEDIAN(age) FROM shifts", 1.0, 1e-6)
    (part,) = plan.parts
    assert part.value is not None and part.value.scale == 1
    candidates = {float(v) for v in range(part.value.lower, part.value.upper + 1)}  # every age is a candidate
    without = [30.0] * 20 + [60.0] * 20
    with_member = without + [80.0] * plan.contribution.max_rows_per_group
    outputs = (_quantile_outputs(plan, noise, without), _quantile_outputs(plan, noise, with_member))
    assert set(outputs[0]) | set(outputs[1]) <= candidates
    epsilon = float(noise.cost.epsilon)
    seen = sorted(set(outputs[0]) | set(outputs[1]))
    alpha = 1e-3 / (2 * len(seen))  # Bonferroni: every candidate, both directions
    for candidate in seen:
        for numerator, denominator in (outputs, outputs[::-1]):
            lower, _ = clopper_pearson(numerator[candidate], QUANTILE_DRAWS, alpha)
            _, upper = clopper_pearson(denominator[candidate], QUANTILE_DRAWS, alpha)
            if lower > 0:
                assert math.log(lower / upper) <= epsilon, f"candidate {candidate}"
