"""Per-value reading of CSV pools (invariant 8): a row's value never depends on the other rows, and is never NaN.

Random columns of hostile and ordinary texts are read as the policy declares
(float ``hours``, int ``age``, date ``day``); each row must read exactly as the
same row does when it is the file's only row, and no float reads as NaN (SQL
has no NaN: a ``NaN`` text is NULL, like any other value that is no number).
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import polars as pl
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from engine.backends.polars_read import read_pool, stored_files
from engine.planner import plan_query
from engine.policy import load_policy
from engine.sql import parse
from tests.conftest import ROW_LEVEL, write_dataset
from tests.privacy.test_hostile_pools import HOSTILE_TEXTS
from tests.test_sensitivity import DAY_COLUMN, frame_of

SQL = "SELECT COUNT(hours), COUNT(age), COUNT(day) FROM shifts"
texts = st.one_of(
    st.sampled_from(HOSTILE_TEXTS),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(2**64), 2**64).map(str),
    st.dates().map(str),
)
rows_of_text = st.lists(st.tuples(texts, texts, texts), min_size=1, max_size=12)


def _read(root: Path, rows: list[tuple[str, str, str]]) -> list[dict[str, object]]:
    honest = frame_of([{"member_id": 1, "region": "north"} for _ in rows])
    frame = honest.with_columns(
        pl.Series("hours", [hours for hours, _, _ in rows], dtype=pl.String),
        pl.Series("age", [age for _, age, _ in rows], dtype=pl.String),
        pl.Series("day", [day for _, _, day in rows], dtype=pl.String),
    )
    policies = write_dataset(root, frame, privacy=ROW_LEVEL, extra=DAY_COLUMN, suffix="csv")
    plan = plan_query(parse(SQL), load_policy(policies / "shifts.toml"))
    return read_pool(plan.source, stored_files(plan.source)).collect().to_dicts()


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example([("NaN", "79.5", "2024-02-29"), ("1.5", "42", "29/02/2024")])
@example([("nan", "7", "2024-1-5"), ("-Infinity", "1e3", "2024-06-01")])
@given(rows=rows_of_text)
def test_each_csv_value_reads_as_it_does_alone_and_no_float_reads_as_nan(rows: list[tuple[str, str, str]]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        together = _read(root / "all", rows)
        alone = [_read(root / f"row{index}", [row])[0] for index, row in enumerate(rows)]
    assert together == alone
    assert not any(isinstance(row["hours"], float) and math.isnan(row["hours"]) for row in together)
