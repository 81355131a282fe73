"""The benchmark pool generator: schema, determinism, skew, and policies the engine loads."""

from __future__ import annotations

import hashlib
from pathlib import Path

import polars as pl
import pytest

from benchmarks.generate import (
    MEMBER_DATASET,
    POSTCODES,
    REGIONS,
    ROW_DATASET,
    SECTORS,
    PoolSpec,
    generate_pool,
    load_pool,
    rows_per_member,
)
from benchmarks.policy_file import PolicyColumn, policy_toml
from benchmarks.sizes import label, parse_rows
from engine import Engine

SPEC = PoolSpec(rows=30_000, seed=7, chunk_rows=8_000)


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory):
    return generate_pool(SPEC, tmp_path_factory.mktemp("pool"), show_progress=False)


def _digest(paths: list[Path]) -> str:
    return hashlib.sha256(b"".join(path.read_bytes() for path in paths)).hexdigest()


def test_schema_rows_and_parts(pool) -> None:
    frame = pl.read_parquet(pool.parts)
    assert frame.schema == pl.Schema(
        {
            "member_id": pl.Int64,
            "region": pl.String,
            "sector": pl.String,
            "postcode": pl.String,
            "hours": pl.Float64,
            "earnings": pl.Float64,
            "age": pl.Int64,
            "shift_date": pl.Date,
            "consent_research": pl.Boolean,
        }
    )
    assert frame.height == SPEC.rows
    assert len(pool.parts) == 4  # 8,000 rows per part
    assert set(frame["region"]) == set(REGIONS)
    assert set(frame["sector"]) <= set(SECTORS) and frame["sector"].n_unique() == len(SECTORS)
    assert set(frame["postcode"]) <= set(POSTCODES) and frame["postcode"].n_unique() > 500
    assert 0.005 < frame["hours"].null_count() / frame.height < 0.05
    assert frame["age"].is_between(18, 80).all()
    assert str(frame["shift_date"].min()) >= "2020-01-01" and str(frame["shift_date"].max()) <= "2025-12-31"
    assert frame["member_id"].max() == pool.members == frame["member_id"].n_unique()


def test_members_are_whole_within_a_part_and_keep_one_age(pool) -> None:
    frame = pl.read_parquet(pool.parts).with_columns(part=pl.int_range(pl.len()) // SPEC.chunk_rows)
    per_member = frame.group_by("member_id").agg(pl.col("age").n_unique(), pl.col("part").n_unique())
    assert (per_member["age"] == 1).all() and (per_member["part"] == 1).all()


def test_same_seed_same_bytes_other_seed_other_bytes(pool, tmp_path: Path) -> None:
    again = generate_pool(SPEC, tmp_path / "again", show_progress=False)
    assert _digest(again.parts) == _digest(pool.parts)
    other = generate_pool(PoolSpec(SPEC.rows, seed=8, chunk_rows=SPEC.chunk_rows), tmp_path / "other", False)
    assert _digest(other.parts) != _digest(pool.parts)


def test_rows_per_member_are_skewed() -> None:
    import numpy as np

    counts = rows_per_member(np.random.default_rng(1), 1_000_000)
    assert counts.sum() == 1_000_000 and counts.min() >= 1
    assert (counts <= 3).mean() > 0.7  # many members with 1–3 rows
    assert (counts >= 100).sum() > 100  # a long tail with hundreds


def test_manifest_round_trip_and_reuse(pool) -> None:
    loaded = load_pool(pool.directory)
    assert loaded is not None and loaded.spec == SPEC and loaded.members == pool.members
    assert generate_pool(SPEC, pool.directory, show_progress=False).seconds == pool.seconds  # not regenerated


def test_policies_load_and_answer(pool, tmp_path: Path) -> None:
    engine = Engine.from_policies(pool.policies, ledger=f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        rows = engine.query(ROW_DATASET, "SELECT region, COUNT(*) FROM pool_rows GROUP BY region", epsilon=1.0)
        assert [row[0] for row in rows.rows] == list(REGIONS)
        private = engine.query(
            MEMBER_DATASET, "SELECT postcode, COUNT(*) FROM pool_members GROUP BY postcode", epsilon=1.0, delta=1e-6
        )
        assert private.private_keys == ["postcode"]
        yearly = engine.query(
            ROW_DATASET, "SELECT YEAR(shift_date) AS y, COUNT(*) FROM pool_rows GROUP BY y", epsilon=1.0
        )
        assert [row[0] for row in yearly.rows] == list(range(2020, 2026))
    finally:
        engine.close()


def test_policy_writer_takes_any_column_list() -> None:
    from benchmarks.policy_file import Contribution

    text = policy_toml(
        "d", "x.parquet", Contribution(), [PolicyColumn("day", "date", bounds=("2020-01-01", "2025-12-31"))]
    )
    assert '[columns.day]\ntype = "date"\nbounds = ["2020-01-01", "2025-12-31"]' in text
    assert 'unit = "row"' in text and "max_groups" not in text


@pytest.mark.parametrize(
    ("text", "rows"), [("10M", 10_000_000), ("500K", 500_000), ("1_000", 1_000), ("2.5M", 2_500_000)]
)
def test_sizes(text: str, rows: int) -> None:
    assert parse_rows(text) == rows
    assert parse_rows(label(rows)) == rows
