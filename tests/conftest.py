"""Shared fixtures: small pools with their policies, written to a temporary directory."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from engine import Engine

POLICY_TEMPLATE = """\
[dataset]
name = "{name}"
source = "../data/{name}.{suffix}"

[privacy]
{privacy}

[budget]
epsilon = {epsilon}
delta = {delta}
accounting = "{accounting}"
max_epsilon_per_query = {max_epsilon_per_query}
{delta_per_query}
[columns.member_id]
type = "id"

[columns.region]
type = "category"
values = ["north", "south", "east", "west"]

[columns.city]
type = "category"

[columns.hours]
type = "float"
bounds = [0.0, 60.0]

[columns.age]
type = "int"
bounds = [18, 80]

[columns.member_flag]
type = "bool"
{extra}
"""


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--audit-full``: the empirical privacy audits (tests/privacy) draw many more samples."""
    parser.addoption(
        "--audit-full",
        action="store_true",
        default=False,
        help="run the empirical privacy audits in tests/privacy with many more samples (slower, tighter bounds)",
    )


MEMBER_LEVEL = 'unit = "member_id"\nmax_groups = 1\nmax_rows_per_group = 10'
ROW_LEVEL = 'unit = "row"'


def small_pool(rows: int = 600, members: int = 60, seed: int = 1) -> pl.DataFrame:
    """A deterministic pool matching ``POLICY_TEMPLATE``'s columns."""
    import numpy as np

    rng = np.random.default_rng(seed)
    member = rng.integers(1, members + 1, size=rows)
    hours = rng.uniform(0, 20, size=rows)
    hours[rng.random(rows) < 0.05] = np.nan
    return pl.DataFrame(
        {
            "member_id": member,
            "region": np.array(["north", "south", "east", "west"])[rng.integers(0, 4, size=rows)],
            "city": np.array(["a", "b", "c"])[rng.integers(0, 3, size=rows)],
            "hours": pl.Series(hours).fill_nan(None),
            "age": rng.integers(18, 81, size=rows),
            "member_flag": rng.random(rows) < 0.5,
        }
    )


def write_dataset(
    root: Path,
    frame: pl.DataFrame,
    *,
    name: str = "shifts",
    privacy: str = MEMBER_LEVEL,
    epsilon: float = 10.0,
    delta: float = 1e-6,
    accounting: str = "pure",
    max_epsilon_per_query: float = 2.0,
    whole_delta_per_query: bool = True,
    extra: str = "",
    suffix: str = "parquet",
) -> Path:
    """Write ``frame`` and its policy under ``root``; return the policies directory.

    ``whole_delta_per_query`` lets one query spend the pool's whole δ (``max_delta_per_query = delta``), as tests
    not about δ governance assume; False leaves the policy's default cap (a tenth of δ).
    """
    (root / "data").mkdir(parents=True, exist_ok=True)
    policies = root / "policies"
    policies.mkdir(parents=True, exist_ok=True)
    data_path = root / "data" / f"{name}.{suffix}"
    if suffix == "csv":
        frame.write_csv(data_path)
    else:
        frame.write_parquet(data_path)
    (policies / f"{name}.toml").write_text(
        POLICY_TEMPLATE.format(
            name=name,
            suffix=suffix,
            privacy=privacy,
            epsilon=epsilon,
            delta=delta,
            accounting=accounting,
            max_epsilon_per_query=max_epsilon_per_query,
            delta_per_query=f"max_delta_per_query = {delta}\n" if whole_delta_per_query else "",
            extra=extra,
        )
    )
    return policies


@pytest.fixture
def dataset(tmp_path: Path) -> Callable[..., Path]:
    """``dataset(frame=None, **policy)`` writes a pool and policy; returns the policies directory."""

    def make(frame: pl.DataFrame | None = None, **policy: Any) -> Path:
        return write_dataset(tmp_path, small_pool() if frame is None else frame, **policy)

    return make


@pytest.fixture
def engine(dataset: Callable[..., Path], tmp_path: Path) -> Iterator[Engine]:
    """An engine over the default small member-level pool ``shifts``."""
    created = Engine.from_policies(dataset(), ledger=f"sqlite:///{tmp_path / 'ledger.db'}")
    yield created
    created.close()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """A real PostgreSQL server for the whole session (see ``tests/pg_server.py``); stopped at the end.

    Skipped only where the PostgreSQL binaries are not installed (apt package
    ``postgresql-15`` or ``postgresql``); CI installs them.
    """
    from tests.pg_server import PostgresUnavailable, start_server

    try:
        server = start_server()
    except PostgresUnavailable as missing:
        if os.environ.get("COOPDP_REQUIRE_POSTGRES"):  # set by .ci/run: CI must never skip these
            raise
        pytest.skip(str(missing))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres_server: Any) -> str:
    """The URL of the session's PostgreSQL server (its ``postgres`` database)."""
    return str(postgres_server.url())


@pytest.fixture
def postgres_ledger_url(postgres_server: Any) -> Iterator[str]:
    """A fresh, empty database on the session's PostgreSQL server, dropped after the test."""
    url = postgres_server.create_database()
    yield url
    postgres_server.drop_database(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL to a fresh, empty ledger: a SQLite file, or a new database on the session's PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    return str(request.getfixturevalue("postgres_ledger_url"))


SPARK_TEST_CONF = {
    "spark.ui.enabled": "false",
    "spark.sql.shuffle.partitions": "2",
    "spark.default.parallelism": "2",
    "spark.sql.adaptive.enabled": "false",
    "spark.driver.memory": "1g",
    "spark.ui.showConsoleProgress": "false",
}
"""Small and quiet: tiny pools need no shuffle parallelism, and the tests need no UI."""


@pytest.fixture(scope="session")
def spark_session() -> Iterator[Any]:
    """One local Spark (``local[2]``) for the whole test session, stopped at the end.

    Skipped only where pyspark or Java is missing (``pip install -e '.[test]'``
    installs pyspark; ``.ci/run`` installs Java 17 and sets
    ``COOPDP_REQUIRE_SPARK`` so that CI never skips these).
    """
    from engine.backends.spark_session import SparkSettings, get_session
    from engine.errors import BackendUnavailable

    try:
        session = get_session(SparkSettings("local[2]", SPARK_TEST_CONF))
    except (BackendUnavailable, OSError, RuntimeError) as missing:  # no pyspark, or no Java to start it
        if os.environ.get("COOPDP_REQUIRE_SPARK"):
            raise
        pytest.skip(f"Spark is not available here: {missing}")
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def spark_backend(spark_session: Any) -> Any:
    """A SparkBackend on the session's local Spark."""
    from engine.backends.spark import SparkBackend

    return SparkBackend(spark_session)
