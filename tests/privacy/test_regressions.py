"""Bugs the privacy tests found, pinned."""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest

from engine import Engine
from engine.backends import BACKENDS
from engine.backends.polars import PolarsBackend
from engine.errors import CoopdpError, InternalError, PolicyViolation, Unsupported
from engine.planner import plan_query
from engine.policy import load_policy
from engine.sql import parse
from tests.conftest import ROW_LEVEL, small_pool, write_dataset
from tests.privacy.deadline import within
from tests.privacy.pools import PLANTED_CITY


def test_row_level_count_star_without_columns_counts_every_row(tmp_path: Path) -> None:
    """Found by the audit: a row-level ``COUNT(*)`` that names no column read no column, hence counted 0 rows."""
    policies = write_dataset(tmp_path, small_pool(rows=600), privacy=ROW_LEVEL)
    plan = plan_query(parse("SELECT COUNT(*) FROM shifts"), load_policy(policies / "shifts.toml"))
    assert BACKENDS["polars"]().execute(plan).parts == [[600]]


@pytest.mark.parametrize(
    "sql",
    [
        "WITH shifts AS (SELECT member_id FROM shifts WHERE age > 30) SELECT COUNT(*) FROM shifts",
        "WITH a AS (SELECT * FROM b), b AS (SELECT * FROM a) SELECT COUNT(*) FROM b",
    ],
)
def test_a_cte_naming_itself_or_a_later_cte_ends_in_a_typed_error_or_an_answer(engine: Engine, sql: str) -> None:
    """Found by the corpus: inlining re-attached every CTE to each CTE's body, so one naming itself recursed forever."""
    try:
        result = engine.query("shifts", sql, epsilon=0.1)
    except CoopdpError as error:
        assert error.code == "unknown_table"
    else:
        assert result.cost.epsilon == Decimal("0.1")


@pytest.mark.parametrize(
    ("accounting", "epsilon", "delta"),
    [("pure", 5e-324, None), ("pure", 1e-300, None), ("zcdp", 5e-324, 1e-7), ("zcdp", 0.5, 5e-324)],
)
def test_an_epsilon_or_delta_too_small_for_any_noise_is_refused_fast(
    dataset: Callable[..., Path], tmp_path: Path, accounting: str, epsilon: float, delta: float | None
) -> None:
    """Found by the corpus: a subnormal ε crashed OpenDP with an infinite scale (pure) or looped forever (zCDP)."""
    engine = Engine.from_policies(dataset(accounting=accounting), ledger=f"sqlite:///{tmp_path / 'ledger.db'}")
    with pytest.raises(PolicyViolation, match="too small"):
        within(
            5, lambda: engine.query("shifts", "SELECT COUNT(*), SUM(hours) FROM shifts", epsilon=epsilon, delta=delta)
        )
    assert engine.ledger.spent("shifts").dataset.epsilon == 0
    engine.close()


@pytest.mark.parametrize(
    ("sql", "matches"),
    [
        ("SELECT COUNT(*) FROM shifts WHERE age IN (1.5)", lambda frame: frame.filter(pl.col("age") == 1.5)),
        (
            "SELECT COUNT(*) FROM shifts WHERE age IN (30, 40.0)",
            lambda frame: frame.filter(pl.col("age").is_in([30, 40])),
        ),
        (
            "SELECT COUNT(*) FROM shifts WHERE age IN (9223372036854775808, 50)",
            lambda frame: frame.filter(pl.col("age") == 50),
        ),
        (
            "SELECT COUNT(*) FROM shifts WHERE region IN ('north', NULL)",
            lambda frame: frame.filter(pl.col("region") == "north"),
        ),
    ],
)
def test_in_lists_mixing_number_kinds_are_answered_not_crashed_after_the_charge(
    tmp_path: Path, sql: str, matches: Callable[[pl.DataFrame], pl.DataFrame]
) -> None:
    """Found by fuzzing: Polars refused ``is_in`` across int and float, so these crashed after the charge."""
    pool = small_pool(rows=600)
    policies = write_dataset(tmp_path, pool, privacy=ROW_LEVEL)
    plan = plan_query(parse(sql), load_policy(policies / "shifts.toml"))
    assert BACKENDS["polars"]().execute(plan).parts == [[matches(pool).height]]


def test_nan_written_as_text_in_a_csv_pool_is_null_not_a_crash_after_the_charge(tmp_path: Path) -> None:
    """A CSV float column read as text (one "n/a") and holding "NaN" reached the fixed-point cast as NaN: a 500, charged."""
    frame = small_pool(rows=40).with_columns(pl.col("hours").cast(pl.String))
    row = pl.int_range(pl.len())
    written = pl.when(row < 5).then(pl.lit("NaN")).when(row == 5).then(pl.lit("n/a")).otherwise("hours")
    frame = frame.with_columns(written.alias("hours"))
    policies = write_dataset(tmp_path, frame, suffix="csv", privacy=ROW_LEVEL)
    engine = Engine.from_policies(policies, ledger=f"sqlite:///{tmp_path / 'ledger.db'}")
    result = engine.query("shifts", "SELECT COUNT(hours) AS n, SUM(hours) AS h FROM shifts", epsilon=1.0)
    assert all(math.isfinite(value) for value in result.rows[0])
    plan = plan_query(parse("SELECT COUNT(hours) FROM shifts"), engine.policy("shifts"))
    assert PolarsBackend().execute(plan, seed=1).parts[0] == [frame.height - 6 - frame["hours"].is_null().sum()]


# --- issue 11: nothing fails after the charge, nothing is ignored, every answer finite -----------------------


@pytest.mark.parametrize(
    ("sql", "reference"),
    [
        ("SELECT SUM(ROUND(hours, -1)) FROM shifts", "SELECT SUM(ROUND(hours / 10) * 10) FROM shifts"),
        ("SELECT SUM(ROUND(age, -2)) FROM shifts", "SELECT SUM(ROUND(age / 100.0) * 100) FROM shifts"),
        ("SELECT COUNT(*) FROM shifts WHERE city NOT LIKE 'a%'", "SELECT COUNT(*) FROM shifts WHERE NOT city = 'a'"),
    ],
)
def test_negative_round_digits_and_not_like_are_answered_as_written(tmp_path: Path, sql: str, reference: str) -> None:
    """Issue 11: ROUND(x, -1) crashed Polars after the charge (OverflowError); NOT LIKE was answered as LIKE."""
    policies = write_dataset(tmp_path, small_pool(rows=600), privacy=ROW_LEVEL)
    policy = load_policy(policies / "shifts.toml")
    backend = BACKENDS["polars"]()
    assert backend.execute(plan_query(parse(sql), policy)) == backend.execute(plan_query(parse(reference), policy))


ISSUE_11_REFUSALS = [
    ("SELECT FLOOR(age) * 1000000000000000000 AS b, COUNT(*) FROM shifts GROUP BY b", "2^53"),
    ("SELECT COUNT(*) FROM shifts WHERE city LIKE '" + "_" * 15_000 + "'", "the limit is 1000"),
    ("SELECT COUNT(*) FROM shifts WHERE city LIKE '" + "a%" * 600 + "'", "the limit is 1000"),
    ("SELECT SUM(ROUND(hours, 400)) FROM shifts", "decimals"),
    ("SELECT SUM(ROUND(age, -400)) FROM shifts", "decimals"),
    ("SELECT COUNT(*) FROM shifts TABLESAMPLE (1 ROWS)", "TABLESAMPLE"),
    ("SELECT COUNT(*) FROM shifts FOR SYSTEM_TIME AS OF '2020-01-01'", "AS OF"),
    ("SELECT COUNT(*) FROM shifts WITH (NOLOCK)", "table hint"),
    ("SELECT SUM(hours) FROM (SELECT * REPLACE (hours * 1000 AS hours) FROM shifts)", "* REPLACE"),
    ("SELECT SUM(hours) FROM (SELECT * EXCEPT (age) FROM shifts)", "* EXCEPT"),
]


@pytest.mark.parametrize(("sql", "named"), ISSUE_11_REFUSALS, ids=[named for _, named in ISSUE_11_REFUSALS])
def test_what_crashed_after_the_charge_or_was_ignored_is_refused_by_name_for_free(
    engine: Engine, sql: str, named: str
) -> None:
    """Issue 11: each of these was charged and then crashed (every retry charged again), or answered unmodified."""
    with pytest.raises(Unsupported, match=re.escape(named)):
        engine.query("shifts", sql, epsilon=0.5)
    assert engine.ledger.spent("shifts").dataset.epsilon == 0


def test_a_subnormal_constant_inside_an_aggregate_is_answered_not_crashed(engine: Engine) -> None:
    """Found by the issue-11 sweep: ``SUM(hours * 1e-320)`` overflowed the fixed-point scale's log2 while planning."""
    result = engine.query("shifts", "SELECT SUM(hours * 1e-320) AS s FROM shifts", epsilon=0.5)
    assert math.isfinite(result.rows[0][0])


@pytest.mark.parametrize(
    "sql",
    ["SELECT COUNT(*) * 1e308 * 10 AS x FROM shifts", "SELECT COUNT(*) / 0 AS x FROM shifts"],
)
def test_a_non_finite_answer_is_null_with_a_note_and_strict_json(engine: Engine, sql: str) -> None:
    """Issue 11: ``COUNT(*) * 1e308 * 10`` was released as ``Infinity``, which is not JSON."""
    result = engine.query("shifts", sql, epsilon=0.5)
    assert result.rows == [[None]]
    assert any(note.startswith("x: NULL") for note in result.notes)
    json.dumps(result.to_dict(), allow_nan=False)


@pytest.mark.parametrize("weights", [{"n": 1e308, "s": 1e308}, {"n": 1e-300, "s": 1e-300}])
def test_extreme_but_equal_weights_mean_an_even_split(engine: Engine, weights: dict[str, float]) -> None:
    """Issue 11: weights of 1e308 overflowed a sum into a 500; only their ratios matter."""
    sql = "SELECT COUNT(*) AS n, SUM(hours) AS s FROM shifts"
    even = engine.query("shifts", sql, epsilon=0.5, dry_run=True)
    weighted = engine.query("shifts", sql, epsilon=0.5, dry_run=True, weights=weights)
    assert weighted.accuracy == pytest.approx(even.accuracy)


@pytest.mark.parametrize("weight", [10**400, math.inf, math.nan, True, -1.0, 0.0])
def test_weights_that_are_not_positive_finite_numbers_are_refused(engine: Engine, weight: object) -> None:
    with pytest.raises(PolicyViolation, match="positive, finite"):
        engine.query("shifts", "SELECT COUNT(*) AS n FROM shifts", epsilon=0.5, weights={"n": weight})  # type: ignore[dict-item]


def test_a_failure_after_the_charge_is_a_scrubbed_internal_error(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever a backend says (Polars quotes data values) never reaches the caller or the log; the charge stands."""
    backend = engine.backend(engine.policy("shifts"))

    def failing(*args: object, **kwargs: object) -> None:
        raise ValueError(f"could not parse {PLANTED_CITY!r} as a float")

    monkeypatch.setattr(backend, "execute", failing)
    with caplog.at_level(logging.DEBUG), pytest.raises(InternalError) as failed:
        engine.query("shifts", "SELECT COUNT(*) FROM shifts", epsilon=0.5)
    assert "ValueError" in failed.value.message and PLANTED_CITY not in failed.value.message
    assert "ValueError" in caplog.text and PLANTED_CITY not in caplog.text
    assert failed.value.__cause__ is None and failed.value.__context__ is not None  # raised "from None"
    assert engine.ledger.spent("shifts").dataset.epsilon == Decimal("0.5")
