"""One member-level query on Spark (local mode) and on Polars, in the same run (issue 7).

The pool is written streaming, a chunk at a time, as a folder of Parquet
part files (the layout a data lake holds), with ``benchmarks.core``'s
synthetic members. Each backend computes the query's bounded exact
aggregates with the same seed; the script checks that they are equal, then
prints the times. Noise, the ledger and parsing are the same code whatever
the backend, so they are left out.

    python -m benchmarks.spark_vs_polars [--rows 10000000 50000000] [--repeats 2] [--data-dir benchmarks/data]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import polars as pl

from benchmarks.core import MEMBER_LEVEL, SQL, interleaved, machine, write_part_files, write_policies
from engine.backends.polars import PolarsBackend
from engine.backends.spark import SparkBackend
from engine.backends.spark_session import SparkSettings, get_session
from engine.planner import plan_query
from engine.policy import load_policy
from engine.sql import parse

SPARK_CONF = {"spark.driver.memory": "8g", "spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false"}


def build_partitioned_pool(folder: Path, rows: int) -> Path:
    """``rows`` rows of whole members as Parquet part files of one chunk each, unless already there."""
    done = folder / "_SUCCESS"
    if not done.exists():
        write_part_files(folder, rows)
        done.touch()
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000_000, 50_000_000])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--data-dir", type=Path, default=Path("benchmarks/data"))
    parser.add_argument("--master", default="local[*]")
    args = parser.parse_args(argv)

    print(machine())
    started = time.perf_counter()
    session = get_session(SparkSettings(args.master, SPARK_CONF))
    session.sparkContext.setLogLevel("ERROR")
    print(f"Spark {session.version} ({args.master}) started in {time.perf_counter() - started:.1f} s")
    backends = {"polars": PolarsBackend(), "spark": SparkBackend(session)}
    print(
        "| rows | members | pool MiB | Polars best s | Polars median s "
        "| Spark best s | Spark median s | Spark / Polars |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for rows in args.rows:
        started = time.perf_counter()
        folder = build_partitioned_pool(args.data_dir / f"pool_{rows}.parts", rows)
        built = time.perf_counter() - started
        policies = write_policies(args.data_dir / f"policies_{rows}", {"pool": (folder / "*.parquet", MEMBER_LEVEL)})
        plan = plan_query(parse(SQL.format(table="pool")), load_policy(policies / "pool.toml"))
        answers = {name: backend.execute(plan, seed=1) for name, backend in backends.items()}  # also warms up
        assert answers["polars"] == answers["spark"], "Spark and Polars disagree"
        seconds = interleaved(
            {name: lambda b=backend, p=plan: b.execute(p, seed=1) for name, backend in backends.items()}, args.repeats
        )
        members = pl.scan_parquet(folder / "*.parquet").select(pl.col("member_id").n_unique()).collect().item()
        size = sum(part.stat().st_size for part in folder.glob("*.parquet")) / 2**20
        polars_best, spark_best = min(seconds["polars"]), min(seconds["spark"])
        print(
            f"| {rows:,} | {members:,} | {size:.0f} | {polars_best:.2f} | {statistics.median(seconds['polars']):.2f} "
            f"| {spark_best:.2f} | {statistics.median(seconds['spark']):.2f} | {spark_best / polars_best:.1f} |"
            f"  (pool built in {built:.0f} s; answers equal)"
        )
    session.stop()


if __name__ == "__main__":
    main()
