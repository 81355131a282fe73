"""The demo cooperative: a synthetic pool of gig-work shifts and its policy.

Members log skewed numbers of shifts (many log a handful, a few hundreds),
mostly in one home region; some hours are missing. Deterministic for a seed.
Beside the pool lies a public lookup table of the regions (no member data).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import polars as pl

DATASET = "gig_work"
REGIONS = ("north", "south", "east", "west")
CITIES = tuple(f"city_{index:02d}" for index in range(40))
FIRST_DAY, LAST_DAY = dt.date(2024, 1, 1), dt.date(2025, 12, 31)
REGIONS_TABLE = pl.DataFrame(
    {
        "region": list(REGIONS),
        "zone": ["highlands", "coast", "coast", "plains"],
        "living_cost": [0.92, 1.18, 1.05, 0.85],
    }
)
"""A public table a query may join: each region's zone and cost-of-living index."""

POLICY = f"""\
# The demo cooperative's policy (created by `coopdp demo`; edit freely).
[dataset]
name = "{DATASET}"
source = "../data/{DATASET}.parquet"
description = "Shifts logged by members of the riders' cooperative (synthetic demo pool)"

[privacy]
unit = "member_id"          # member-level privacy
# How much one member may add to a query: chosen per query by DP ("auto", up to
# auto_limit), or fixed numbers. Total: rows over all groups; or per group:
# max_groups groups of max_rows_per_group rows' worth. The engine picks the mode.
max_rows_per_member = "auto"
max_groups = "auto"
max_rows_per_group = "auto"
auto_limit = 1024           # the largest bound auto may choose
auto_share = 0.1            # the share of each query's epsilon spent choosing

[budget]
epsilon = 10.0              # for all buyers together, forever
delta = 1e-6
accounting = "pure"
max_epsilon_per_query = 1.0

[columns.member_id]
type = "id"

[columns.region]
type = "category"
values = {json.dumps(list(REGIONS))}

[columns.city]
type = "category"           # no values: private keys

[columns.hours]
type = "float"
bounds = [0.0, 60.0]

[columns.earnings]
type = "float"
bounds = [0.0, 400.0]

[columns.age]
type = "int"
bounds = [18, 80]

[columns.consent_commercial]
type = "bool"

[columns.shift_date]
type = "date"
bounds = ["{FIRST_DAY}", "{LAST_DAY}"]

[public_tables.regions]
source = "../data/regions.csv"
key = "region"
description = "Each region's zone and cost-of-living index (public statistics)"

[buyers.uni_lab]
epsilon = 3.0
purpose = "research"
"""


def make_pool(members: int = 30_000, seed: int = 7) -> pl.DataFrame:
    """About ten rows per member on average, heavily skewed."""
    rng = np.random.default_rng(seed)
    shifts = np.minimum(np.ceil(rng.lognormal(mean=1.3, sigma=1.1, size=members)), 400).astype(np.int64)
    member_ids = np.repeat(np.arange(1, members + 1), shifts)
    rows = member_ids.size
    home_region = rng.integers(0, len(REGIONS), size=members)
    moves = rng.random(rows) < 0.1
    region_index = np.where(moves, rng.integers(0, len(REGIONS), size=rows), np.repeat(home_region, shifts))
    ages = np.repeat(rng.integers(18, 71, size=members), shifts)
    hours = np.round(rng.gamma(shape=2.0, scale=2.5, size=rows), 2)
    hours[rng.random(rows) < 0.02] = np.nan
    earnings = np.round(hours * rng.uniform(9, 22, size=rows), 2)
    return pl.DataFrame(
        {
            "member_id": member_ids,
            "region": np.asarray(REGIONS)[region_index],
            "city": np.asarray(CITIES)[np.repeat(rng.integers(0, len(CITIES), size=members), shifts)],
            "hours": pl.Series(hours).fill_nan(None),
            "earnings": pl.Series(earnings).fill_nan(None),
            "age": ages,
            "consent_commercial": np.repeat(rng.random(members) < 0.7, shifts),
            "shift_date": np.datetime64(FIRST_DAY, "D") + rng.integers(0, (LAST_DAY - FIRST_DAY).days + 1, size=rows),
        }
    )


def ensure_demo(policies: Path) -> list[str]:
    """Create the demo pool and policy where missing; return what was created."""
    created = []
    policy_path = policies / f"{DATASET}.toml"
    data_path = policies.parent / "data" / f"{DATASET}.parquet"
    if not data_path.exists():
        data_path.parent.mkdir(parents=True, exist_ok=True)
        make_pool().write_parquet(data_path)
        created.append(str(data_path))
    regions_path = data_path.parent / "regions.csv"
    if not regions_path.exists():
        REGIONS_TABLE.write_csv(regions_path)
        created.append(str(regions_path))
    if not policy_path.exists():
        policies.mkdir(parents=True, exist_ok=True)
        policy_path.write_text(POLICY, encoding="utf-8")
        created.append(str(policy_path))
    return created


EXAMPLES: tuple[tuple[str, float, str], ...] = (
    (
        "Shifts, hours and age by region (member-level, public keys)",
        0.3,
        "SELECT region, COUNT(*) AS shifts, SUM(hours) AS total_hours, AVG(age) AS mean_age "
        "FROM gig_work WHERE age >= 25 GROUP BY region ORDER BY shifts DESC",
    ),
    (
        "Mean shift length of long shifts in two regions",
        0.1,
        "SELECT COUNT(*) AS shifts, AVG(hours) AS mean_hours, SUM(earnings) / COUNT(*) AS per_shift "
        "FROM gig_work WHERE region IN ('north', 'east') AND hours BETWEEN 4 AND 12",
    ),
    (
        "Shifts and median shift length by age band (CASE labels, DP median)",
        0.2,
        "SELECT CASE WHEN age < 30 THEN 'under 30' WHEN age < 50 THEN '30-49' ELSE '50+' END AS band, "
        "COUNT(*) AS shifts, MEDIAN(hours) AS median_hours FROM gig_work GROUP BY band ORDER BY band",
    ),
    (
        "Shifts per quarter of 2025 (a date column; every quarter of its declared range is released)",
        0.1,
        "SELECT DATE_TRUNC('quarter', shift_date) AS quarter, COUNT(*) AS shifts FROM gig_work "
        "GROUP BY quarter HAVING quarter >= '2025-01-01'",
    ),
    (
        "Pay adjusted for living costs, per zone (a public lookup table joined on its key)",
        0.2,
        "SELECT r.zone, COUNT(*) AS shifts, AVG(earnings / r.living_cost) AS real_pay "
        "FROM gig_work g JOIN regions r ON g.region = r.region GROUP BY r.zone",
    ),
    (
        "Refused: rows are never released",
        0.1,
        "SELECT * FROM gig_work",
    ),
)
