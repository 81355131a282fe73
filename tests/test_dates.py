"""Date and datetime columns: ranges in the policy, date parts and truncations as public keys, date filters."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from engine import Engine
from engine.backends.polars import PolarsBackend
from engine.dates import TruncUnit
from engine.errors import InvalidSQL, PolicyError, PolicyViolation, Unsupported
from engine.planner import plan_query
from engine.policy import ColumnPolicy
from engine.sql import parse
from tests.conftest import ROW_LEVEL, small_pool

DATE_COLUMNS = """
[columns.shift_date]
type = "date"
bounds = ["2023-01-01", "2024-12-31"]

[columns.started_at]
type = "datetime"
bounds = [2023-01-01, 2024-12-31]
"""


def _dated_pool(rows: int = 400) -> pl.DataFrame:
    """``small_pool`` plus a day and a timestamp per row; a few fall outside the declared range."""
    base = small_pool(rows=rows)
    days = [dt.date(2022, 12, 1) + dt.timedelta(days=(7 * i) % 800) for i in range(rows)]
    stamps = [dt.datetime.combine(day, dt.time(hour=i % 24, minute=i % 60)) for i, day in enumerate(days)]
    return base.with_columns(shift_date=pl.Series(days), started_at=pl.Series(stamps))


@pytest.fixture
def pool() -> pl.DataFrame:
    return _dated_pool()


@pytest.fixture
def row_engine(dataset: Callable[..., Path], pool: pl.DataFrame) -> Engine:
    """Row level, so exact aggregates are plain counts that a test can recompute."""
    policies = dataset(pool, privacy=ROW_LEVEL, extra=DATE_COLUMNS)
    return Engine.from_policies(policies, ledger=f"sqlite:///{policies.parent / 'ledger.db'}")


def _exact(engine: Engine, sql: str) -> dict[tuple[object, ...], list[int]]:
    plan = plan_query(parse(sql), engine.policy("shifts"))
    exact = PolarsBackend().execute(plan, seed=1)
    return {key: [part[i] for part in exact.parts] for i, key in enumerate(exact.keys)}


def _in_range(day: dt.date) -> bool:
    return dt.date(2023, 1, 1) <= day <= dt.date(2024, 12, 31)


# --- policy --------------------------------------------------------------------------


def test_date_bounds_are_iso_text_or_toml_dates() -> None:
    written = ColumnPolicy.model_validate({"type": "date", "bounds": ["2020-01-01", "2020-12-31"]})
    native = ColumnPolicy.model_validate({"type": "datetime", "bounds": [dt.date(2020, 1, 1), dt.date(2020, 12, 31)]})
    assert written.bounds == native.bounds == (dt.date(2020, 1, 1), dt.date(2020, 12, 31))


@pytest.mark.parametrize(
    ("column", "message"),
    [
        ({"type": "date"}, "needs bounds"),
        ({"type": "date", "bounds": [0, 10]}, "needs bounds"),
        ({"type": "date", "bounds": ["2021-02-30", "2021-12-31"]}, "YYYY-MM-DD"),
        ({"type": "date", "bounds": ["01/02/2021", "2021-12-31"]}, "YYYY-MM-DD"),
        ({"type": "date", "bounds": ["2022-01-01", "2021-12-31"]}, "inverted"),
        ({"type": "int", "bounds": ["2021-01-01", "2021-12-31"]}, "numbers"),
    ],
)
def test_bad_date_bounds_are_policy_errors(column: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ColumnPolicy.model_validate(column)


def test_a_policy_file_with_a_bad_date_range_names_the_column(dataset: Callable[..., Path]) -> None:
    bad = '\n[columns.shift_date]\ntype = "date"\nbounds = ["2023-01-01", "soon"]\n'
    with pytest.raises(PolicyError, match=r"columns\.shift_date\.bounds.*YYYY-MM-DD"):
        Engine.from_policies(dataset(extra=bad), ledger="sqlite:///:memory:")


# --- calendar arithmetic ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("unit", "expected"),
    [
        (TruncUnit.YEAR, ["2023-01-01", "2024-01-01"]),
        (TruncUnit.QUARTER, ["2023-10-01", "2024-01-01", "2024-04-01"]),
        (TruncUnit.WEEK, ["2023-12-25", "2024-01-01", "2024-01-08"]),  # ISO weeks start on Monday
    ],
)
def test_truncation_periods_cover_the_range(unit: TruncUnit, expected: list[str]) -> None:
    low, high = (dt.date(2023, 11, 15), dt.date(2024, 4, 2)) if unit is TruncUnit.QUARTER else (None, None)
    if unit is TruncUnit.YEAR:
        low, high = dt.date(2023, 6, 1), dt.date(2024, 2, 1)
    if unit is TruncUnit.WEEK:
        low, high = dt.date(2023, 12, 31), dt.date(2024, 1, 8)
    assert [day.isoformat() for day in unit.periods(low, high)] == expected


def test_twelve_months_per_year_across_a_year_end() -> None:
    months = TruncUnit.MONTH.periods(dt.date(2023, 11, 30), dt.date(2025, 1, 1))
    assert len(months) == 15 and months[2] == dt.date(2024, 1, 1) and months[-1] == dt.date(2025, 1, 1)


# --- answers ---------------------------------------------------------------------------


def test_extract_year_keys_are_the_declared_years(row_engine: Engine, pool: pl.DataFrame) -> None:
    exact = _exact(row_engine, "SELECT EXTRACT(YEAR FROM shift_date) AS y, COUNT(*) FROM shifts GROUP BY y")
    expected = Counter(day.year for day in pool["shift_date"] if _in_range(day))
    assert exact == {(2023,): [expected[2023]], (2024,): [expected[2024]]}  # 2022's rows fall outside


def test_date_trunc_releases_every_month_in_order_as_iso_text(row_engine: Engine, pool: pl.DataFrame) -> None:
    sql = "SELECT DATE_TRUNC('month', shift_date) AS month, COUNT(*) AS n FROM shifts GROUP BY 1"
    exact = _exact(row_engine, sql)
    expected = Counter(day.replace(day=1) for day in pool["shift_date"] if _in_range(day))
    assert list(exact) == [(month,) for month in TruncUnit.MONTH.periods(dt.date(2023, 1, 1), dt.date(2024, 12, 31))]
    assert all(exact[(month,)] == [expected[month]] for (month,) in exact)
    released = row_engine.query("shifts", sql, epsilon=1.0)
    assert [row[0] for row in released.rows][:3] == ["2023-01-01", "2023-02-01", "2023-03-01"]
    assert len(released.rows) == 24


@pytest.mark.parametrize(
    ("condition", "keep"),
    [
        ("shift_date >= '2024-06-01'", lambda day, _: day >= dt.date(2024, 6, 1)),
        ("shift_date < DATE '2023-03-15'", lambda day, _: day < dt.date(2023, 3, 15)),
        ("shift_date BETWEEN '2023-05-01' AND '2023-05-31'", lambda day, _: day.month == 5 and day.year == 2023),
        (
            "shift_date IN ('2023-01-04', DATE '2023-01-11')",
            lambda day, _: day in (dt.date(2023, 1, 4), dt.date(2023, 1, 11)),
        ),
        ("started_at >= '2024-01-01'", lambda _, stamp: stamp >= dt.datetime(2024, 1, 1)),
        ("EXTRACT(HOUR FROM started_at) < 6", lambda _, stamp: stamp.hour < 6),
        ("DAYOFWEEK(shift_date) = 0", lambda day, _: day.isoweekday() == 7),
        ("EXTRACT(ISODOW FROM shift_date) = 7", lambda day, _: day.isoweekday() == 7),
        (
            "QUARTER(shift_date) = 2 AND YEAR(shift_date) = 2024",
            lambda day, _: day.year == 2024 and day.month in (4, 5, 6),
        ),
    ],
)
def test_date_filters(row_engine: Engine, pool: pl.DataFrame, condition: str, keep: Callable) -> None:
    exact = _exact(row_engine, f"SELECT COUNT(*) FROM shifts WHERE {condition}")
    expected = sum(1 for day, stamp in zip(pool["shift_date"], pool["started_at"], strict=True) if keep(day, stamp))
    assert exact == {(): [expected]}


def test_hours_of_a_timestamp_and_days_of_a_timestamp(row_engine: Engine, pool: pl.DataFrame) -> None:
    hours = _exact(row_engine, "SELECT EXTRACT(HOUR FROM started_at) h, COUNT(*) FROM shifts GROUP BY h")
    assert list(hours) == [(hour,) for hour in range(24)]
    in_range = [stamp for stamp in pool["started_at"] if _in_range(stamp.date())]
    assert hours == {(hour,): [sum(1 for s in pool["started_at"] if s.hour == hour)] for hour in range(24)}
    days = _exact(row_engine, "SELECT CAST(started_at AS DATE) d, COUNT(*) FROM shifts GROUP BY d")
    assert len(days) == 731 and sum(count for (count,) in days.values()) == len(in_range)


def test_grouping_by_a_date_column_releases_each_day_of_the_range(row_engine: Engine) -> None:
    result = row_engine.query(
        "shifts",
        "SELECT shift_date, COUNT(*) FROM shifts GROUP BY shift_date HAVING shift_date >= '2024-12-30'",
        epsilon=1.0,
    )
    assert [row[0] for row in result.rows] == ["2024-12-30", "2024-12-31"]


def test_a_date_part_inside_an_aggregate_is_clamped_to_the_range(row_engine: Engine, pool: pl.DataFrame) -> None:
    sql = "SELECT SUM(EXTRACT(YEAR FROM shift_date)) FROM shifts"
    plan = plan_query(parse(sql), row_engine.policy("shifts"))
    value = plan.parts[0].value
    assert (value.lower / value.scale, value.upper / value.scale) == (2023, 2024)
    clamped = [min(max(day, dt.date(2023, 1, 1)), dt.date(2024, 12, 31)).year for day in pool["shift_date"]]
    assert _exact(row_engine, sql) == {(): [sum(clamped) * value.scale]}


def test_dates_stored_as_text_in_csv(dataset: Callable[..., Path], pool: pl.DataFrame) -> None:
    policies = dataset(pool, privacy=ROW_LEVEL, extra=DATE_COLUMNS, suffix="csv")
    engine = Engine.from_policies(policies, ledger=f"sqlite:///{policies.parent / 'ledger.db'}")
    exact = _exact(engine, "SELECT COUNT(*) FROM shifts WHERE shift_date >= '2024-01-01' AND MONTH(started_at) = 3")
    expected = sum(
        1
        for day, stamp in zip(pool["shift_date"], pool["started_at"], strict=True)
        if day.year >= 2024 and stamp.month == 3
    )
    assert exact == {(): [expected]}


def test_dates_at_member_level(dataset: Callable[..., Path], pool: pl.DataFrame) -> None:
    policies = dataset(pool, extra=DATE_COLUMNS)
    engine = Engine.from_policies(policies, ledger=f"sqlite:///{policies.parent / 'ledger.db'}")
    result = engine.query(
        "shifts", "SELECT YEAR(shift_date) y, region, AVG(hours) FROM shifts GROUP BY y, region", epsilon=1.0
    )
    assert [row[:2] for row in result.rows] == [
        [y, r] for y in (2023, 2024) for r in ("north", "south", "east", "west")
    ]


# --- refusals --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "error", "message"),
    [
        ("SELECT started_at, COUNT(*) FROM shifts GROUP BY started_at", PolicyViolation, "DATE_TRUNC"),
        ("SELECT COUNT(*) FROM shifts GROUP BY EXTRACT(HOUR FROM shift_date)", InvalidSQL, "has no hour"),
        ("SELECT COUNT(*) FROM shifts GROUP BY DATE_TRUNC('hour', started_at)", Unsupported, "'month'"),
        ("SELECT EXTRACT(EPOCH FROM shift_date), COUNT(*) FROM shifts GROUP BY 1", Unsupported, "EXTRACT takes"),
        ("SELECT SUM(shift_date) FROM shifts", PolicyViolation, "EXTRACT"),
        ("SELECT MEDIAN(started_at) FROM shifts", PolicyViolation, "EXTRACT"),
        ("SELECT COUNT(*) FROM shifts WHERE shift_date > '2024-13-01'", InvalidSQL, "YYYY-MM-DD"),
        ("SELECT COUNT(*) FROM shifts WHERE shift_date > 2024", InvalidSQL, "cannot compare"),
        ("SELECT COUNT(*) FROM shifts WHERE YEAR(hours) = 2024", Unsupported, "date or datetime column"),
    ],
)
def test_date_refusals_name_the_alternative(row_engine: Engine, sql: str, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        row_engine.query("shifts", sql, epsilon=1.0)
    assert row_engine.budgets()[0].spent.epsilon == 0


def test_private_keys_beside_a_date_key(dataset: Callable[..., Path], pool: pl.DataFrame) -> None:
    """A date key beside a private one goes through the threshold measurement (whose keys are text) after the charge."""
    policies = dataset(pool, extra=DATE_COLUMNS)
    engine = Engine.from_policies(policies, ledger=f"sqlite:///{policies.parent / 'ledger.db'}")
    sql = "SELECT city, DATE_TRUNC('year', shift_date) AS y, COUNT(*) FROM shifts GROUP BY city, y"
    result = engine.query("shifts", sql, epsilon=1.0, delta=1e-6)
    assert result.private_keys == ["city"]
    assert {row[1] for row in result.rows} <= {"2023-01-01", "2024-01-01"}
