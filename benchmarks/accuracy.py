"""Accuracy: mean relative error against ε for each query type, ours and the installed peers'.

Every system answers the same query on the same pool with the same bounds at
each ε, ``repetitions`` times; the error of a release is measured against the
exact unbounded answer (see ``benchmarks.peers.compare.relative_error``), so it
includes the bias of bounding each member's contribution as well as the noise.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from rich.console import Console

from benchmarks.measure import Environment, save
from benchmarks.peers.compare import (
    ALL,
    OURS,
    Answers,
    Selection,
    exact_cells,
    installed_peers,
    ours,
    peer_answers,
    peer_versions,
    relative_error,
)
from benchmarks.queries import QUERIES
from benchmarks.speed import pool_for

EPSILONS = (0.1, 0.3, 1.0, 3.0, 10.0)
"""The default sweep; ``--epsilons`` takes another."""
QUERY_TYPES = ("count_by_region", "sum_by_sector", "avg_by_region", "median_by_region", "count_by_postcode")
"""One query per aggregate (and the private-key one): the error depends on the aggregate, not on the filter."""
ACCURACY_STEM = "accuracy"
console = Console()


def run_accuracy(
    rows: int,
    repetitions: int,
    peers_dir: Path,
    data_dir: Path,
    results: Path,
    epsilons: tuple[float, ...] = EPSILONS,
    selection: Selection = ALL,
) -> None:
    environment = Environment.now()
    pool = pool_for(rows, data_dir)
    installed, skipped = installed_peers(peers_dir, selection.peers)
    runs = [epsilon for epsilon in epsilons for _ in range(repetitions)]
    measurements: list[dict[str, Any]] = []
    notes: list[str] = []
    for query in selection.chosen([query for query in QUERIES if query.name in QUERY_TYPES]):
        exact = exact_cells(query, pool)
        by_system = {OURS: ours(query, pool, runs)} if selection.peers is None else {}
        by_system |= {peer: peer_answers(peer, python, query, pool, runs) for peer, python in installed.items()}
        for system, answers in by_system.items():
            if answers.error:
                notes.append(f"{system} on {query.name}: {answers.error}")
                console.print(f"{query.name:20} {system:14} [red]{answers.error}[/]")
                continue
            for epsilon, error in errors_by_epsilon(runs, answers, exact).items():
                measurements.append(
                    {"rows": rows, "query": query.name, "system": system, "epsilon": epsilon, "relative_error": error}
                )
                console.print(f"{query.name:20} {system:14} ε={epsilon:<5g} error {error:.4f}")
        save(
            results / selection.file(ACCURACY_STEM),
            environment,
            measurements,
            repetitions=repetitions,
            skipped=skipped,
            notes=notes,
            peer_versions=peer_versions(installed),
        )


def errors_by_epsilon(runs: list[float], answers: Answers, exact: dict[str, float]) -> dict[float, float]:
    """Mean relative error of the releases made at each ε (releases with no comparable cell are left out)."""
    by_epsilon: dict[float, list[float]] = {}
    for epsilon, release in zip(runs, answers.releases, strict=True):
        error = relative_error(release, exact)
        if error is not None:
            by_epsilon.setdefault(epsilon, []).append(error)
    return {epsilon: statistics.fmean(errors) for epsilon, errors in by_epsilon.items()}
