"""Choosing a backend per dataset, its settings, and the hash both backends share (no Spark needed here)."""

from __future__ import annotations

import sys
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine import Engine
from engine.backends import BACKENDS
from engine.backends import draw as hashing
from engine.backends import polars as polars_backend
from engine.backends.spark_session import SparkSettings, get_session
from engine.errors import BackendUnavailable, PolicyError
from engine.planner import plan_query
from engine.policy import BACKEND_NAMES, load_policy
from engine.sql import parse
from tests.conftest import ROW_LEVEL, small_pool


def with_dataset_lines(policy_file: Path, lines: str, source: str | None = None) -> Path:
    text = policy_file.read_text().replace("[dataset]\n", f"[dataset]\n{lines}\n", 1)
    if source is not None:
        text = "\n".join(f'source = "{source}"' if line.startswith("source =") else line for line in text.splitlines())
    policy_file.write_text(text)
    return policy_file


def test_every_backend_a_policy_may_name_is_registered() -> None:
    assert set(BACKEND_NAMES) == set(BACKENDS)


def test_backend_defaults_to_polars_and_rejects_unknown_names(dataset) -> None:
    policy_file = dataset() / "shifts.toml"
    assert load_policy(policy_file).dataset.backend == "polars"
    with_dataset_lines(policy_file, 'backend = "duckdb"')
    with pytest.raises(PolicyError, match=r"dataset\.backend: .*polars, spark"):
        load_policy(policy_file)


def test_a_uri_source_is_left_to_spark_untouched(dataset) -> None:
    policy_file = with_dataset_lines(dataset() / "shifts.toml", 'backend = "spark"', source="s3a://pool-bucket/shifts/")
    policy = load_policy(policy_file)
    assert policy.source_uri == "s3a://pool-bucket/shifts/" and policy.source_paths == ()
    source = plan_query(parse("SELECT COUNT(*) FROM shifts"), policy).source
    assert source.uri == "s3a://pool-bucket/shifts/" and source.paths == ()


def test_a_uri_source_needs_the_spark_backend(dataset) -> None:
    policy_file = with_dataset_lines(dataset() / "shifts.toml", "", source="hdfs://namenode/pools/shifts.parquet")
    with pytest.raises(PolicyError, match='needs backend = "spark"'):
        load_policy(policy_file)


def test_spark_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COOPDP_SPARK_MASTER", raising=False)
    monkeypatch.delenv("COOPDP_SPARK_CONF", raising=False)
    assert SparkSettings.from_environment() == SparkSettings("local[*]", {})
    monkeypatch.setenv("COOPDP_SPARK_MASTER", "spark://head:7077")
    monkeypatch.setenv("COOPDP_SPARK_CONF", '{"spark.executor.memory": "8g", "spark.executor.cores": 4}')
    assert SparkSettings.from_environment() == SparkSettings(
        "spark://head:7077", {"spark.executor.memory": "8g", "spark.executor.cores": "4"}
    )


@pytest.mark.parametrize(
    ("conf", "problem"),
    [
        ("spark.executor.memory=8g", "not valid JSON"),
        ('["spark.executor.memory"]', "must be a JSON object"),
        ('{"spark.sql.ansi.enabled": "true"}', "may not set spark.sql.ansi.enabled"),
        ('{"spark.sql.session.timeZone": "Europe/Paris"}', "may not set spark.sql.session.timeZone"),
    ],
)
def test_bad_spark_settings_are_refused(monkeypatch: pytest.MonkeyPatch, conf: str, problem: str) -> None:
    monkeypatch.setenv("COOPDP_SPARK_CONF", conf)
    with pytest.raises(PolicyError, match=problem):
        SparkSettings.from_environment()


def test_without_pyspark_a_spark_dataset_fails_clearly_and_costs_nothing(
    dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyspark.sql", None)  # what an environment without pyspark imports
    with pytest.raises(BackendUnavailable, match="pyspark is not installed"):
        get_session(SparkSettings())
    policies = dataset()
    with_dataset_lines(policies / "shifts.toml", 'backend = "spark"')
    engine = Engine.from_policies(policies, ledger=f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        with pytest.raises(BackendUnavailable):
            engine.query("shifts", "SELECT COUNT(*) FROM shifts", epsilon=0.5)
        assert engine.budgets("shifts")[0].spent.epsilon == 0
    finally:
        engine.close()


def test_row_level_count_of_rows_reads_every_row(dataset) -> None:
    """``SELECT COUNT(*)`` reads no column; the rows must still be counted (it once gave 0)."""
    plan = plan_query(parse("SELECT COUNT(*) FROM shifts"), load_policy(dataset(privacy=ROW_LEVEL) / "shifts.toml"))
    assert polars_backend.PolarsBackend().execute(plan, seed=1).parts == [[small_pool().height]]


# --- the shared hash ---------------------------------------------------------------

texts = st.one_of(st.none(), st.text(max_size=40))
integers = st.one_of(st.none(), st.integers(min_value=-(2**63), max_value=2**63 - 1))


@given(seed=st.integers(min_value=0, max_value=2**63 - 1), words=st.lists(st.tuples(texts, integers), min_size=1))
def test_polars_draws_what_the_reference_draws(seed: int, words: list[tuple[str | None, int | None]]) -> None:
    frame = pl.LazyFrame(
        {"text": [text for text, _ in words], "number": [number for _, number in words]},
        schema={"text": pl.String, "number": pl.Int64},
    )
    frame = polars_backend._with_word(frame, "text", pl.String(), "text_word")
    frame = polars_backend._with_word(frame, "number", pl.Int64(), "number_word")
    frame = polars_backend._with_draw(frame, seed, ["text_word", "number_word"], "draw")
    expected = [
        (hashing.reference_word(text), hashing.reference_word(number), hashing.reference_draw(seed, [text, number]))
        for text, number in words
    ]
    assert frame.select("text_word", "number_word", "draw").collect().rows() == expected


def test_the_reference_hash_spreads_its_draws() -> None:
    """Draws of consecutive members fall evenly into halves of the 63-bit range (a broken mixer would not)."""
    draws = [hashing.reference_draw(7, [member, 0]) for member in range(2_000)]
    assert all(0 <= value < 2**63 for value in draws)
    upper = sum(value >= 2**62 for value in draws)
    assert 900 < upper < 1_100
    assert len(set(draws)) == len(draws)
