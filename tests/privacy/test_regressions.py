"""Bugs the privacy tests found, pinned."""

from __future__ import annotations

import math
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest

from engine import Engine
from engine.backends import BACKENDS
from engine.backends.polars import PolarsBackend
from engine.errors import CoopdpError, PolicyViolation
from engine.planner import plan_query
from engine.policy import load_policy
from engine.sql import parse
from tests.conftest import ROW_LEVEL, small_pool, write_dataset
from tests.privacy.deadline import within


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
