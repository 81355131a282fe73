"""Pools with a known shape of contribution: what the tests of contribution bounds and their bias run on."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from tests.test_sensitivity import SCHEMA as SENSITIVITY_SCHEMA

REGIONS = ("north", "south", "east", "west")
SCHEMA = {name: dtype for name, dtype in SENSITIVITY_SCHEMA.items() if name != "day"}
"""The columns of ``tests.conftest.POLICY_TEMPLATE``."""
FIXED_HOURS = "bounds = [0.0, 60.0]"
AUTO_HOURS = 'bounds = "auto"\nrange = [0.0, 60.0]'
HOURS_SCALE = 2**20
"""The fixed-point scale of ``hours`` in [0, 60] (``engine.plan.FixedPoint``): k units are k / HOURS_SCALE hours."""


def with_auto_hours(policies: Path, name: str = "shifts") -> Path:
    """Make ``hours`` (``tests.conftest.POLICY_TEMPLATE``) a ``bounds = "auto"`` column in the same range [0, 60]."""
    path = policies / f"{name}.toml"
    text = path.read_text(encoding="utf-8")
    assert text.count(FIXED_HOURS) == 1
    path.write_text(text.replace(FIXED_HOURS, AUTO_HOURS), encoding="utf-8")
    return policies


def aggregate_query(group_by: str, aggregates: tuple[str, ...], where: str = "") -> str:
    """``SELECT keys, aggregate AS c0, … FROM shifts [WHERE …] [GROUP BY keys]``."""
    keys = f"{group_by}, " if group_by else ""
    grouping = f" GROUP BY {group_by}" if group_by else ""
    columns = ", ".join(f"{aggregate} AS c{index}" for index, aggregate in enumerate(aggregates))
    return f"SELECT {keys}{columns} FROM shifts{where}{grouping}"


def truncation_pool(light: int, heavy: int, heavy_rows: int, regions: tuple[str, ...] = ("north",)) -> pl.DataFrame:
    """``light`` members with one row, ``heavy`` members with ``heavy_rows`` rows cycling over ``regions``."""
    members = list(range(light)) + [member for member in range(light, light + heavy) for _ in range(heavy_rows)]
    region = ["north"] * light + [regions[index % len(regions)] for _ in range(heavy) for index in range(heavy_rows)]
    count = len(members)
    return pl.DataFrame(
        {
            "member_id": members,
            "region": region,
            "city": ["a"] * count,
            "hours": [8.0] * count,
            "age": [30] * count,
            "member_flag": [True] * count,
        },
        schema=SCHEMA,
    )


def heavy_tail_pool() -> pl.DataFrame:
    """3,000 members with 1–3 rows and a populated tail: 600 members with 60 to 179 rows (78,000 rows in all)."""
    counts = [1 + member % 3 for member in range(3_000)] + [60 + member % 120 for member in range(600)]
    return rows_per_member(counts)


def zipf_pool() -> pl.DataFrame:
    """Member i has ⌊1000 / i⌋ rows (at least 1), for 2,000 members: a Zipf tail with a handful of members per bin."""
    return rows_per_member([max(1, 1_000 // rank) for rank in range(1, 2_001)])


def rows_per_member(counts: list[int]) -> pl.DataFrame:
    members = [member for member, count in enumerate(counts) for _ in range(count)]
    return pl.DataFrame(
        {
            "member_id": members,
            "region": [REGIONS[index % 4] for index in range(len(members))],
            "city": ["a"] * len(members),
            "hours": [8.0] * len(members),
            "age": [30] * len(members),
            "member_flag": [True] * len(members),
        },
        schema=SCHEMA,
    )
