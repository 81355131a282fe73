"""The Spark backend answers exactly what the Polars backend answers, before any noise.

Both run the same plan with the same seed on the same pool; their bounded
exact aggregates (keys in order, every part, quantile samples as multisets)
must be equal. That covers the member bounding (caps, the seeded choice of
``max_groups`` groups and of quantile samples, total mode's systematic
sampling across a member's groups), fixed point, public key grids and private keys. Runs on a real local Spark (``local[2]``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, Phase, given, settings

from engine import Engine
from engine.backends.base import ExactAggregates
from engine.backends.polars import PolarsBackend
from engine.errors import PolicyError
from engine.planner import plan_query
from engine.policy import load_policy
from engine.sql import parse
from tests.conftest import MEMBER_LEVEL, ROW_LEVEL, small_pool, write_dataset
from tests.test_sensitivity import MEMBER_ONLY, frame_of, member_level, member_total, pools, queries, write_pool

pytestmark = pytest.mark.spark

SEED = 4242
CONSENT = '\n[purposes.commercial]\nconsent_column = "member_flag"\n'
QUERIES = (
    "SELECT COUNT(*), COUNT(hours), SUM(hours), AVG(age) FROM shifts",
    "SELECT region, COUNT(*), SUM(hours), AVG(hours), VAR_SAMP(hours), STDDEV(age) FROM shifts GROUP BY region",
    "SELECT region, member_flag, COUNT(DISTINCT member_id), SUM(age) FROM shifts GROUP BY region, member_flag",
    "SELECT city, COUNT(*), SUM(hours) FROM shifts GROUP BY city",
    "SELECT city, region, COUNT(DISTINCT member_id) FROM shifts WHERE hours > 2 GROUP BY city, region",
    "SELECT region, MEDIAN(hours), QUANTILE(age, 0.9) FROM shifts GROUP BY region",
    "SELECT city, MEDIAN(age - hours) FROM shifts GROUP BY city",
    "SELECT CASE WHEN age < 40 THEN 'younger' ELSE 'older' END AS band, FLOOR(hours / 5) * 5 AS bin, COUNT(*) "
    "FROM shifts GROUP BY band, bin",
    "SELECT SUM(CASE WHEN age > 40 THEN hours ELSE 0 END), AVG(ROUND(hours / 3, 1) + CAST(age * 0.5 AS INT)) "
    "FROM shifts WHERE city LIKE 'a%' OR region IN ('north', 'east') OR hours IS NULL",
    "SELECT region, SUM(LEAST(GREATEST(hours - age, -10), 10)), AVG(COALESCE(hours, 30) / 4) FROM shifts "
    "WHERE NOT (age BETWEEN 30 AND 40) GROUP BY region",
)
PRIVACY = [
    pytest.param(MEMBER_LEVEL, id="member-g1-r10"),
    pytest.param(member_level(2, 3), id="member-g2-r3"),
    pytest.param(member_total(5), id="member-total5"),
    pytest.param(ROW_LEVEL, id="row"),
]


def comparable(exact: ExactAggregates) -> tuple[list, list]:
    """Keys in order and parts as values; a quantile's sample is a multiset (its order means nothing)."""
    parts = [
        [sorted(value) if isinstance(value, list | np.ndarray) else value for value in part] for part in exact.parts
    ]
    return exact.keys, parts


def assert_same(spark_backend: Any, policy_file: Path, sql: str, consent_column: str | None = None) -> None:
    plan = plan_query(parse(sql), load_policy(policy_file), consent_column=consent_column)
    spark_backend.check_schema(plan)
    expected = comparable(PolarsBackend().execute(plan, seed=SEED))
    assert comparable(spark_backend.execute(plan, seed=SEED)) == expected, sql


def many_members(members: int = 40, text_ids: bool = False) -> pl.DataFrame:
    """The small pool with members spread over regions and cities (so bounding drops groups and rows)."""
    frame = small_pool(rows=500, members=members, seed=3)
    return frame.with_columns(("m-" + pl.col("member_id").cast(pl.String)).alias("member_id")) if text_ids else frame


@pytest.mark.parametrize("privacy", PRIVACY)
def test_spark_equals_polars_over_the_supported_subset(spark_backend: Any, tmp_path: Path, privacy: str) -> None:
    policies = write_dataset(tmp_path, many_members(), privacy=privacy)
    for sql in QUERIES:
        if privacy == ROW_LEVEL:
            sql = sql.replace("COUNT(DISTINCT member_id)", "COUNT(member_id)")
        assert_same(spark_backend, policies / "shifts.toml", sql)


@pytest.mark.parametrize("privacy", [member_level(1, 2), member_total(4)], ids=["member-g1-r2", "member-total4"])
def test_text_member_ids_are_drawn_alike(spark_backend: Any, tmp_path: Path, privacy: str) -> None:
    """Text ids go through the chunked text hash on both engines: the same groups, rows and samples are kept."""
    policies = write_dataset(tmp_path, many_members(text_ids=True), privacy=privacy)
    for sql in QUERIES[1:7]:
        assert_same(spark_backend, policies / "shifts.toml", sql)


def test_consent_purpose_filters_alike(spark_backend: Any, tmp_path: Path) -> None:
    policies = write_dataset(tmp_path, many_members(), extra=CONSENT)
    for sql in QUERIES[:3]:
        assert_same(spark_backend, policies / "shifts.toml", sql, consent_column="member_flag")


@settings(
    max_examples=8,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # no shrinking: each step costs two Spark jobs
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(pool=pools, sql=queries())
def test_spark_equals_polars_on_random_pools_and_queries(spark_backend: Any, pool: list[dict], sql: str) -> None:
    """Hostile values (NaN, ±inf, huge integers, NULLs, stray keys, dates outside their range) included."""
    for privacy in (member_level(2, 3), member_total(3), ROW_LEVEL):
        query = sql
        if privacy == ROW_LEVEL:
            for member_only, stand_in in MEMBER_ONLY.items():
                query = query.replace(member_only, stand_in)
        with tempfile.TemporaryDirectory() as directory:
            policies = write_pool(Path(directory), frame_of(pool), privacy)
            assert_same(spark_backend, policies / "shifts.toml", query)


def test_engine_runs_each_dataset_on_the_backend_its_policy_names(spark_backend: Any, tmp_path: Path) -> None:
    """One engine, two datasets: ``backend = "spark"`` runs on Spark, the other on Polars; results have one shape."""
    policies = write_dataset(tmp_path, many_members(), name="on_polars")
    write_dataset(tmp_path, many_members(), name="on_spark")
    spark_policy = policies / "on_spark.toml"
    spark_policy.write_text(spark_policy.read_text().replace("[dataset]\n", '[dataset]\nbackend = "spark"\n', 1))
    engine = Engine.from_policies(
        policies, ledger=f"sqlite:///{tmp_path / 'ledger.db'}", backends={"spark": spark_backend}
    )
    try:
        sql = "SELECT region, COUNT(*) AS n, AVG(hours) AS h FROM {} GROUP BY region"
        on_polars = engine.query("on_polars", sql.format("on_polars"), epsilon=1.0)
        on_spark = engine.query("on_spark", sql.format("on_spark"), epsilon=1.0)
        assert engine.backend(engine.policy("on_spark")) is spark_backend
        assert isinstance(engine.backend(engine.policy("on_polars")), PolarsBackend)
        assert on_spark.columns == on_polars.columns == ["region", "n", "h"]
        assert (
            [row[0] for row in on_spark.rows]
            == [row[0] for row in on_polars.rows]
            == ["north", "south", "east", "west"]
        )
        assert on_spark.accuracy == on_polars.accuracy and on_spark.cost == on_polars.cost
    finally:
        engine.close()


def test_spark_refuses_what_it_cannot_read_like_polars_before_any_charge(spark_backend: Any, tmp_path: Path) -> None:
    as_text = many_members().with_columns(pl.col("age").cast(pl.String))
    policies = write_dataset(tmp_path / "text", as_text)
    plan = plan_query(parse("SELECT AVG(age) FROM shifts"), load_policy(policies / "shifts.toml"))
    with pytest.raises(PolicyError, match="stored as string"):
        spark_backend.check_schema(plan)
    policies = write_dataset(tmp_path / "csv", many_members(), suffix="csv")
    plan = plan_query(parse("SELECT COUNT(*) FROM shifts"), load_policy(policies / "shifts.toml"))
    with pytest.raises(PolicyError, match="Parquet only"):
        spark_backend.check_schema(plan)
    renamed = many_members().rename({"hours": "Hours"})  # Spark's own lookup would ignore the case
    policies = write_dataset(tmp_path / "case", renamed)
    plan = plan_query(parse("SELECT SUM(hours) FROM shifts"), load_policy(policies / "shifts.toml"))
    with pytest.raises(PolicyError, match="has no column hours"):
        spark_backend.check_schema(plan)


def test_spark_draws_what_the_reference_draws(spark_session: Any) -> None:
    """The shared hash on Spark's signed BIGINTs: bit for bit the reference's words and draws."""
    from engine.backends import draw as hashing
    from engine.backends.spark_exprs import with_draw, with_word

    texts = ["", "a", "member-0001", "héllo wörld, a somewhat longer text", None, "日本"]
    numbers = [0, -1, 2**62, -(2**63), None, 7]
    frame = spark_session.createDataFrame(list(zip(texts, numbers, strict=True)), "text string, number long")
    frame = with_word(frame, "text", False, "text_word")
    frame = with_word(frame, "number", True, "number_word")
    frame = with_draw(frame, 2**62 + 12345, ["text_word", "number_word"], "draw")
    unsigned = [
        tuple(value % 2**64 for value in row) for row in frame.select("text_word", "number_word", "draw").collect()
    ]
    expected = [
        (hashing.reference_word(t), hashing.reference_word(n), hashing.reference_draw(2**62 + 12345, [t, n]))
        for t, n in zip(texts, numbers, strict=True)
    ]
    assert unsigned == expected
