"""Scale: engine queries over a pool larger than memory, each in its own process, with its peak RSS.

A separate process per query makes the peak resident memory that query's own
(``getrusage`` of the child), and lets a query the machine cannot hold fail
(killed, timed out) without ending the run: the failure is a result too.

    python -m benchmarks scale --rows 300M
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from benchmarks.generate import MANIFEST, MEMBER_DATASET, ROW_DATASET, Pool
from benchmarks.measure import Environment, save
from benchmarks.queries import QUERIES, BenchQuery
from benchmarks.speed import pool_for

SCALE_FILE = "scale.json"
TIMEOUT_S = 1_800
LEVELS = {"row": ROW_DATASET, "member": MEMBER_DATASET}
console = Console()


def run_scale(sizes: list[int], data_dir: Path, results: Path) -> None:
    environment = Environment.now()
    measurements: list[dict[str, Any]] = []
    for rows in sizes:
        pool = pool_for(rows, data_dir)
        for query in QUERIES:
            for level, dataset in LEVELS.items():
                entry = {
                    "rows": rows,
                    "query": query.name,
                    "level": level,
                    **one_query_in_a_process(pool, query, dataset),
                }
                measurements.append(entry)
                console.print(
                    f"{rows:,} {query.name:24} {level:6} {entry['seconds']:8.1f} s "
                    f"{entry['peak_rss_mib']:8,.0f} MiB {entry['error'] or 'ok'}"
                )
                save(results / SCALE_FILE, environment, measurements, pool=_pool_facts(pool))


def one_query_in_a_process(pool: Pool, query: BenchQuery, dataset: str) -> dict[str, Any]:
    """Seconds and peak RSS of one ``Engine.query`` in a fresh interpreter; ``error`` says how it failed.

    ``os.wait4`` gives the child's own resource usage, so its peak RSS is known even when it is killed.
    """
    command = [sys.executable, "-m", "benchmarks.scale", str(pool.policies), dataset, query.sql(dataset)]
    command += [str(query.delta)] if query.delta else []
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        start = time.perf_counter()
        child = subprocess.Popen(command, stdout=stdout, stderr=stderr, text=True)
        timer = threading.Timer(TIMEOUT_S, child.kill)
        timer.start()
        _, status, usage = os.wait4(child.pid, 0)
        timer.cancel()
        child.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        stdout.seek(0)
        stderr.seek(0)
        output, errors = stdout.read(), stderr.read()
    peak = usage.ru_maxrss / 1024
    if child.returncode != 0:
        last = errors.strip().splitlines()[-1:] or [f"killed by signal {-child.returncode}"]
        return {"seconds": wall, "peak_rss_mib": peak, "error": f"{last[0]} (exit status {child.returncode})"}
    return {**json.loads(output.strip().splitlines()[-1]), "peak_rss_mib": peak, "error": None}


def _pool_facts(pool: Pool) -> dict[str, Any]:
    return {
        "rows": pool.spec.rows,
        "members": pool.members,
        "parts": len(pool.parts),
        "disk_mib": sum(part.stat().st_size for part in pool.parts) / 2**20,
        "seconds": pool.seconds,
        "peak_rss_mib": _manifest(pool).get("peak_rss_mib"),
    }


def _manifest(pool: Pool) -> dict[str, Any]:
    return json.loads((pool.directory / MANIFEST).read_text())


def _child(policies: str, dataset: str, sql: str, delta: str | None) -> None:
    """Run one query and print its seconds and this process's peak RSS as JSON (the last line of stdout)."""
    from engine import Engine

    with tempfile.TemporaryDirectory(prefix="coopdp-scale-ledger-") as scratch:
        engine = Engine.from_policies(Path(policies), ledger=f"sqlite:///{Path(scratch) / 'ledger.db'}")
        start = time.perf_counter()
        engine.query(dataset, sql, epsilon=1.0, delta=float(delta) if delta else None)
        seconds = time.perf_counter() - start
        engine.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_rss_mib": peak}))


if __name__ == "__main__":
    _child(*sys.argv[1:4], sys.argv[4] if len(sys.argv) > 4 else None)
