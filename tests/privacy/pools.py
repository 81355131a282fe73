"""Pools with planted values: a category, an e-mail and a number that must never reach a buyer.

``planted_pool`` is the default small pool plus one member (``LONE_MEMBER``)
who alone holds the city ``ZZLEAK42`` and logged ``987654.321`` hours (far
above the bounds), and an ``email`` column unique to each member. Any of
``PLANTED`` in a log line, an error body, a ledger table or a released key
is a leak; ``dirty_pool`` adds NaN, infinities and huge values.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import polars as pl

from tests.conftest import small_pool, write_dataset

LONE_MEMBER = 4242
PLANTED_CITY = "ZZLEAK42"
PLANTED_HOURS = 987654.321
PLANTED_EMAIL = "zzleak42@members.example"
PLANTED = (PLANTED_CITY, PLANTED_EMAIL, "@members.example", "987654.321", "987654")
"""Strings that appear only in the data: never in any output, log or table."""

EXTRA_COLUMNS = """
[columns.email]
type = "category"
"""
"""An e-mail per member: near-unique, with no public keys (so only a DP threshold could release one)."""


def shows_planted(planted: str, shown: str) -> bool:
    """Whether ``planted`` appears in ``shown`` as a whole token, not inside a longer word or printed number.

    A noisy 1987654.25 or 0.9876543 in an answer is no leak of 987654; a
    released ``987654`` or ``987654.321``, or a key ``ZZLEAK42``, is.
    """
    before = r"(?<![\w.])" if planted[0].isalnum() else ""
    after = r"(?![\w]|\.\d)" if planted[-1].isalnum() else ""
    return re.search(before + re.escape(planted) + after, shown, re.IGNORECASE) is not None


def planted_pool() -> pl.DataFrame:
    pool = small_pool().with_columns(
        email=pl.format("member{}@members.example", pl.col("member_id")),
        city=pl.when(pl.col("city") == PLANTED_CITY).then(pl.lit("a")).otherwise(pl.col("city")),
    )
    lone = pl.DataFrame(
        {
            "member_id": [LONE_MEMBER] * 3,
            "region": ["north"] * 3,
            "city": [PLANTED_CITY] * 3,
            "hours": [PLANTED_HOURS] * 3,
            "age": [79] * 3,
            "member_flag": [True] * 3,
            "email": [PLANTED_EMAIL] * 3,
        }
    )
    return pl.concat([pool, lone.select(pool.columns).cast(pool.schema)])


def dirty_pool() -> pl.DataFrame:
    """The planted pool with NaN, ±inf, 1e308 and the largest integers in the value columns."""
    pool = planted_pool()
    specials = np.array([np.nan, np.inf, -np.inf, 1e308, -1e308, 5e-324])
    hours = pool["hours"].to_numpy().copy()
    hours[: len(specials)] = specials
    ages = pool["age"].to_numpy().copy()
    ages[:3] = [np.iinfo(np.int64).max, np.iinfo(np.int64).min, 0]
    return pool.with_columns(hours=pl.Series(hours), age=pl.Series(ages))


PLANTED_DATASETS: dict[str, dict[str, object]] = {
    # name: write_dataset keywords (as tests/api/conftest.py's running_server takes them)
    "shifts": {"frame": planted_pool(), "epsilon": 1000.0, "delta": 1e-3, "extra": EXTRA_COLUMNS},
    "dirty": {"frame": dirty_pool(), "epsilon": 1000.0, "extra": EXTRA_COLUMNS},
    "tiny": {"frame": planted_pool(), "epsilon": 1.0, "max_epsilon_per_query": 1.0, "extra": EXTRA_COLUMNS},
    "zshifts": {"frame": planted_pool(), "epsilon": 1000.0, "accounting": "zcdp", "extra": EXTRA_COLUMNS},
}
"""``shifts`` (pure DP, a large budget), ``dirty`` (its NaN/inf twin), ``tiny`` (ε = 1 in all), ``zshifts`` (zCDP)."""


PUBLIC_REGIONS = pl.DataFrame(
    {"region": ["north", "south", "east", "west"], "label": ["N", "S", "E", "W"], "population": [10, 20, 30, 40]}
)
JOINED_EXTRA = EXTRA_COLUMNS + '\n[public_tables.regions]\nsource = "../data/regions.csv"\nkey = "region"\n'
"""The dataset ``joined``: the planted pool with a public lookup table ``regions`` (unique key ``region``)."""


def write_planted(root: Path) -> Path:
    """Every pool of ``PLANTED_DATASETS``, and ``joined``, under ``root``; returns the policies directory."""
    for name, options in PLANTED_DATASETS.items():
        keywords = dict(options)
        frame = keywords.pop("frame")
        assert isinstance(frame, pl.DataFrame)
        write_dataset(root, frame, name=name, **keywords)  # type: ignore[arg-type]
    PUBLIC_REGIONS.write_csv(root / "data" / "regions.csv")
    return write_dataset(root, planted_pool(), name="joined", epsilon=1000.0, delta=1e-3, extra=JOINED_EXTRA)
