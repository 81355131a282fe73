"""Speed suite: each query through ``Engine.query`` and through plain Polars, interleaved, best of N.

The ratio engine / plain is what counts (targets: ≤ 1.5 at 10M and 50M rows);
both sides run in the same process and rounds, so load from elsewhere on the
machine hits them alike. Every engine call asks for a fresh ε so the ledger
never answers from a stored release.
"""

from __future__ import annotations

import itertools
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
from rich.console import Console

from benchmarks.core import interleaved
from benchmarks.generate import MEMBER_DATASET, ROW_DATASET, Pool, PoolSpec, generate_pool
from benchmarks.measure import Environment, save
from benchmarks.queries import QUERIES, UNIT, BenchQuery
from benchmarks.sizes import label
from engine import Engine

LEVELS = {"row": (ROW_DATASET, None), "member": (MEMBER_DATASET, UNIT)}
"""Privacy level → (dataset, unit column for the plain two-level aggregation)."""
TINY_ROWS = 1_000
SPEED_FILE, OVERHEAD_FILE = "speed.json", "overhead.json"
console = Console()


def pool_for(rows: int, data_dir: Path) -> Pool:
    return generate_pool(PoolSpec(rows), data_dir / f"pool_{label(rows)}", show_progress=True)


class EngineRunner:
    """An engine over a pool's policies with a throwaway ledger; a new ε per call defeats release reuse."""

    def __init__(self, pool: Pool, scratch: Path, policies: Path | None = None) -> None:
        """``policies``: another directory of policies over the pool (default: the pool's own)."""
        directory = policies if policies is not None else pool.policies
        self.engine = Engine.from_policies(directory, ledger=f"sqlite:///{scratch / 'ledger.db'}")
        self._fresh = itertools.count(1)

    def call(self, query: BenchQuery, dataset: str, epsilon: float = 1.0) -> Callable[[], Any]:
        def run() -> Any:
            result = self.engine.query(
                dataset, query.sql(dataset), epsilon=epsilon + next(self._fresh) * 1e-9, delta=query.delta
            )
            assert not result.cached
            return result

        return run

    def close(self) -> None:
        self.engine.close()


def plain_call(query: BenchQuery, pool: Pool, unit: str | None) -> Callable[[], pl.DataFrame]:
    parts = [str(part) for part in pool.parts]
    return lambda: query.plain(pl.scan_parquet(parts), unit).collect(engine="streaming")


def run_speed_suite(sizes: list[int], repeats: int, data_dir: Path, results: Path) -> None:
    environment = Environment.now()
    measurements: list[dict[str, Any]] = []
    for rows in sizes:
        pool = pool_for(rows, data_dir)
        console.print(f"[bold]{rows:,} rows[/] ({pool.members:,} members, {len(pool.parts)} parts)")
        with tempfile.TemporaryDirectory(prefix="coopdp-speed-") as scratch:
            runner = EngineRunner(pool, Path(scratch))
            for query in QUERIES:
                for level, (dataset, unit) in LEVELS.items():
                    seconds = interleaved(
                        {"engine": runner.call(query, dataset), "plain": plain_call(query, pool, unit)}, repeats
                    )
                    entry = {"rows": rows, "query": query.name, "level": level, **seconds}
                    measurements.append(entry)
                    ratio = min(seconds["engine"]) / min(seconds["plain"])
                    console.print(
                        f"  {query.name:24} {level:6} engine {min(seconds['engine']):7.3f} s  "
                        f"plain {min(seconds['plain']):7.3f} s  ratio {ratio:5.2f}"
                    )
            runner.close()
        save(results / SPEED_FILE, environment, measurements, repeats=repeats)
    console.print(f"wrote {results / SPEED_FILE}")


def run_overhead(runs: int, data_dir: Path, results: Path) -> None:
    """Every query on a 1,000-row pool: what parse, plan, ledger and noise cost when there is no data to speak of."""
    environment = Environment.now()
    pool = pool_for(TINY_ROWS, data_dir)
    measurements: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="coopdp-overhead-") as scratch:
        runner = EngineRunner(pool, Path(scratch))
        for query in QUERIES:
            for level, (dataset, _) in LEVELS.items():
                seconds = interleaved({"engine": runner.call(query, dataset)}, runs)["engine"]
                measurements.append({"rows": TINY_ROWS, "query": query.name, "level": level, "engine": seconds})
                console.print(f"  {query.name:24} {level:6} median {statistics.median(seconds) * 1000:6.1f} ms")
        runner.close()
    save(results / OVERHEAD_FILE, environment, measurements, runs=runs)
