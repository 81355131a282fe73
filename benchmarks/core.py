"""Core engine vs plain Polars on one synthetic pool (issue 2).

The engine must bound every member's contribution before aggregating, so it
can never be faster than plain Polars; the question is how much it adds. We
compare a row-level query with the one-level Polars aggregation it replaces,
and a member-level query with the two-level aggregation (per member, then per
group) that any member-level bound needs at least. Targets: ratios ≤ 1.5 and
a median fixed overhead ≤ 20 ms per query on a tiny pool.

    python -m benchmarks.core [--rows 5000000] [--repeats 5] [--data-dir benchmarks/data]
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import numpy as np
import polars as pl

from engine import Engine, Result
from engine.backends.polars import bounded_aggregates
from engine.planner import plan_query
from engine.sql import parse

REGIONS = np.array(["north", "south", "east", "west"])
SEED = 20_240_602
MEAN_ROWS_PER_MEMBER = 10.0
LOGNORMAL_SIGMA = 1.0
"""Rows per member are lognormal: most members have a few rows, a few have hundreds."""
CHUNK_ROWS = 500_000
"""Rows generated and written at a time, so building any size needs little memory."""
NULL_HOURS = 0.01
TINY_ROWS = 1_000
TINY_RUNS = 50
SQL = "SELECT region, COUNT(*) AS n, SUM(hours) AS h FROM {table} GROUP BY region"

POLICY = """\
[dataset]
name = "{name}"
source = "{source}"

[privacy]
{privacy}

[budget]
epsilon = 1e9
delta = 0.0
accounting = "pure"
max_epsilon_per_query = 1e9

[columns.member_id]
type = "id"

[columns.region]
type = "category"
values = ["north", "south", "east", "west"]

[columns.hours]
type = "float"
bounds = [0.0, 60.0]

[columns.age]
type = "int"
bounds = [18, 80]
"""
ROW_LEVEL = 'unit = "row"'
MEMBER_LEVEL = 'unit = "member_id"\nmax_groups = 1\nmax_rows_per_group = 10'


# --- the pool ------------------------------------------------------------------


def _chunk(rng: np.random.Generator, first_member: int, rows: int) -> pl.DataFrame:
    """At least ``rows`` rows of whole members, numbered from ``first_member``, shuffled.

    Each member has a home region (80% of their rows) and one age, so that
    member-level bounding has real work to do (several regions per member).
    """
    mu = np.log(MEAN_ROWS_PER_MEMBER) - LOGNORMAL_SIGMA**2 / 2
    counts = np.empty(0, dtype=np.int64)
    while counts.sum() < rows:
        more = np.maximum(1, np.rint(rng.lognormal(mu, LOGNORMAL_SIGMA, size=rows // 8 + 1))).astype(np.int64)
        counts = np.concatenate([counts, more])
    counts = counts[: int(np.searchsorted(np.cumsum(counts), rows)) + 1]
    members = np.arange(first_member, first_member + len(counts), dtype=np.int64)
    home = rng.integers(0, 4, size=len(members))
    age = rng.integers(18, 81, size=len(members))
    member_of_row = np.repeat(np.arange(len(members)), counts)
    rng.shuffle(member_of_row)
    n = len(member_of_row)
    region = np.where(rng.random(n) < 0.8, home[member_of_row], rng.integers(0, 4, size=n))
    hours = rng.uniform(0.0, 60.0, size=n)
    return pl.DataFrame(
        {
            "member_id": members[member_of_row],
            "region": REGIONS[region],
            "hours": pl.Series(np.where(rng.random(n) < NULL_HOURS, np.nan, hours)).fill_nan(None),
            "age": age[member_of_row],
        }
    )


def write_part_files(folder: Path, rows: int, seed: int = SEED) -> None:
    """Exactly ``rows`` rows of whole members into ``folder`` (emptied first), one numbered Parquet file per chunk."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    written, member = 0, 1
    while written < rows:
        frame = _chunk(rng, member, min(CHUNK_ROWS, rows - written)).head(rows - written)
        frame.write_parquet(folder / f"{written:012d}.parquet")
        written += frame.height
        member = int(frame["member_id"].max()) + 1


def build_pool(path: Path, rows: int, seed: int = SEED) -> Path:
    """Write a deterministic pool of exactly ``rows`` rows to ``path`` unless it exists.

    Chunks go to part files first, then one streaming ``sink_parquet`` joins
    them, so memory stays at about one chunk whatever ``rows`` is.
    """
    if path.exists():
        return path
    parts = path.with_name(path.stem + ".parts")
    write_part_files(parts, rows, seed)
    partial = path.with_suffix(".partial")
    pl.scan_parquet(sorted(parts.glob("*.parquet"))).sink_parquet(partial, row_group_size=CHUNK_ROWS // 4)
    partial.rename(path)
    shutil.rmtree(parts)
    return path


def write_policies(directory: Path, pools: dict[str, tuple[Path, str]]) -> Path:
    """One policy per dataset name: ``{name: (pool, privacy section)}``."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, (pool, privacy) in pools.items():
        source = pool.resolve().as_posix()
        (directory / f"{name}.toml").write_text(POLICY.format(name=name, source=source, privacy=privacy))
    return directory


# --- timing ---------------------------------------------------------------------


def interleaved(runs: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Wall-clock seconds of each run, ``rounds`` times, one of each per round.

    Interleaving spreads a burst of load from elsewhere on the machine over
    every measure instead of spoiling one of them.
    """
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def plain_one_level(path: Path) -> pl.DataFrame:
    """(a) What a row-level query would cost with no privacy at all."""
    return pl.scan_parquet(path).group_by("region").agg(pl.len(), pl.col("hours").sum()).collect(engine="streaming")


def plain_two_level(path: Path) -> pl.DataFrame:
    """(b) The least work any member-level bound needs: aggregate per member and group, then per group."""
    per_member = pl.scan_parquet(path).group_by(["member_id", "region"]).agg(pl.len(), pl.col("hours").sum())
    return per_member.group_by("region").agg(pl.col("len").sum(), pl.col("hours").sum()).collect(engine="streaming")


def backend_only(engine: Engine, dataset: str) -> Callable[[], pl.DataFrame]:
    """The engine's bounding query alone (no parsing, noise or ledger): the Polars share of a query."""
    plan = plan_query(parse(SQL.format(table=dataset)), engine.policy(dataset))
    return lambda: bounded_aggregates(plan, seed=1).collect(engine="streaming")


def machine() -> str:
    """Cores, memory and versions: the numbers mean little without them."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable), {memory:.1f} GiB RAM, "
        f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, "
        f"polars {pl.__version__}, opendp {version('opendp')}, numpy {np.__version__}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data-dir", type=Path, default=Path("benchmarks/data"))
    args = parser.parse_args(argv)

    data: Path = args.data_dir
    data.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}")
    print(f"load average before: {_load()}")
    busy = os.getloadavg()[0] > 1.0
    start = time.perf_counter()
    pool = build_pool(data / f"pool_{args.rows}.parquet", args.rows)
    tiny = build_pool(data / f"pool_{TINY_ROWS}.parquet", TINY_ROWS)
    stats = pl.scan_parquet(pool).select(pl.len(), pl.col("member_id").n_unique()).collect()
    print(
        f"pool: {pool} ({stats.item(0, 0):,} rows, {stats.item(0, 1):,} members, "
        f"{pool.stat().st_size / 2**20:.0f} MiB; ready in {time.perf_counter() - start:.1f} s)"
    )

    with tempfile.TemporaryDirectory(dir=data, prefix="run-") as scratch:
        policies = write_policies(
            Path(scratch) / "policies",
            {
                "pool_rows": (pool, ROW_LEVEL),
                "pool_members": (pool, MEMBER_LEVEL),
                "tiny_rows": (tiny, ROW_LEVEL),
                "tiny_members": (tiny, MEMBER_LEVEL),
            },
        )
        engine = Engine.from_policies(policies, ledger=f"sqlite:///{Path(scratch) / 'ledger.db'}")

        fresh = itertools.count(1)

        def query(dataset: str, dry_run: bool = False, reuse: bool = False) -> Callable[[], object]:
            """One query; a new ε each call, so the ledger never answers from a stored release.

            With ``reuse``, the same ε every call: one untimed release first, then every call is reused.
            """
            sql = SQL.format(table=dataset)
            if reuse:
                engine.query(dataset, sql, epsilon=1.0)

            def run() -> Result:
                epsilon = 1.0 if reuse else 1.0 + next(fresh) * 1e-9
                result = engine.query(dataset, sql, epsilon=epsilon, dry_run=dry_run)
                if result.cached != reuse and not dry_run:
                    raise RuntimeError(f"expected cached={reuse} from {dataset}, got {result.cached}")
                return result

            return run

        large = interleaved(
            {
                "a": lambda: plain_one_level(pool),
                "b": lambda: plain_two_level(pool),
                "c": query("pool_rows"),
                "d": query("pool_members"),
                "c0": backend_only(engine, "pool_rows"),
                "d0": backend_only(engine, "pool_members"),
            },
            args.repeats,
        )
        tiny_runs = interleaved(
            {
                "plain": lambda: plain_one_level(tiny),
                "rows": query("tiny_rows"),
                "members": query("tiny_members"),
                "dry": query("tiny_rows", dry_run=True),
                "reused": query("tiny_rows", reuse=True),
            },
            TINY_RUNS,
        )
        engine.close()
    print(f"load average after: {_load()}")
    if busy:
        print("warning: other work was running on this machine; trust only rows whose best and median agree")
    report(args.rows, args.repeats, large, tiny_runs)


def report(rows: int, repeats: int, large: dict[str, list[float]], tiny: dict[str, list[float]]) -> None:
    """A Markdown table of seconds, the ratios (of best times) and whether each target is met."""
    best = {name: min(seconds) for name, seconds in large.items()}
    ratio_c, ratio_d = best["c"] / best["a"], best["d"] / best["b"]
    tiny_rows, tiny_members = statistics.median(tiny["rows"]), statistics.median(tiny["members"])
    lines = [
        ("(a) plain Polars: group_by region", large["a"], ""),
        ("(b) plain Polars: by member+region, then region", large["b"], ""),
        ("(c) Engine.query, row level", large["c"], f"(c)/(a) = {ratio_c:.2f}, target ≤ 1.5 {_mark(ratio_c <= 1.5)}"),
        (
            "(d) Engine.query, member level",
            large["d"],
            f"(d)/(b) = {ratio_d:.2f}, target ≤ 1.5 {_mark(ratio_d <= 1.5)}",
        ),
        ("(c0) bounded_aggregates alone, row level", large["c0"], f"{best['c0'] / best['a']:.2f} × (a)"),
        ("(d0) bounded_aggregates alone, member level", large["d0"], f"{best['d0'] / best['b']:.2f} × (b)"),
        ("tiny: plain Polars, group_by region", tiny["plain"], ""),
        ("tiny: Engine.query, row level", tiny["rows"], f"median target ≤ 20 ms {_mark(tiny_rows <= 0.02)}"),
        ("tiny: Engine.query, member level", tiny["members"], f"median target ≤ 20 ms {_mark(tiny_members <= 0.02)}"),
        ("tiny: Engine.query, dry run", tiny["dry"], ""),
        ("tiny: Engine.query, stored release reused", tiny["reused"], ""),
    ]
    print(
        f"\n{rows:,} rows: {repeats} rounds; tiny pool: {TINY_ROWS:,} rows, {TINY_RUNS} rounds; "
        "ratios are of best times\n"
    )
    print("| measure | best s | median s | note |\n|---|---:|---:|---|")
    for label, seconds, note in lines:
        print(f"| {label} | {min(seconds):.4f} | {statistics.median(seconds):.4f} | {note} |")


def _load() -> str:
    """The load average: other work on the machine inflates every timing."""
    return " ".join(f"{load:.2f}" for load in os.getloadavg())


def _mark(ok: bool) -> str:
    return "ok" if ok else "MISSED"


if __name__ == "__main__":
    main()
