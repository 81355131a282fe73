"""Run the query set through coopdp and each installed peer, on the same pool, bounds and (ε, δ).

Every system gets the same member-level bounds (at most ``max_groups`` groups
and ``max_rows_per_group`` rows per group per member; where a peer has no
per-group bound, ``max_groups × max_rows_per_group`` rows per member in all)
and the same total privacy loss per release. Relative error is measured
against the exact, unbounded answer computed by plain Polars, over the cells
each system released.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
from rich.console import Console

from benchmarks.generate import EARNINGS_BOUNDS, HOURS_BOUNDS, MEMBER_BOUNDS, MEMBER_DATASET, Pool
from benchmarks.measure import Environment, save
from benchmarks.queries import QUERIES, BenchQuery
from benchmarks.speed import EngineRunner, pool_for

PEERS = {
    "opendp_polars": "run_opendp_polars.py",
    "smartnoise": "run_smartnoise.py",
    "tumult": "run_tumult.py",
}
"""Peer name (its venv's directory under the peers dir) → adapter script beside this file."""
OURS = "coopdp"
DELTA = 1e-6
"""δ of every release (peers that need δ for their key selection or truncation get the same)."""
VALUE_BOUNDS = {"hours": HOURS_BOUNDS, "earnings": EARNINGS_BOUNDS}
PEER_TIMEOUT_S = 3_600
TOTAL_BOUND_PEERS = frozenset({"smartnoise", "tumult"})
"""Peers that take a bound on a member's rows in total (SmartNoise ``max_ids``, Tumult ``MaxRowsPerID``).

The others (OpenDP's Polars API, per the adapter: ``truncate_per_group`` and
``truncate_num_groups``) get the G×R bound of the same sensitivity: one group,
``max_rows_per_member`` rows in it (see :func:`peer_bounds`).
"""
PEERS_STEM = "peers"
console = Console()


@dataclass(frozen=True)
class Selection:
    """Which queries and peers a run covers (None: all), and the tag of its results file."""

    queries: tuple[str, ...] | None = None
    peers: tuple[str, ...] | None = None
    tag: str = ""

    def chosen(self, queries: Sequence[BenchQuery]) -> list[BenchQuery]:
        return [query for query in queries if self.queries is None or query.name in self.queries]

    def file(self, stem: str) -> str:
        """``peers.json`` for a full run, ``peers_<tag>.json`` for a tagged one."""
        return f"{stem}_{self.tag}.json" if self.tag else f"{stem}.json"


ALL = Selection()


@dataclass(frozen=True)
class Answers:
    """One system's runs of one query: seconds and released cells per run, or why it could not answer."""

    seconds: list[float]
    releases: list[dict[str, float]]
    error: str | None = None
    bounds: list[dict[str, Any]] = field(default_factory=list)
    """Per run, the contribution and value bounds the system says it used (coopdp's ``Result.bounds``; {} if none)."""
    bias: list[dict[str, float]] = field(default_factory=list)
    """Per run, the share of each output column that the system says bounding removed (``Result.bias``)."""


def run_peers(
    sizes: list[int], repeats: int, peers_dir: Path, data_dir: Path, results: Path, selection: Selection = ALL
) -> None:
    environment = Environment.now()
    installed, skipped = installed_peers(peers_dir, selection.peers)
    measurements: list[dict[str, Any]] = []
    notes: list[str] = []
    for rows in sizes:
        pool = pool_for(rows, data_dir)
        for query in selection.chosen(QUERIES):
            exact = exact_cells(query, pool)
            runs = [1.0] * repeats
            by_system = {OURS: ours(query, pool, runs)} if selection.peers is None else {}
            by_system |= {peer: peer_answers(peer, python, query, pool, runs) for peer, python in installed.items()}
            for system, answers in by_system.items():
                entry = summarise(rows, query, system, answers, exact)
                measurements.append(entry)
                if answers.error:
                    notes.append(f"{system} on {query.name} ({rows:,} rows): {answers.error}")
                console.print(
                    f"{rows:>11,} {query.name:24} {system:14} "
                    + (f"{min(answers.seconds):8.3f} s  error {entry['relative_error']:.4f}" if answers.seconds else "")
                    + (f"  [red]{answers.error}[/]" if answers.error else "")
                )
            save(
                results / selection.file(PEERS_STEM),
                environment,
                measurements,
                skipped=skipped,
                notes=notes,
                repeats=repeats,
            )


PEER_LIBRARIES = ("opendp", "polars", "smartnoise-sql", "pandas", "tmlt.analytics", "tmlt.core", "pyspark")


def peer_versions(installed: dict[str, Path]) -> dict[str, str]:
    """Each peer's own library versions, from the ``pip freeze`` setup.sh leaves in its venv."""
    versions = {}
    for peer, python in installed.items():
        frozen = python.parent.parent / "versions.txt"
        lines = frozen.read_text().splitlines() if frozen.exists() else []
        pinned = [line for line in lines if line.split("==")[0].lower() in PEER_LIBRARIES]
        versions[peer] = ", ".join(pinned) or "unknown"
    return versions


def installed_peers(peers_dir: Path, only: tuple[str, ...] | None = None) -> tuple[dict[str, Path], dict[str, str]]:
    """Peers whose venv exists → their Python; the others → why they are skipped (setup.sh's last log line)."""
    installed, skipped = {}, {}
    for peer in PEERS if only is None else only:
        python = peers_dir / peer / "bin" / "python"
        if python.exists():
            installed[peer] = python
            continue
        log = peers_dir / f"{peer}.log"
        last = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
        skipped[peer] = f"not installed in {peers_dir} (run benchmarks/peers/setup.sh)" + (
            f"; install log ends: {last[0]}" if last else ""
        )
        console.print(f"[yellow]skipping {peer}[/]: {skipped[peer]}")
    return installed, skipped


def peer_bounds(peer: str, bounds: dict[str, Any] | None) -> dict[str, Any]:
    """The contribution bounds a peer is asked for: the policy's, or ``bounds`` in a form the peer takes.

    A total bound (``max_rows_per_member``: C) goes as it is to peers that take
    one; the others get ``max_groups = 1, max_rows_per_group = C``, the G×R
    bound with the same L1 sensitivity (it keeps at most C rows of one group).
    """
    policy = {"max_groups": MEMBER_BOUNDS.max_groups, "max_rows_per_group": MEMBER_BOUNDS.max_rows_per_group}
    if not bounds:
        return policy
    total = bounds.get("max_rows_per_member")
    if total is not None:
        equivalent = {"max_groups": 1, "max_rows_per_group": total}
        return {"max_rows_per_member": total, **equivalent} if peer in TOTAL_BOUND_PEERS else equivalent
    return {name: bounds.get(name) or policy[name] for name in policy}


def request(
    query: BenchQuery, pool: Pool, runs: Sequence[float], peer: str = "", bounds: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What a peer's adapter needs: data, bounds, the query's fields and the (ε, δ) of each run.

    ``bounds`` (``Result.bounds``' form, with ``value_bounds`` for a clamp)
    replaces the policy's bounds; by default every peer gets the policy's.
    """
    value_bounds = (bounds or {}).get("value_bounds") or VALUE_BOUNDS.get(query.column or "", None)
    return {
        "parts": [str(part.resolve()) for part in pool.parts],
        "rows": pool.spec.rows,
        "unit": MEMBER_BOUNDS.unit,
        "bounds": peer_bounds(peer, bounds),
        "value_bounds": None if query.column is None else value_bounds,
        "query": {
            "name": query.name,
            "aggregate": query.aggregate.value,
            "column": query.column,
            "keys": list(query.keys),
            "where": None
            if query.where is None
            else {"age_low": query.where.age_low, "age_high": query.where.age_high},
            "private_keys": query.private_keys,
            "sql": query.sql("pool"),
        },
        "runs": [{"epsilon": epsilon, "delta": DELTA} for epsilon in runs],
    }


def peer_answers(
    peer: str,
    python: Path,
    query: BenchQuery,
    pool: Pool,
    runs: Sequence[float],
    bounds: dict[str, Any] | None = None,
) -> Answers:
    """One peer's runs of one query, in its own venv; ``bounds`` as in :func:`request`."""
    script = Path(__file__).with_name(PEERS[peer])
    with tempfile.TemporaryFile("w+") as stderr:
        try:
            child = subprocess.run(
                [str(python), str(script)],
                input=json.dumps(request(query, pool, runs, peer, bounds)),
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                timeout=PEER_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            return Answers([], [], f"timed out after {PEER_TIMEOUT_S} s")
        stderr.seek(0)
        errors = stderr.read().strip().splitlines()
    lines = child.stdout.strip().splitlines()
    if not lines:
        return Answers([], [], f"exit status {child.returncode}: {errors[-1] if errors else 'no output'}")
    output = json.loads(lines[-1])
    if "error" in output:
        return Answers([], [], output["error"])
    return Answers(output["seconds"], output["releases"])


def ours(
    query: BenchQuery, pool: Pool, runs: Sequence[float], policies: Path | None = None, dataset: str = MEMBER_DATASET
) -> Answers:
    """coopdp, member level, through ``Engine.query``: δ only where the query needs it (private keys).

    ``policies``: another directory of policies over the pool (the accuracy
    suite's, e.g. with automatic bounds); ``dataset``, the policy to query.
    Each run's ``Result.bounds`` and ``Result.bias`` are kept where the engine gives them.
    """
    with tempfile.TemporaryDirectory(prefix="coopdp-peers-") as scratch:
        runner = EngineRunner(pool, Path(scratch), policies)
        seconds, releases, bounds, bias = [], [], [], []
        for epsilon in runs:
            call = runner.call(query, dataset, epsilon=epsilon)
            result, elapsed = _timed(call)
            seconds.append(elapsed)
            keys = len(query.keys)
            releases.append(
                {json.dumps(list(row[:keys])): float(row[keys]) for row in result.rows if row[keys] is not None}
            )
            chosen = dict(getattr(result, "bounds", None) or {})
            clamps = getattr(result, "value_bounds", None) or {}
            if query.column in clamps:  # the clamp the engine chose for the query's column
                chosen["value_bounds"] = clamps[query.column]
            bounds.append(chosen)
            bias.append(dict(getattr(result, "bias", None) or {}))
        runner.close()
    return Answers(seconds, releases, bounds=bounds, bias=bias)


def exact_cells(query: BenchQuery, pool: Pool) -> dict[str, float]:
    """The non-private answer: every key observed, no bounding (what an analyst wants to know)."""
    frame = query.plain(pl.scan_parquet([str(part) for part in pool.parts]), None).collect(engine="streaming")
    keys = list(query.keys)
    return {json.dumps(list(row[: len(keys)])): float(row[len(keys)]) for row in frame.select([*keys, "value"]).rows()}


def relative_error(release: dict[str, float], exact: dict[str, float]) -> float | None:
    """Mean over released cells with an exact answer of |noisy − exact| / max(|exact|, 1)."""
    errors = [abs(value - exact[key]) / max(abs(exact[key]), 1.0) for key, value in release.items() if key in exact]
    return statistics.fmean(errors) if errors else None


def summarise(rows: int, query: BenchQuery, system: str, answers: Answers, exact: dict[str, float]) -> dict[str, Any]:
    errors = [error for release in answers.releases if (error := relative_error(release, exact)) is not None]
    released = [len(release) for release in answers.releases]
    return {
        "rows": rows,
        "query": query.name,
        "system": system,
        "seconds": answers.seconds,
        "relative_error": statistics.fmean(errors) if errors else None,
        "cells_released": statistics.fmean(released) if released else 0,
        "cells_exact": len(exact),
        "error": answers.error,
    }


def _timed(call: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = call()
    return result, time.perf_counter() - start
