"""A synthetic cooperative pool of any size, streamed to partitioned Parquet.

The shape is what makes member-level bounding work hard: rows per member are
Zipf-distributed (most members have 1–3 rows, a long tail has hundreds),
members mostly stay in a home region, sector and postcode but not always, and
keys come in three cardinalities (4 public, 50 public, 5,000 private with
skewed popularity). Members are generated whole, a chunk at a time, and each
chunk is written as one Parquet part, so memory stays at about one chunk.
The same seed gives the same bytes.

    python -m benchmarks generate --rows 10000000 --out benchmarks/data/pool_10M
"""

from __future__ import annotations

import datetime as dt
import json
import resource
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from benchmarks.policy_file import AUTO, Contribution, PolicyColumn, write_policy

REGIONS = ("north", "south", "east", "west")
SECTORS = tuple(f"sector_{i:02d}" for i in range(50))
POSTCODES = tuple(f"pc{i:04d}" for i in range(5_000))
FIRST_DAY, LAST_DAY = dt.date(2020, 1, 1), dt.date(2025, 12, 31)
EPOCH = dt.date(1970, 1, 1)
HOURS_BOUNDS = (0.0, 24.0)
EARNINGS_BOUNDS = (0.0, 500.0)
AGE_BOUNDS = (18, 80)

ZIPF_EXPONENT = 1.8
"""Rows per member ~ Zipf(1.8): P(1) ≈ 0.53, P(≤ 3) ≈ 0.78, mean ≈ 7 once capped."""
MAX_ROWS_PER_MEMBER = 800
STAY_HOME = 0.85
"""Share of a member's rows in their home region and sector; the rest spread at random."""
NULL_SHARE = 0.02
CONSENT_SHARE = 0.8
PARTS_DIR = "parts"
POLICIES_DIR = "policies"
MANIFEST = "manifest.json"

ROW_DATASET, MEMBER_DATASET = "pool_rows", "pool_members"
MEMBER_BOUNDS = Contribution("member_id", max_groups=1, max_rows_per_group=10)
"""The fixed member-level policy of the generated pools (speed suite, peers, and accuracy with ``--bounds fixed``)."""
AUTO_MEMBER_BOUNDS = Contribution("member_id", max_groups=AUTO, max_rows_per_group=AUTO, max_rows_per_member=AUTO)
"""Every contribution bound chosen by the engine per query (accuracy with ``--bounds auto``)."""
POLICY_COLUMNS: tuple[PolicyColumn, ...] = (
    PolicyColumn("member_id", "id"),
    PolicyColumn("region", "category", values=REGIONS),
    PolicyColumn("sector", "category", values=SECTORS),
    PolicyColumn("postcode", "category"),
    PolicyColumn("hours", "float", bounds=HOURS_BOUNDS),
    PolicyColumn("earnings", "float", bounds=EARNINGS_BOUNDS),
    PolicyColumn("age", "int", bounds=AGE_BOUNDS),
    PolicyColumn("consent_research", "bool"),
    PolicyColumn("shift_date", "date", bounds=(FIRST_DAY.isoformat(), LAST_DAY.isoformat())),
)
"""What the generated policies declare: every column of the pool."""
AUTO_POLICY_COLUMNS: tuple[PolicyColumn, ...] = tuple(
    {
        "hours": PolicyColumn("hours", "float", bounds="auto", range=HOURS_BOUNDS),
        "earnings": PolicyColumn("earnings", "float", bounds="auto", range=EARNINGS_BOUNDS),
    }.get(column.name, column)
    for column in POLICY_COLUMNS
)
"""The automatic policy's columns: the summed ones' clamp bounds chosen by DP inside the fixed bounds."""


@dataclass(frozen=True)
class PoolSpec:
    rows: int
    seed: int = 20_261_124
    chunk_rows: int = 2_000_000


@dataclass(frozen=True)
class Pool:
    """A generated pool on disk: its parts, its two policies (row- and member-level) and how it was made."""

    directory: Path
    spec: PoolSpec
    members: int
    seconds: float

    @property
    def parts(self) -> list[Path]:
        return sorted((self.directory / PARTS_DIR).glob("*.parquet"))

    @property
    def policies(self) -> Path:
        return self.directory / POLICIES_DIR


def generate_pool(spec: PoolSpec, out: Path, show_progress: bool = True) -> Pool:
    """Write the pool's parts, then its manifest and policies; reuse a complete pool of the same spec."""
    existing = load_pool(out)
    if existing is not None and existing.spec == spec:
        return existing
    parts = out / PARTS_DIR
    parts.mkdir(parents=True, exist_ok=True)
    for stale in parts.glob("*.parquet"):
        stale.unlink()
    (out / MANIFEST).unlink(missing_ok=True)
    start = time.perf_counter()
    members = 0
    with Progress(
        "generating", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), disable=not show_progress
    ) as progress:
        task = progress.add_task("rows", total=spec.rows)
        for index, chunk in enumerate(pool_chunks(spec)):
            chunk.write_parquet(parts / f"part-{index:05d}.parquet", row_group_size=500_000)
            members = int(chunk["member_id"].max())  # members are numbered 1, 2, … across chunks
            progress.advance(task, chunk.height)
    pool = Pool(out, spec, members, time.perf_counter() - start)
    write_policies(out)
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # this process's peak, imports included
    manifest = {**asdict(spec), "members": members, "seconds": pool.seconds, "peak_rss_mib": peak_rss_mib}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return pool


def load_pool(directory: Path) -> Pool | None:
    """The pool a finished ``generate_pool`` left in ``directory``, or None."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    spec = PoolSpec(manifest["rows"], manifest["seed"], manifest["chunk_rows"])
    return Pool(directory, spec, manifest["members"], manifest["seconds"])


def write_policies(directory: Path, columns: tuple[PolicyColumn, ...] = POLICY_COLUMNS) -> None:
    """A row-level and a member-level policy over the same parts."""
    source = f"../{PARTS_DIR}/*.parquet"
    policies = directory / POLICIES_DIR
    write_policy(policies / f"{ROW_DATASET}.toml", ROW_DATASET, source, Contribution(), columns)
    write_policy(policies / f"{MEMBER_DATASET}.toml", MEMBER_DATASET, source, MEMBER_BOUNDS, columns)


def pool_chunks(spec: PoolSpec) -> Iterator[pl.DataFrame]:
    """Chunks of whole members (the last one may be cut), exactly ``spec.rows`` rows in all."""
    rng = np.random.default_rng(spec.seed)
    written, first_member = 0, 1
    while written < spec.rows:
        rows = min(spec.chunk_rows, spec.rows - written)
        chunk = _chunk(rng, first_member, rows)
        yield chunk
        written += rows
        first_member += int(chunk["member_id"].n_unique())


def rows_per_member(rng: np.random.Generator, rows: int) -> np.ndarray:
    """Zipf counts adding up to exactly ``rows`` (the last member takes what is left)."""
    counts = np.empty(0, dtype=np.int64)
    while counts.sum() < rows:
        more = np.minimum(rng.zipf(ZIPF_EXPONENT, size=rows // 4 + 16), MAX_ROWS_PER_MEMBER)
        counts = np.concatenate([counts, more])
    ends = np.cumsum(counts)
    last = int(np.searchsorted(ends, rows))
    counts = counts[: last + 1]
    counts[-1] -= int(ends[last]) - rows
    return counts


def _chunk(rng: np.random.Generator, first_member: int, rows: int) -> pl.DataFrame:
    counts = rows_per_member(rng, rows)
    n_members = len(counts)
    owner = rng.permutation(np.repeat(np.arange(n_members, dtype=np.int64), counts))
    home_region = rng.integers(0, len(REGIONS), n_members)
    home_sector = rng.integers(0, len(SECTORS), n_members)
    postcode = _skewed_postcodes(rng, n_members)
    age = rng.integers(AGE_BOUNDS[0], AGE_BOUNDS[1] + 1, n_members)
    consent = rng.random(n_members) < CONSENT_SHARE
    away = rng.random(rows) >= STAY_HOME
    region = np.where(away, rng.integers(0, len(REGIONS), rows), home_region[owner])
    sector = np.where(away, rng.integers(0, len(SECTORS), rows), home_sector[owner])
    hours = rng.gamma(2.0, 2.5, rows)  # mostly short shifts, a few past the 24 h bound (clamped)
    earnings = hours * rng.uniform(8.0, 30.0, rows)
    days = rng.integers(0, (LAST_DAY - FIRST_DAY).days + 1, rows)
    return pl.DataFrame(
        {
            "member_id": owner + first_member,
            "region": _labels(region, REGIONS),
            "sector": _labels(sector, SECTORS),
            "postcode": _labels(postcode[owner], POSTCODES),
            "hours": _with_nulls(rng, hours),
            "earnings": _with_nulls(rng, earnings),
            "age": age[owner],
            "shift_date": pl.Series(days + (FIRST_DAY - EPOCH).days, dtype=pl.Int32).cast(pl.Date),
            "consent_research": consent[owner],
        }
    )


def _skewed_postcodes(rng: np.random.Generator, n: int) -> np.ndarray:
    """Postcode popularity falls off like 1/(rank + 20): a few busy postcodes, many with a handful of members."""
    weights = 1.0 / (np.arange(len(POSTCODES)) + 20.0)
    return rng.choice(len(POSTCODES), size=n, p=weights / weights.sum())


def _labels(codes: np.ndarray, labels: tuple[str, ...]) -> pl.Series:
    return pl.Series(labels, dtype=pl.String).gather(codes)


def _with_nulls(rng: np.random.Generator, values: np.ndarray) -> pl.Series:
    return pl.Series(np.where(rng.random(len(values)) < NULL_SHARE, np.nan, values)).fill_nan(None)
