"""``bounds = "auto"`` with a ``range``: a column's upper clamp bound chosen per query by DP.

The profile counts each member's median value of the column into public bins
(one count per member, so one more histogram's worth of sensitivity); the
bound is chosen from the bins' edges inside the range, with the contribution
bound, and the plan runs with it. Here: the policy rules, what the result and
the ledger show, that the answer is near the truth where the range alone would
drown it in noise, and the profile's sensitivity on neighbouring pools.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import Engine
from engine.backends.bounding import value_statistic
from engine.backends.polars import member_profile
from engine.bounds_choice import value_candidates
from engine.errors import PolicyError
from engine.member_profile import _binned, value_histogram
from engine.planner import plan_query
from engine.policy import load_policy
from engine.sql import parse
from tests.conftest import write_dataset

AUTO_PAY = '\n[columns.pay]\ntype = "float"\nbounds = "auto"\nrange = [0.0, 100000.0]\n'
TOTAL_AUTO = 'unit = "member_id"\nmax_rows_per_member = "auto"'


def pool_with_pay(members: int = 3000, seed: int = 3) -> pl.DataFrame:
    """A few rows per member; pay ~ 50 ± 20, so a range of 100,000 is 1,000 times too wide."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(1, 4, size=members)
    member = np.repeat(np.arange(1, members + 1), rows)
    n = len(member)
    return pl.DataFrame(
        {
            "member_id": member,
            "region": np.array(["north", "south", "east", "west"])[rng.integers(0, 4, size=n)],
            "city": np.array(["a", "b"])[rng.integers(0, 2, size=n)],
            "hours": rng.uniform(0, 20, size=n),
            "age": rng.integers(18, 81, size=n),
            "member_flag": rng.random(n) < 0.5,
            "pay": np.clip(rng.normal(50, 20, size=n), 0, None),
        }
    )


@pytest.mark.parametrize(
    ("column", "message"),
    [
        ('type = "float"\nbounds = "auto"', 'bounds = "auto" and range = [low, high] go together'),
        (
            'type = "float"\nbounds = [0.0, 1.0]\nrange = [0.0, 2.0]',
            'bounds = "auto" and range = [low, high] go together',
        ),
        ('type = "float"\nbounds = "auto"\nrange = [-1.0, 2.0]', "0 <= low < high"),
        ('type = "float"\nbounds = "auto"\nrange = [5.0, 2.0]', "0 <= low < high"),
        ('type = "int"\nbounds = "auto"\nrange = [0.0, 2.5]', "integer range"),
        ('type = "category"\nbounds = "auto"\nrange = [0.0, 2.0]', 'takes no bounds = "auto"'),
    ],
)
def test_auto_value_bounds_need_a_non_negative_range(tmp_path: Path, column: str, message: str) -> None:
    policies = write_dataset(tmp_path, pool_with_pay(50), extra=f"\n[columns.pay]\n{column}\n")
    with pytest.raises(PolicyError) as raised:
        load_policy(policies / "shifts.toml")
    assert message in raised.value.message


def test_the_chosen_bound_is_in_the_result_and_the_transparency_log(tmp_path: Path) -> None:
    frame = pool_with_pay()
    policies = write_dataset(tmp_path, frame, privacy=TOTAL_AUTO, extra=AUTO_PAY)
    engine = Engine.from_policies(policies, ledger=f"sqlite:///{tmp_path / 'ledger.db'}")
    result = engine.query("shifts", "SELECT region, SUM(pay) AS total FROM shifts GROUP BY region", epsilon=1.0)
    low, high = result.value_bounds["pay"]
    assert low == 0.0 and 0 < high < 100_000
    assert "max_rows_per_member" in result.bounds
    (release,) = engine.releases("shifts")
    assert release.bounds is not None and '"value_bounds"' in release.bounds and '"pay"' in release.bounds
    truth = dict(frame.group_by("region").agg(pl.col("pay").sum()).iter_rows())
    half_width = result.accuracy["total"]
    assert half_width is not None
    for region, total in result.rows:  # the pay is spread evenly: the bounds remove little (here under 10%)
        assert abs(total - truth[region]) <= 2 * half_width + 0.1 * truth[region]


def test_the_range_alone_would_drown_the_sum_in_noise(tmp_path: Path) -> None:
    """At ε = 1 the range's bound adds noise of ~10^5 per member; the chosen one about the values' size."""
    policies = write_dataset(tmp_path, pool_with_pay(), privacy=TOTAL_AUTO, extra=AUTO_PAY)
    engine = Engine.from_policies(policies, ledger=f"sqlite:///{tmp_path / 'ledger.db'}")
    sql = "SELECT SUM(pay) AS total FROM shifts"
    dry = engine.query("shifts", sql, epsilon=1.0, dry_run=True)
    answered = engine.query("shifts", sql, epsilon=1.0)
    assert dry.accuracy["total"] is not None and answered.accuracy["total"] is not None
    assert answered.accuracy["total"] < dry.accuracy["total"] / 100
    assert any("chosen when the query runs" in note for note in dry.notes)


def test_a_quantile_keeps_a_bound_above_it(tmp_path: Path) -> None:
    frame = pool_with_pay()
    policies = write_dataset(tmp_path, frame, privacy=TOTAL_AUTO, extra=AUTO_PAY)
    engine = Engine.from_policies(policies, ledger=f"sqlite:///{tmp_path / 'ledger.db'}")
    result = engine.query("shifts", "SELECT MEDIAN(pay) AS m FROM shifts", epsilon=1.0)
    median = float(frame["pay"].median() or 0)
    assert result.value_bounds["pay"][1] > median
    assert result.rows[0][0] == pytest.approx(median, rel=0.2)


def test_variances_and_expressions_keep_the_range(tmp_path: Path) -> None:
    """A variance's sum of squares is bounded at planning, and ``pay * 2`` is another column: neither is chosen."""
    narrow = AUTO_PAY.replace("100000.0", "1000.0")  # a variance of a wider range is refused (its squares overflow)
    policy = load_policy(write_dataset(tmp_path, pool_with_pay(50), extra=narrow) / "shifts.toml")
    for sql in ("SELECT VARIANCE(pay) FROM shifts", "SELECT SUM(pay * 2) FROM shifts"):
        plan = plan_query(parse(sql), policy)
        assert plan.auto_bounds is None or plan.auto_bounds.columns == ()
    plan = plan_query(parse("SELECT SUM(pay), AVG(pay) FROM shifts"), policy)
    assert plan.auto_bounds is not None and plan.auto_bounds.columns == ("pay",)


def test_candidates_lie_inside_the_range(tmp_path: Path) -> None:
    policy = load_policy(write_dataset(tmp_path, pool_with_pay(50), extra=AUTO_PAY) / "shifts.toml")
    plan = plan_query(parse("SELECT SUM(pay) FROM shifts"), policy)
    (value,) = [part.value for part in plan.parts if part.value is not None]
    found = value_candidates(plan, "pay")
    assert found == sorted(set(found)) and found[-1] == value.upper and found[0] > value.lower
    assert len(found) > 30 and found[0] <= value.upper * 2**-19


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(
    values=st.lists(
        st.floats(min_value=0, max_value=1e6) | st.just(math.nan) | st.just(math.inf), min_size=1, max_size=12
    ),
    first=st.booleans(),
)
def test_one_member_moves_one_count_of_the_value_histogram(
    tmp_path_factory: pytest.TempPathFactory, values: list[float], first: bool
) -> None:
    """Adding a member (any values, hostile ones too, its rows first or last) moves the binned histogram by at most 1."""
    root = tmp_path_factory.mktemp("neighbours")
    base = pool_with_pay(40, seed=5)
    member = base.head(len(values)).with_columns(
        pl.lit(10_000, dtype=pl.Int64).alias("member_id"), pl.Series("pay", values).fill_nan(None)
    )
    neighbour = pl.concat([member, base] if first else [base, member])
    histograms = []
    for name, frame in (("without", base), ("with", neighbour)):
        policy = load_policy(write_dataset(root / name, frame, privacy=TOTAL_AUTO, extra=AUTO_PAY) / "shifts.toml")
        plan = plan_query(parse("SELECT SUM(pay) FROM shifts"), policy)
        (value,) = [part.value for part in plan.parts if part.value is not None]
        histogram = value_histogram(value)
        histograms.append(_binned(histogram, member_profile(plan).members[value_statistic("pay")]))
    moved = sum(abs(a - b) for a, b in zip(*histograms, strict=True))
    assert moved <= 1
    assert math.isclose(sum(histograms[1]) - sum(histograms[0]), moved)


@pytest.mark.parametrize(
    "sql",
    ["SELECT city, SUM(pay) AS s FROM shifts GROUP BY city", "SELECT city, AVG(pay) AS a FROM shifts GROUP BY city"],
)
def test_row_level_auto_values_with_private_keys_answer(tmp_path: Path, sql: str) -> None:
    """At row level the profile holds only value histograms: choosing with private keys must not need a member count
    (it failed after the charge with a KeyError)."""
    policies = write_dataset(tmp_path, pool_with_pay(300), privacy='unit = "row"', extra=AUTO_PAY)
    engine = Engine.from_policies(policies, ledger=f"sqlite:///{tmp_path / 'ledger.db'}")
    result = engine.query("shifts", sql, epsilon=1.0, delta=1e-6)
    assert 0 < result.value_bounds["pay"][1] <= 100_000
