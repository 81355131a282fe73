"""Bugs the privacy tests found, pinned."""

from __future__ import annotations

from pathlib import Path

from engine.backends import BACKENDS
from engine.planner import plan_query
from engine.policy import load_policy
from engine.sql import parse
from tests.conftest import ROW_LEVEL, small_pool, write_dataset


def test_row_level_count_star_without_columns_counts_every_row(tmp_path: Path) -> None:
    """Found by the audit: a row-level ``COUNT(*)`` that names no column read no column, hence counted 0 rows."""
    policies = write_dataset(tmp_path, small_pool(rows=600), privacy=ROW_LEVEL)
    plan = plan_query(parse("SELECT COUNT(*) FROM shifts"), load_policy(policies / "shifts.toml"))
    assert BACKENDS["polars"]().execute(plan).parts == [[600]]
