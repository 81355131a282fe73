"""Public lookup tables: declared in the policy, joined on their unique key, never multiplying a member's rows."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from cli import app
from engine import Engine
from engine.backends.polars import PolarsBackend
from engine.errors import InvalidSQL, PolicyError, PolicyViolation, UnknownColumn, UnknownTable, Unsupported
from engine.lookup import MAX_LOOKUP_ROWS
from engine.planner import plan_query
from engine.sql import parse
from tests.conftest import ROW_LEVEL, small_pool

ZONES = '\n[public_tables.zones]\nsource = "../data/zones.csv"\nkey = "region"\n'
ZONES_TABLE = pl.DataFrame(
    {
        "region": ["north", "south", "east", "mid"],  # no west; "mid" matches no row of the pool
        "zone": ["NS", "NS", "E", "M"],
        "weight": [0.5, 2.0, None, 9.0],
        "coastal": [True, False, True, False],
    }
)


@pytest.fixture
def pool() -> pl.DataFrame:
    return small_pool()


def _engine(dataset: Callable[..., Path], pool: pl.DataFrame, table: pl.DataFrame = ZONES_TABLE, **policy) -> Engine:
    policies = dataset(pool, extra=policy.pop("extra", ZONES), **policy)
    table.write_csv(policies.parent / "data" / "zones.csv")
    return Engine.from_policies(policies, ledger=f"sqlite:///{policies.parent / 'ledger.db'}")


@pytest.fixture
def row_engine(dataset: Callable[..., Path], pool: pl.DataFrame) -> Engine:
    return _engine(dataset, pool, privacy=ROW_LEVEL)


def _exact(engine: Engine, sql: str) -> dict[tuple[object, ...], list[int]]:
    plan = plan_query(parse(sql), engine.policy("shifts"))
    exact = PolarsBackend().execute(plan, seed=1)
    return {key: [part[i] for part in exact.parts] for i, key in enumerate(exact.keys)}


def _regions(pool: pl.DataFrame, *names: str) -> int:
    return pool.filter(pl.col("region").is_in(names)).height


# --- policy --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (ZONES_TABLE.with_columns(region=pl.lit("north")), "unique"),
        (ZONES_TABLE.with_columns(region=pl.Series(["north", None, "east", "mid"])), "unique and never empty"),
        (ZONES_TABLE.rename({"region": "area"}), "no key column 'region'"),
        (ZONES_TABLE.with_columns(weight=pl.Series([0.5, float("nan"), 1.0, 1.0])), "NaN or infinite"),
        (ZONES_TABLE.head(0), "has 0 rows"),
    ],
)
def test_a_bad_public_table_is_a_policy_error(
    dataset: Callable[..., Path], pool: pl.DataFrame, table: pl.DataFrame, message: str
) -> None:
    with pytest.raises(PolicyError, match=rf"public_tables\.zones: .*{message}"):
        _engine(dataset, pool, table)


def test_a_missing_public_table_file_or_a_huge_one_is_a_policy_error(
    dataset: Callable[..., Path], pool: pl.DataFrame
) -> None:
    missing = '\n[public_tables.zones]\nsource = "../data/nowhere.csv"\nkey = "region"\n'
    with pytest.raises(PolicyError, match="is not a file"):
        _engine(dataset, pool, extra=missing)
    huge = pl.DataFrame({"region": [f"r{i}" for i in range(MAX_LOOKUP_ROWS + 1)], "zone": "z"})
    with pytest.raises(PolicyError, match="rows"):
        _engine(dataset, pool, huge)


def test_a_public_table_may_not_take_the_datasets_name(dataset: Callable[..., Path], pool: pl.DataFrame) -> None:
    clash = '\n[public_tables.shifts]\nsource = "../data/zones.csv"\nkey = "region"\n'
    with pytest.raises(PolicyError, match="other than the dataset's"):
        _engine(dataset, pool, extra=clash)


# --- answers ---------------------------------------------------------------------------


def test_an_inner_join_keeps_rows_whose_key_is_listed(row_engine: Engine, pool: pl.DataFrame) -> None:
    inner = _exact(row_engine, "SELECT COUNT(*) FROM shifts JOIN zones USING (region)")
    left = _exact(row_engine, "SELECT COUNT(*) FROM shifts LEFT JOIN zones USING (region)")
    assert inner == {(): [_regions(pool, "north", "south", "east")]}
    assert left == {(): [pool.height]}  # a LEFT JOIN never drops, and never multiplies, a row


def test_grouping_by_a_joined_column_releases_every_value_of_the_table(row_engine: Engine, pool: pl.DataFrame) -> None:
    sql = "SELECT z.zone, COUNT(*) FROM shifts s JOIN zones z ON s.region = z.region GROUP BY z.zone"
    assert _exact(row_engine, sql) == {
        ("E",): [_regions(pool, "east")],
        ("M",): [0],  # listed in the public table, so released even though no row has it
        ("NS",): [_regions(pool, "north", "south")],
    }
    result = row_engine.query("shifts", sql.replace("GROUP BY z.zone", "GROUP BY zone"), epsilon=1.0)
    assert result.columns == ["zone", "count(*)"] and [row[0] for row in result.rows] == ["E", "M", "NS"]


def test_joined_numbers_get_bounds_from_the_table(row_engine: Engine, pool: pl.DataFrame) -> None:
    sql = "SELECT SUM(hours * weight) FROM shifts JOIN zones USING (region) WHERE coastal"
    plan = plan_query(parse(sql), row_engine.policy("shifts"))
    value = plan.parts[0].value
    assert (value.lower / value.scale, value.upper / value.scale) == pytest.approx((0.0, 60 * 9.0))
    north = pool.filter(pl.col("region") == "north")["hours"].drop_nulls()
    exact = _exact(row_engine, sql)[()][0] / value.scale
    assert exact == pytest.approx(float((north * 0.5).sum()), abs=len(north) / value.scale)  # east has no weight


def test_joined_columns_filter_and_count(row_engine: Engine, pool: pl.DataFrame) -> None:
    exact = _exact(
        row_engine, "SELECT COUNT(zone), COUNT(*) FROM shifts LEFT JOIN zones USING (region) WHERE NOT coastal"
    )
    assert exact == {(): [_regions(pool, "south")] * 2}


def test_an_id_column_joins_a_table_keyed_by_text_or_numbers(dataset: Callable[..., Path], pool: pl.DataFrame) -> None:
    members = pl.DataFrame({"member_id": [1, 2, 3], "cohort": ["a", "a", "b"]})
    extra = '\n[public_tables.cohorts]\nsource = "../data/zones.csv"\nkey = "member_id"\n'
    engine = _engine(dataset, pool, members, privacy=ROW_LEVEL, extra=extra)
    exact = _exact(engine, "SELECT cohort, COUNT(*) FROM shifts JOIN cohorts USING (member_id) GROUP BY cohort")
    counts = pool.group_by("member_id").len()
    expected = {m: n for m, n in counts.iter_rows()}
    assert exact == {("a",): [expected[1] + expected[2]], ("b",): [expected[3]]}


def test_member_level_joins_keep_the_contribution_bounds(dataset: Callable[..., Path], pool: pl.DataFrame) -> None:
    """One member in north and south (one zone, NS) is still one member with at most 10 rows there."""
    heavy = pl.concat(
        [
            pool,
            pool.head(50).with_columns(member_id=pl.lit(999, dtype=pool.schema["member_id"]), region=pl.lit("south")),
        ]
    )
    engine = _engine(dataset, heavy)
    plan = plan_query(
        parse("SELECT zone, COUNT(*) FROM shifts JOIN zones USING (region) GROUP BY zone"), engine.policy("shifts")
    )
    assert plan.sensitivity(plan.parts[0]).l1 == 10
    exact = PolarsBackend().execute(plan, seed=1)
    without = _engine(dataset, pool)
    baseline = PolarsBackend().execute(
        plan_query(
            parse("SELECT zone, COUNT(*) FROM shifts JOIN zones USING (region) GROUP BY zone"), without.policy("shifts")
        ),
        seed=1,
    )
    assert sum(abs(a - b) for a, b in zip(exact.parts[0], baseline.parts[0], strict=True)) <= 10


# --- refusals --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "error", "message"),
    [
        ("SELECT COUNT(*) FROM shifts JOIN shifts s2 USING (region)", PolicyViolation, "itself"),
        ("SELECT COUNT(*) FROM shifts a JOIN shifts b ON a.member_id = b.member_id", PolicyViolation, "itself"),
        ("SELECT COUNT(*) FROM shifts JOIN members USING (member_id)", UnknownTable, "public tables can be joined"),
        ("SELECT COUNT(*) FROM shifts CROSS JOIN zones", Unsupported, "LEFT JOIN"),
        ("SELECT COUNT(*) FROM shifts RIGHT JOIN zones USING (region)", Unsupported, "LEFT JOIN"),
        ("SELECT COUNT(*) FROM shifts FULL OUTER JOIN zones USING (region)", Unsupported, "LEFT JOIN"),
        ("SELECT COUNT(*) FROM shifts JOIN zones ON shifts.city = zones.zone", Unsupported, "unique key"),
        (
            "SELECT COUNT(*) FROM shifts JOIN zones ON shifts.region = zones.region AND coastal",
            Unsupported,
            "unique key",
        ),
        ("SELECT COUNT(*) FROM shifts JOIN zones USING (zone)", Unsupported, "USING \\(region\\)"),
        ("SELECT COUNT(*) FROM shifts JOIN zones ON shifts.age = zones.region", InvalidSQL, "int column"),
        ("SELECT COUNT(*) FROM shifts JOIN (SELECT * FROM zones) z USING (region)", Unsupported, "subquer"),
        (
            "SELECT COUNT(*) FROM shifts JOIN zones z USING (region) JOIN zones z USING (region)",
            InvalidSQL,
            "two joined",
        ),
        (
            "SELECT COUNT(*) FROM shifts JOIN zones USING (region) WHERE zones.nothing = 1",
            UnknownColumn,
            "zones has region",
        ),
        ("SELECT zone, COUNT(*) FROM shifts JOIN zones USING (region)", InvalidSQL, "GROUP BY"),
        ("SELECT SUM(zone) FROM shifts JOIN zones USING (region)", PolicyViolation, "no numbers"),
        (
            "SELECT COUNT(*) FROM (SELECT * FROM shifts) t JOIN zones USING (region)",
            Unsupported,
            "join public tables to the dataset's table",
        ),
        (
            "WITH t AS (SELECT * FROM shifts JOIN zones USING (region)) SELECT COUNT(*) FROM t",
            Unsupported,
            "JOINS inside it",
        ),
    ],
)
def test_joins_that_could_multiply_rows_are_refused(row_engine: Engine, sql: str, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        row_engine.query("shifts", sql, epsilon=1.0)
    assert row_engine.budgets()[0].spent.epsilon == 0


def test_the_cli_answers_joins_and_dates_and_refuses_with_exit_2(
    dataset: Callable[..., Path], pool: pl.DataFrame, tmp_path: Path
) -> None:
    import datetime as dt

    dated = pool.with_columns(
        day=pl.Series([dt.date(2024, 1, 1) + dt.timedelta(days=i % 90) for i in range(pool.height)])
    )
    extra = ZONES + '\n[columns.day]\ntype = "date"\nbounds = ["2024-01-01", "2024-03-31"]\n'
    engine = _engine(dataset, dated, extra=extra, max_epsilon_per_query=1.0)
    policies = Path(engine.policy("shifts").source_paths[0]).parent.parent / "policies"
    runner = CliRunner()
    env = {"COOPDP_LEDGER": f"sqlite:///{tmp_path / 'cli.db'}"}
    sql = "SELECT DATE_TRUNC('month', day) AS month, zone, COUNT(*) AS n FROM shifts JOIN zones USING (region) GROUP BY 1, 2"
    answered = runner.invoke(
        app,
        ["query", "--dataset", "shifts", "--epsilon", "0.5", "--format", "json", sql, "--policies", str(policies)],
        env=env,
    )
    assert answered.exit_code == 0, answered.stderr
    rows = json.loads(answered.stdout)["rows"]
    assert [row[:2] for row in rows] == [
        [m, z] for m in ("2024-01-01", "2024-02-01", "2024-03-01") for z in ("E", "M", "NS")
    ]
    refused = runner.invoke(
        app,
        [
            "query",
            "--dataset",
            "shifts",
            "--epsilon",
            "0.5",
            "--format",
            "json",
            "SELECT COUNT(*) FROM shifts CROSS JOIN zones",
            "--policies",
            str(policies),
        ],
        env=env,
    )
    assert refused.exit_code == 2
    assert json.loads(refused.stderr)["error"]["code"] == "unsupported"


def test_grouping_by_a_joined_column_that_is_empty_is_refused_before_any_charge(
    dataset: Callable[..., Path], pool: pl.DataFrame
) -> None:
    """No value means no public key: refused when planning, not failed after the charge."""
    table = ZONES_TABLE.with_columns(zone=pl.lit(None, dtype=pl.String))
    engine = _engine(dataset, pool, table, privacy=ROW_LEVEL)
    with pytest.raises(Unsupported, match="empty in its table"):
        engine.query("shifts", "SELECT zone, COUNT(*) FROM shifts JOIN zones USING (region) GROUP BY zone", epsilon=1.0)
    assert engine.budgets()[0].spent.epsilon == 0
