"""Totality (invariant 8): one hostile member cannot change how anyone else's rows are read.

Random small pools are stored as one Parquet file, one CSV file, and globs of
several Parquet or CSV files. Then one adversarial member is added where it
hurts most: its rows first in the file, its own file first in the glob's
order, with arbitrary text in every column (unparsable numbers, other date
formats, offsets, huge numbers, ``NaN``, empty strings) and, in its own
Parquet file, columns stored in other types. For random supported queries:

(a) every other member's rows are read exactly as without the adversary;
(b) the exact bounded aggregates move by at most the plan's sensitivity;
(c) the query is answered on both pools (never an error, never a refusal).

Then one regression test for each way a pool's data broke a query before.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from engine import Engine
from engine.backends.base import Backend
from engine.backends.polars import PolarsBackend
from engine.backends.polars_read import read_pool, stored_files
from engine.errors import PolicyError
from engine.plan import QueryPlan
from engine.planner import plan_query
from engine.policy import load_policy
from engine.sql import parse
from tests.conftest import ROW_LEVEL, write_dataset
from tests.test_sensitivity import (
    DAY_COLUMN,
    SCHEMA,
    ZONES,
    ZONES_TABLE,
    assert_moved_within_sensitivity,
    exact_parts_of,
    member_level,
    queries,
    rows,
)

STARTED_AT = '\n[columns.started_at]\ntype = "datetime"\nbounds = ["2024-01-01", "2024-12-31"]\n'
EXTRA = DAY_COLUMN + STARTED_AT + ZONES
POOL_SCHEMA = {**SCHEMA, "started_at": pl.Datetime("us")}
ADVERSARY = 0
"""The adversary's member id: the cooperative gives it, so it is the one value the adversary does not choose."""
DATETIME_QUERIES = (
    "SELECT COUNT(started_at) FROM shifts",
    "SELECT EXTRACT(HOUR FROM started_at) AS h, COUNT(*) FROM shifts GROUP BY h",
    "SELECT DATE_TRUNC('month', started_at) AS m, COUNT(started_at), SUM(hours) FROM shifts GROUP BY m",
    "SELECT region, AVG(age) FROM shifts WHERE started_at >= '2024-06-01' GROUP BY region",
)
HOSTILE_TEXTS = (
    "",
    " ",
    "NaN",
    "nan",
    "inf",
    "-Infinity",
    "1e999",
    "seventy-nine",
    "79.5",
    " 42 ",
    "+7",
    "0x1F",
    str(2**70),
    "9223372036854775808",
    "-9223372036854775809",
    "1_000",
    "29/02/2024 13:37:00",
    "29/02/2024",
    "2024-02-29T13:37:00+05:00",
    "2024-02-29T13:37:00Z",
    "2024-02-29 13:37",
    "2024-02-29",
    "2024-13-45",
    "2024-1-5",
    "yes",
    "maybe",
    "TRUE",
    "north",
    "\x00",
    "ZZLEAK42",
)
OTHER_TYPES: dict[str, st.SearchStrategy[pl.Series]] = {
    "hours": st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=3).map(pl.Series),
    "age": st.lists(st.sampled_from([79.5, float("nan"), 1e30, -0.0]), min_size=1, max_size=3).map(pl.Series),
    "member_flag": st.lists(st.integers(-3, 3), min_size=1, max_size=3).map(pl.Series),
    "day": st.lists(st.integers(0, 20240229), min_size=1, max_size=3).map(pl.Series),
    "started_at": st.lists(st.dates(), min_size=1, max_size=3).map(pl.Series),
    "region": st.lists(st.booleans(), min_size=1, max_size=3).map(pl.Series),
}
"""A column the adversary's own Parquet file stores in another type than the policy declares."""


class Storage:
    """How a pool is stored: one file or a glob of files, Parquet or CSV."""

    def __init__(self, suffix: str, files: int) -> None:
        self.suffix, self.files = suffix, files

    def __repr__(self) -> str:
        return f"{self.files}-{self.suffix}"

    def write(
        self, root: Path, privacy: str, honest: pl.DataFrame, adversary: pl.DataFrame | None, extra: str = EXTRA
    ) -> Path:
        """Write the pool (the adversary's rows first, in the first file) and its policy; return the policies."""
        policies = write_dataset(root, honest, privacy=privacy, extra=extra, suffix=self.suffix)
        ZONES_TABLE.write_csv(root / "data" / "zones.csv")
        (root / "data" / f"shifts.{self.suffix}").unlink()
        parts = [honest.filter(pl.col("member_id") % self.files == i) for i in range(self.files)]
        if adversary is not None:
            parts = [adversary, *parts] if self.files > 1 else [_as_text_where(adversary, honest)]
        folder = root / "data" / "shifts"
        folder.mkdir()
        for index, part in enumerate(parts):
            path = folder / f"{index:02d}.{self.suffix}"
            part.write_csv(path) if self.suffix == "csv" else part.write_parquet(path)
        policy = policies / "shifts.toml"
        policy.write_text(policy.read_text().replace(f"shifts.{self.suffix}", f"shifts/*.{self.suffix}"))
        return policies


def _as_text_where(adversary: pl.DataFrame, honest: pl.DataFrame) -> pl.DataFrame:
    """One file: the adversary's rows first; a column it writes as text is text for everyone (printed, then parsed)."""
    text = [name for name, dtype in adversary.schema.items() if dtype == pl.String() and honest.schema[name] != dtype]
    return pl.concat([adversary, honest.with_columns(pl.col(text).cast(pl.String))], how="vertical_relaxed")


STORAGES = [Storage("parquet", 1), Storage("csv", 1), Storage("parquet", 3), Storage("csv", 2)]


@dataclass(frozen=True)
class Adversary:
    """The adversary's rows: per column, hostile text, its declared type, or (own Parquet file) another type."""

    columns: dict[str, pl.Series | None]
    """None: the column is missing from the adversary's own file (NULL text where it shares one file)."""

    def frame(self, storage: Storage) -> pl.DataFrame:
        height = max((len(series) for series in self.columns.values() if series is not None), default=1)
        columns = {
            name: _stretch(series, height) if series is not None else pl.Series([None] * height, dtype=pl.String)
            for name, series in self.columns.items()
            if series is not None or storage.files == 1
        }
        frame = pl.DataFrame({"member_id": [ADVERSARY] * height, **columns})
        if storage.suffix == "csv" or storage.files == 1:
            frame = frame.with_columns(pl.exclude("member_id").cast(pl.String))
        return frame


def _stretch(series: pl.Series, height: int) -> pl.Series:
    return pl.Series([series[i % len(series)] for i in range(height)], dtype=series.dtype)


@st.composite
def adversaries(draw: st.DrawFn) -> Adversary:
    columns: dict[str, pl.Series | None] = {}
    for name in POOL_SCHEMA:
        if name == "member_id":
            continue
        texts = st.lists(st.one_of(st.sampled_from(HOSTILE_TEXTS), st.text(max_size=12)), min_size=1, max_size=4)
        choices = [texts.map(lambda values: pl.Series(values, dtype=pl.String)), st.none()]
        if name in OTHER_TYPES:
            choices.append(OTHER_TYPES[name])
        columns[name] = draw(st.one_of(choices))
    return Adversary(columns)


honest_rows = rows.map(lambda row: {**row, "started_at": None}) | st.builds(
    lambda row, stamp: {**row, "started_at": stamp},
    rows,
    st.datetimes(min_value=dt.datetime(2023, 12, 1), max_value=dt.datetime(2025, 1, 31)),
)
honest_pools = st.lists(honest_rows, min_size=1, max_size=30)
PRIVACY = [pytest.param(member_level(2, 3), id="member-g2-r3"), pytest.param(ROW_LEVEL, id="row")]
SEED = 77


def assert_adversary_reads_only_its_own_rows(
    backend: Backend, storage: Storage, privacy: str, pool: list[dict], adversary: Adversary, sql: str
) -> None:
    honest = pl.DataFrame(pool, schema=POOL_SCHEMA)
    hostile = adversary.frame(storage)
    hostile = hostile.head(1) if privacy == ROW_LEVEL else hostile  # a row-level unit is one row
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        with_adversary = storage.write(root / "with", privacy, honest, hostile)
        without = storage.write(root / "without", privacy, honest, None)
        plan, exact_with = _answered(with_adversary, sql, backend)
        plan_without, exact_without = _answered(without, sql, backend)
        if isinstance(backend, PolarsBackend):
            others = _read(with_adversary).filter(pl.col("member_id") != str(ADVERSARY))
            assert_frame_equal(others, _read(without), check_dtypes=False)
    assert_moved_within_sensitivity(privacy, sql, (plan, exact_with), (plan_without, exact_without))


def _answered(policies: Path, sql: str, backend: Backend) -> tuple[QueryPlan, dict]:
    """(c): the query is answered: no refusal before the charge, no failure after it."""
    backend.check_schema(plan_query(parse(sql), load_policy(policies / "shifts.toml")))
    return exact_parts_of(policies, sql, backend)


def _read(policies: Path) -> pl.DataFrame:
    """Every row as the backend reads it, every column (the member id as text: a CSV's ids are text)."""
    plan = plan_query(parse(READ_EVERYTHING), load_policy(policies / "shifts.toml"))
    frame = read_pool(plan.source, stored_files(plan.source)).collect()
    return frame.with_columns(pl.col("member_id").cast(pl.String))


READ_EVERYTHING = f"SELECT {', '.join(f'COUNT({name})' for name in POOL_SCHEMA)} FROM shifts"


any_query = st.one_of(queries(), st.sampled_from(DATETIME_QUERIES))


@pytest.mark.parametrize("storage", STORAGES, ids=repr)
@pytest.mark.parametrize("privacy", PRIVACY)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(pool=honest_pools, adversary=adversaries(), sql=any_query)
def test_a_hostile_member_changes_nothing_but_its_own_rows(
    storage: Storage, privacy: str, pool: list[dict], adversary: Adversary, sql: str
) -> None:
    sql = sql.replace("COUNT(DISTINCT member_id)", "COUNT(member_id)") if privacy == ROW_LEVEL else sql
    assert_adversary_reads_only_its_own_rows(PolarsBackend(), storage, privacy, pool, adversary, sql)


@pytest.mark.spark
@pytest.mark.parametrize("storage", [Storage("parquet", 3)], ids=repr)
@settings(
    max_examples=3,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(pool=honest_pools, sql=queries())
def test_a_member_file_of_other_types_is_refused_before_the_charge_on_spark(
    spark_backend: Backend, storage: Storage, pool: list[dict], sql: str
) -> None:
    """Spark reads Parquet files of the declared types only; a file storing another type is refused, uncharged."""
    honest = pl.DataFrame(pool, schema=POOL_SCHEMA)
    adversary = Adversary({"age": pl.Series(["seventy-nine"])}).frame(storage)
    with tempfile.TemporaryDirectory() as directory:
        policies = storage.write(Path(directory), member_level(2, 3), honest, adversary)
        plan = plan_query(parse(sql), load_policy(policies / "shifts.toml"))
        if any(name == "age" for name, _ in plan.source.columns):
            with pytest.raises(PolicyError, match="different types"):
                spark_backend.check_schema(plan)


# --- regressions: each way one member's data broke everyone's queries before ------------------------------

CSV, CSV_GLOB, PARQUET_GLOB = Storage("csv", 1), Storage("csv", 2), Storage("parquet", 3)
STAMPS = [dt.datetime(2024, 3, 1) + dt.timedelta(hours=7 * i) for i in range(200)]


def _honest(**columns: list[object]) -> pl.DataFrame:
    """Typed rows of members 1 to 9; unnamed columns hold ordinary values."""
    height = len(next(iter(columns.values())))
    base = {
        "member_id": [1 + i % 9 for i in range(height)],
        "region": ["north"] * height,
        "city": ["a"] * height,
        "hours": [1.5] * height,
        "age": [30] * height,
        "member_flag": [True] * height,
        "day": [dt.date(2024, 5, 1)] * height,
        "started_at": STAMPS[:1] * height,
    }
    return pl.DataFrame({**base, **columns}, schema=POOL_SCHEMA)


def _hostile(**texts: list[str]) -> pl.DataFrame:
    """The adversary's rows: the named columns as text, others as an honest member's."""
    height = len(next(iter(texts.values())))
    honest = _honest(member_id=[ADVERSARY] * height)
    return honest.with_columns(pl.Series(name, values, dtype=pl.String) for name, values in texts.items())


def _answered_exactly(policies: Path, sql: str) -> dict:
    """The query is answered and charged once (nothing fails after the charge); its exact parts by key."""
    engine = Engine.from_policies(policies, ledger=f"sqlite:///{policies.parent / 'ledger.db'}")
    engine.query("shifts", sql, epsilon=1.0)
    assert engine.ledger.spent("shifts").dataset.epsilon == 1
    return exact_parts_of(policies, sql)[1]


@pytest.mark.parametrize("storage", [CSV, CSV_GLOB], ids=repr)
def test_a_first_member_writing_dates_otherwise_changes_no_one_else_s_dates(storage: Storage, tmp_path: Path) -> None:
    adversary = _hostile(started_at=["29/02/2024 13:37:00"] * 2)
    policies = storage.write(tmp_path, ROW_LEVEL, _honest(started_at=STAMPS), adversary)
    assert _answered_exactly(policies, "SELECT COUNT(started_at) FROM shifts") == {(): [len(STAMPS)]}


def test_a_declared_format_reads_that_format_only(tmp_path: Path) -> None:
    extra = EXTRA.replace('type = "datetime"', 'type = "datetime"\nformat = "%d/%m/%Y %H:%M:%S"')
    adversary = _hostile(started_at=["29/02/2024 13:37:00", "2024-02-29 13:37:00"])
    policies = CSV.write(tmp_path, ROW_LEVEL, _honest(started_at=STAMPS), adversary, extra)
    assert _answered_exactly(policies, "SELECT COUNT(started_at) FROM shifts") == {(): [1]}


@pytest.mark.parametrize("storage", [CSV, CSV_GLOB], ids=repr)
def test_a_datetime_with_an_offset_is_read_in_utc(storage: Storage, tmp_path: Path) -> None:
    adversary = _hostile(started_at=["2024-02-29T13:37:00+05:00", "2024-02-29 13:37Z"])
    policies = storage.write(tmp_path, ROW_LEVEL, _honest(started_at=STAMPS[:1]), adversary)
    by_hour = _answered_exactly(policies, "SELECT EXTRACT(HOUR FROM started_at) AS h, COUNT(*) FROM shifts GROUP BY h")
    assert {key: parts[0] for key, parts in by_hour.items() if parts[0]} == {(0,): 1, (8,): 1, (13,): 1}


@pytest.mark.parametrize("bad", ["seventy-nine", "79.5", str(2**70)])
def test_a_non_integer_beyond_the_csv_inference_window_is_null(bad: str, tmp_path: Path) -> None:
    ages = [str(18 + i % 60) for i in range(10_050)]
    frame = _honest(age=[30] * len(ages)).with_columns(age=pl.Series([*ages[:-1], bad]))
    policies = write_dataset(tmp_path, frame, privacy=ROW_LEVEL, extra=EXTRA, suffix="csv")
    ZONES_TABLE.write_csv(tmp_path / "data" / "zones.csv")
    assert _answered_exactly(policies, "SELECT COUNT(age), AVG(age) FROM shifts")[()][0] == len(ages) - 1


def test_bool_text_outside_the_documented_set_is_null(tmp_path: Path) -> None:
    adversary = _hostile(member_flag=["maybe", " YES ", "f", "0", "ja"])
    policies = CSV.write(tmp_path, ROW_LEVEL, _honest(member_flag=[True, False]), adversary)
    by_flag = _answered_exactly(policies, "SELECT member_flag, COUNT(*) FROM shifts GROUP BY member_flag")
    assert by_flag == {(False,): [3], (True,): [2]}


def test_one_file_of_a_glob_storing_another_type_is_read_per_value(tmp_path: Path) -> None:
    adversary = _hostile(age=["42", "forty-two", " 7 "])
    policies = PARQUET_GLOB.write(tmp_path, ROW_LEVEL, _honest(age=list(range(20, 40))), adversary)
    counted = _answered_exactly(policies, "SELECT COUNT(age), SUM(age) FROM shifts")[()]
    assert counted[0] == 20 + 2
    assert counted[1] == sum(range(20, 40)) + 42 + 18  # 7 is clamped to the lower bound 18


def test_one_file_of_a_glob_without_a_column_reads_it_as_null(tmp_path: Path) -> None:
    adversary = _honest(member_id=[ADVERSARY] * 3).drop("hours")
    policies = PARQUET_GLOB.write(tmp_path, ROW_LEVEL, _honest(hours=[2.0] * 10), adversary)
    assert _answered_exactly(policies, "SELECT COUNT(*), COUNT(hours) FROM shifts") == {(): [13, 10]}


@pytest.mark.parametrize(
    ("column_type", "text_format", "problem"),
    [
        ("date", "%Q/%m/%Y", "uses %Q"),
        ("date", "%d/%m/%Y %H:%M", "uses %H, %M"),
        ("date", "%d/%m", "must name the year"),
        ("datetime", "%d/%m/%Y %H", "must name the minute"),
        ("datetime", "%d%m%Y%d", "more than once"),
        ("int", "%Y", "takes no format"),
    ],
)
def test_a_text_format_is_checked_when_the_policy_loads(
    column_type: str, text_format: str, problem: str, tmp_path: Path
) -> None:
    bounds = "[0, 1]" if column_type == "int" else '["2024-01-01", "2024-12-31"]'
    column = f'\n[columns.stamp]\ntype = "{column_type}"\nbounds = {bounds}\nformat = "{text_format}"\n'
    policies = write_dataset(tmp_path, _honest(age=[30]), extra=column)
    with pytest.raises(PolicyError, match=problem):
        load_policy(policies / "shifts.toml")
