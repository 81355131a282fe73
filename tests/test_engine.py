"""End to end through ``Engine``: bounding, clamping, NULLs, dry runs, accounting, budgets."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest

from engine import Engine
from engine.backends.polars import PolarsBackend
from engine.errors import BudgetExhausted, Forbidden, PolicyError, QuotaExhausted, UnknownTable, Unsupported
from engine.planner import plan_query
from engine.sql import parse
from tests.conftest import ROW_LEVEL

HUGE_EPSILON = 2.0


def _engine(policies: Path) -> Engine:
    return Engine.from_policies(policies, ledger=f"sqlite:///{policies.parent / 'ledger.db'}")


def _exact(engine: Engine, sql: str) -> tuple[list[tuple[object, ...]], list[list[int]]]:
    """The bounded aggregates before noise (a test-only view; never released)."""
    plan = plan_query(parse(sql), engine.policy("shifts"))
    exact = PolarsBackend().execute(plan, seed=3)
    return exact.keys, exact.parts


def _frame(**columns: list[object]) -> pl.DataFrame:
    rows = len(next(iter(columns.values())))
    base: dict[str, list[object]] = {
        "member_id": [1] * rows,
        "region": ["north"] * rows,
        "city": ["a"] * rows,
        "hours": [1.0] * rows,
        "age": [30] * rows,
        "member_flag": [True] * rows,
    }
    base.update(columns)
    return pl.DataFrame(base, schema_overrides={"hours": pl.Float64})


def test_a_member_adds_at_most_max_rows_per_group(dataset: Callable[..., Path]) -> None:
    engine = _engine(dataset(_frame(member_id=[1] * 50 + [2], hours=[60.0] * 51)))
    _, parts = _exact(engine, "SELECT COUNT(*), SUM(hours) FROM shifts")
    assert parts[0] == [10 + 1]
    assert parts[1][0] == (10 + 1) * 60 * 2**20


def test_a_member_touches_at_most_max_groups(dataset: Callable[..., Path]) -> None:
    engine = _engine(dataset(_frame(region=["north", "south", "east", "west"] * 5)))
    keys, parts = _exact(engine, "SELECT region, COUNT(*) FROM shifts GROUP BY region")
    assert len(keys) == 4
    assert sum(parts[0]) == 5  # one region, its five rows


def test_sums_use_the_members_clamped_mean(dataset: Callable[..., Path]) -> None:
    hours = [1.0, 2.0, 3.0, 100.0] * 5  # 20 rows; 100 clamps to 60; mean (1+2+3+60)/4 = 16.5
    engine = _engine(dataset(_frame(hours=hours)))
    _, parts = _exact(engine, "SELECT SUM(hours) FROM shifts")
    assert parts[0] == [int(16.5 * 2**20) * 10]


def test_row_level_counts_every_row(dataset: Callable[..., Path]) -> None:
    engine = _engine(dataset(_frame(member_id=[1] * 50, age=[10] * 25 + [200] * 25), privacy=ROW_LEVEL))
    _, parts = _exact(engine, "SELECT COUNT(*), SUM(age) FROM shifts")
    assert parts == [[50], [25 * 18 + 25 * 80]]


def test_nulls_nans_and_infinities(dataset: Callable[..., Path]) -> None:
    hours = [None, math.nan, math.inf, -math.inf, 5.0]
    engine = _engine(dataset(_frame(member_id=[1, 2, 3, 4, 5], hours=hours), privacy=ROW_LEVEL))
    _, parts = _exact(engine, "SELECT COUNT(*), COUNT(hours), SUM(hours) FROM shifts")
    # NULL and NaN are skipped; +inf clamps to 60, -inf to 0.
    assert parts == [[5], [3], [65 * 2**20]]


def test_values_that_do_not_fit_the_declared_type_become_null(dataset: Callable[..., Path]) -> None:
    frame = _frame(member_id=[1, 2, 3], age=["41", "old", None])
    engine = _engine(dataset(frame, privacy=ROW_LEVEL, suffix="csv"))
    _, parts = _exact(engine, "SELECT COUNT(age), SUM(age) FROM shifts")
    assert parts == [[1], [41]]


def test_avg_is_released_from_a_centred_sum_and_a_count(engine: Engine) -> None:
    result = engine.query("shifts", "SELECT AVG(age) AS a, AVG(hours) AS h FROM shifts", epsilon=HUGE_EPSILON)
    ((age, hours),) = result.rows
    assert 18 <= age <= 80 and 0 <= hours <= 60
    assert 0 < result.accuracy["a"] <= 62 and 0 < result.accuracy["h"] <= 60


def test_avg_accuracy_covers_the_bounded_mean(dataset: Callable[..., Path]) -> None:
    ages = [20 + (i % 50) for i in range(400)]
    engine = _engine(dataset(_frame(member_id=list(range(400)), age=ages), privacy=ROW_LEVEL, epsilon=1000.0))
    truth = sum(ages) / len(ages)
    covered = 0
    for _ in range(200):
        result = engine.query("shifts", "SELECT AVG(age) AS a FROM shifts", epsilon=0.5)
        covered += abs(result.rows[0][0] - truth) <= result.accuracy["a"]
    assert covered >= 190  # the union bound makes the interval at least 95%


def test_counts_are_never_negative_and_avg_stays_in_bounds(dataset: Callable[..., Path]) -> None:
    engine = _engine(dataset(_frame(member_id=[1], hours=[59.0])))
    for _ in range(20):
        ((count, mean),) = engine.query("shifts", "SELECT COUNT(*), AVG(hours) FROM shifts", epsilon=0.05).rows
        assert count >= 0
        assert mean is None or 0 <= mean <= 60


def test_results_are_noisy(engine: Engine) -> None:
    answers = {
        engine.query("shifts", f"SELECT COUNT(*) FROM shifts WHERE age > {-i}", epsilon=0.1).rows[0][0]
        for i in range(10)
    }
    assert len(answers) > 1


def test_a_repeated_query_returns_the_stored_release_for_free(engine: Engine) -> None:
    first = engine.query("shifts", "SELECT region, COUNT(*) FROM shifts GROUP BY region", epsilon=0.5)
    again = engine.query("shifts", "select region, count(*)  from SHIFTS group by region", epsilon=0.5)
    assert again.cached and not first.cached
    assert again.rows == first.rows and again.query_id == first.query_id
    assert again.cost.epsilon == 0
    assert engine.ledger.spent("shifts").dataset.epsilon == Decimal("0.5")
    other = engine.query("shifts", "SELECT region, COUNT(*) FROM shifts GROUP BY region", epsilon=0.25)
    assert not other.cached


def test_accuracy_matches_the_noise_scale(engine: Engine) -> None:
    # member level: COUNT sensitivity 1 group × 10 rows; ε split over one part.
    result = engine.query("shifts", "SELECT COUNT(*) AS n FROM shifts", epsilon=1.0)
    scale = 10 / 1.0
    assert result.accuracy["n"] == pytest.approx(scale * math.log(1 / 0.05), rel=0.1)


def test_dry_run_reads_no_data_and_charges_nothing(engine: Engine) -> None:
    for path in engine.policy("shifts").source_paths:
        path.unlink()
    result = engine.query(
        "shifts", "SELECT region, COUNT(*) AS n FROM shifts GROUP BY region", epsilon=1.0, dry_run=True
    )
    assert result.rows == [] and result.query_id is None
    assert result.cost.epsilon == Decimal("1.0")
    assert result.accuracy["n"] is not None
    assert result.to_dict()["dry_run"] is True
    assert engine.ledger.spent("shifts").dataset.epsilon == 0


def test_the_result_json_has_the_contract_fields(engine: Engine) -> None:
    document = engine.query("shifts", "SELECT region, COUNT(*) AS n FROM shifts GROUP BY region", epsilon=0.5).to_dict()
    assert set(document) == {
        "bounds",
        "query_id",
        "dataset",
        "buyer",
        "columns",
        "rows",
        "accuracy",
        "cost",
        "remaining",
        "cached",
    }
    assert document["query_id"].startswith("q_")
    assert document["cost"] == {"epsilon": 0.5, "delta": 0.0}
    assert document["remaining"] == {"epsilon": 9.5, "delta": 1e-6}
    assert document["cached"] is False
    json.dumps(document)


def test_each_release_is_logged_with_its_result(engine: Engine) -> None:
    result = engine.query("shifts", "select count(*) from shifts", epsilon=0.25)
    (record,) = engine.ledger.releases("shifts")
    assert record.query_id == result.query_id
    assert record.sql == "SELECT COUNT(*) FROM shifts"
    assert record.cost.epsilon == Decimal("0.25") and json.loads(record.result)["rows"] == result.rows


def test_zcdp_charges_epsilon_and_delta(dataset: Callable[..., Path]) -> None:
    engine = _engine(dataset(accounting="zcdp"))
    result = engine.query(
        "shifts", "SELECT region, SUM(hours) AS h FROM shifts GROUP BY region", epsilon=1.0, delta=1e-7
    )
    assert result.cost.delta == Decimal("1e-7")
    assert engine.ledger.spent("shifts").dataset.delta == Decimal("1e-7")
    assert result.accuracy["h"] > 0


def test_pure_accounting_never_spends_delta(engine: Engine) -> None:
    result = engine.query("shifts", "SELECT COUNT(*) FROM shifts", epsilon=1.0, delta=1e-7)
    assert result.cost.delta == 0


def test_the_budget_is_enforced_exactly(dataset: Callable[..., Path]) -> None:
    engine = _engine(dataset(epsilon=1.0, max_epsilon_per_query=1.0))
    for i in range(10):
        engine.query("shifts", f"SELECT COUNT(*) FROM shifts WHERE age > {i}", epsilon=0.1)
    assert engine.ledger.spent("shifts").dataset.epsilon == Decimal("1.0")
    with pytest.raises(BudgetExhausted):
        engine.query("shifts", "SELECT COUNT(*) FROM shifts", epsilon=0.1)
    assert len(engine.ledger.releases()) == 10


def test_buyer_quotas_bind_inside_the_budget(dataset: Callable[..., Path]) -> None:
    engine = _engine(dataset(extra='[buyers.lab]\nepsilon = 1.0\npurpose = "research"\n'))
    engine.query("shifts", "SELECT COUNT(*) FROM shifts", epsilon=0.75, buyer="lab")
    with pytest.raises(QuotaExhausted):
        engine.query("shifts", "SELECT COUNT(*) FROM shifts", epsilon=0.5, buyer="lab")
    policy = engine.policy("shifts")
    assert engine.remaining(policy, engine.caller(policy, "lab")).epsilon == Decimal("0.25")
    with pytest.raises(Forbidden):
        engine.query("shifts", "SELECT COUNT(*) FROM shifts", epsilon=0.5, buyer="stranger")
    engine.query("shifts", "SELECT COUNT(*) FROM shifts", epsilon=0.5)
    assert engine.ledger.spent("shifts").dataset.epsilon == Decimal("1.25")


def test_unknown_dataset(engine: Engine) -> None:
    with pytest.raises(UnknownTable):
        engine.query("nope", "SELECT COUNT(*) FROM nope", epsilon=1.0)


def test_a_pool_missing_a_declared_column_fails_before_charging(dataset: Callable[..., Path]) -> None:
    engine = _engine(dataset(_frame(member_id=[1, 2]).drop("hours")))
    with pytest.raises(PolicyError, match="hours"):
        engine.query("shifts", "SELECT SUM(hours) FROM shifts", epsilon=1.0)
    assert engine.ledger.spent("shifts").dataset.epsilon == 0


def test_budgets_report(engine: Engine) -> None:
    engine.query("shifts", "SELECT COUNT(*) FROM shifts", epsilon=0.5)
    (status,) = engine.budgets()
    assert status.remaining.epsilon == Decimal("9.5")


def test_grouped_rows_come_in_the_policys_key_order_whatever_the_data(dataset: Callable[..., Path]) -> None:
    engine = _engine(dataset(_frame(member_id=[1, 2], region=["west", "south"])))
    for where in ("", "WHERE region = 'west'", "WHERE region = 'nowhere'"):
        keys, _ = _exact(engine, f"SELECT region, COUNT(*) FROM shifts {where} GROUP BY region")
        assert keys == [("north",), ("south",), ("east",), ("west",)]


def test_a_column_stored_in_an_unreadable_type_fails_before_charging(dataset: Callable[..., Path]) -> None:
    engine = _engine(dataset(_frame(member_id=[1, 2], member_flag=[[True], [False]])))
    with pytest.raises(PolicyError, match="member_flag .* cannot be read as bool"):
        engine.query("shifts", "SELECT member_flag, COUNT(*) FROM shifts GROUP BY member_flag", epsilon=1.0)
    assert engine.ledger.spent("shifts").dataset.epsilon == 0


def test_count_distinct_members_counts_each_member_once_per_group(dataset: Callable[..., Path]) -> None:
    frame = _frame(member_id=[1] * 30 + [2] * 3 + [3], region=["north"] * 33 + ["south"])
    engine = _engine(dataset(frame))
    keys, parts = _exact(engine, "SELECT region, COUNT(DISTINCT member_id) AS members FROM shifts GROUP BY region")
    assert dict(zip([key[0] for key in keys], parts[0], strict=True)) == {"north": 2, "south": 1, "east": 0, "west": 0}
    plan = plan_query(parse("SELECT COUNT(DISTINCT member_id) FROM shifts"), engine.policy("shifts"))
    assert plan.sensitivity(plan.parts[0]).l1 == 1  # not max_rows_per_group
    result = engine.query("shifts", "SELECT COUNT(DISTINCT member_id) AS m FROM shifts", epsilon=1.0)
    assert result.accuracy["m"] == pytest.approx(math.log(1 / 0.05), rel=0.2)


@pytest.mark.parametrize(
    "sql",
    ["SELECT COUNT(DISTINCT region) FROM shifts", "SELECT SUM(DISTINCT hours) FROM shifts"],
)
def test_count_distinct_of_other_columns_is_refused_with_a_reason(engine: Engine, sql: str) -> None:
    with pytest.raises(Unsupported, match="DISTINCT"):
        engine.query("shifts", sql, epsilon=1.0)


def test_count_distinct_needs_a_member_level_dataset(dataset: Callable[..., Path]) -> None:
    engine = _engine(dataset(privacy=ROW_LEVEL))
    with pytest.raises(Unsupported, match="member-level"):
        engine.query("shifts", "SELECT COUNT(DISTINCT member_id) FROM shifts", epsilon=1.0)
