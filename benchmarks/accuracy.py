"""Accuracy: mean relative error against ε for each query type, ours, the oracle's and the installed peers'.

Every system answers the same query on the same pool at each ε,
``repetitions`` times; the error of a release is measured against the exact
unbounded answer (see ``benchmarks.peers.compare.relative_error``), so it
includes the bias of bounding each member's contribution as well as the noise.

Beside each of our errors the suite records the bounds our engine chose
(``Result.bounds``, the median over repetitions; the policy's fixed bounds
when the engine reports none), the share of the answer it says bounding
removed (``Result.bias``) and the true share for those bounds, and the
oracle's error: the least any fixed bounds achieve (``benchmarks.oracle``).
Peers run with the policy's bounds and, where ours chose others, with ours.
The member policy is automatic (``--bounds auto``) unless the engine refuses
it, in which case the suite says so and runs the fixed policy.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import polars as pl
from rich.console import Console

from benchmarks.bounds import Bounds, bounds_from_result, median_bounds, policy_bounds
from benchmarks.checks import target_checks
from benchmarks.generate import (
    AUTO_MEMBER_BOUNDS,
    AUTO_POLICY_COLUMNS,
    MEMBER_BOUNDS,
    MEMBER_DATASET,
    PARTS_DIR,
    POLICY_COLUMNS,
    Pool,
)
from benchmarks.measure import Environment, save
from benchmarks.oracle import (
    ORACLE_QUERIES,
    Contributions,
    OracleAnswer,
    contributions,
    expected_error,
    removed_share,
    search,
)
from benchmarks.peers.compare import (
    ALL,
    OURS,
    Answers,
    Selection,
    exact_cells,
    installed_peers,
    ours,
    peer_answers,
    peer_bounds,
    peer_versions,
    relative_error,
)
from benchmarks.policy_file import Contribution, write_policy
from benchmarks.queries import QUERIES, UNIT, BenchQuery
from benchmarks.sizes import label
from benchmarks.speed import pool_for
from benchmarks.tables import print_bounds_table, print_checks_table, print_oracle_table
from engine import Engine

EPSILONS = (0.1, 0.3, 1.0, 3.0, 10.0)
"""The default sweep; ``--epsilons`` takes another."""
QUERY_TYPES = (
    "count_by_region",
    "sum_by_sector",
    "count_by_region_sector",
    "filtered_sum",
    "avg_by_region",
    "median_by_region",
    "count_by_postcode",
)
"""Every query with an oracle (counts, sums, AVG), the quantile, and the private-key one."""
ACCURACY_STEM, ORACLE_STEM = "accuracy", "oracle"
OUR_BOUNDS = "our bounds"
"""Suffix of a peer's system name when it ran with the bounds our engine chose."""
console = Console(width=None if sys.stdout.isatty() else 160)


class BoundsMode(StrEnum):
    AUTO = "auto"
    """Every member bound ``"auto"``: the engine chooses per query (falls back to fixed if the engine refuses)."""
    FIXED = "fixed"
    """The generated pool's fixed member policy (``benchmarks.generate.MEMBER_BOUNDS``)."""


@dataclass(frozen=True)
class SuitePolicies:
    """The member-level policy the suite queries: where it is, the bounds mode it has, and why if not the asked one."""

    directory: Path
    mode: BoundsMode
    note: str | None = None


def run_accuracy(
    rows: int,
    repetitions: int,
    peers_dir: Path,
    data_dir: Path,
    results: Path,
    epsilons: tuple[float, ...] = EPSILONS,
    selection: Selection = ALL,
    bounds: BoundsMode = BoundsMode.AUTO,
    peer_repetitions: int | None = None,
    with_peers: bool = True,
) -> None:
    environment = Environment.now()
    pool = pool_for(rows, data_dir)
    installed, skipped = installed_peers(peers_dir, selection.peers) if with_peers else ({}, {})
    peer_runs = peer_repetitions if peer_repetitions is not None else repetitions
    measurements: list[dict[str, Any]] = []
    oracle_entries: list[dict[str, Any]] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="coopdp-accuracy-") as scratch:
        policies = suite_policies(pool, bounds, Path(scratch))
        if policies.note:
            notes.append(policies.note)
            console.print(f"[yellow]{policies.note}[/]")
        for query in selection.chosen([query for query in QUERIES if query.name in QUERY_TYPES]):
            exact = exact_cells(query, pool)
            answers = _ours(query, pool, _runs(epsilons, repetitions), policies) if selection.peers is None else None
            table = _contributions(query, pool, answers)
            oracle = search(table, epsilons) if table is not None else {}
            oracle_entries += [{"rows": rows, "query": query.name, **answer.to_dict()} for answer in oracle.values()]
            chosen: dict[float, Bounds] = {}
            if answers is not None:
                entries, chosen = our_entries(rows, query, _runs(epsilons, repetitions), answers, exact, table, oracle)
                measurements += entries
                _note_error(notes, OURS, query, answers)
            for peer, python in installed.items():
                measurements += peer_entries(rows, query, peer, python, pool, epsilons, peer_runs, exact, chosen, notes)
            print_bounds_table(console, [e for e in measurements if e["query"] == query.name])
            save(
                results / selection.file(ACCURACY_STEM),
                environment,
                measurements,
                repetitions=repetitions,
                peer_repetitions=peer_runs,
                bounds_mode=policies.mode.value,
                bounds_asked=bounds.value,
                skipped=skipped,
                notes=notes,
                peer_versions=peer_versions(installed),
                oracle=oracle_entries,
                checks=target_checks(measurements),
            )
    print_checks_table(console, target_checks(measurements))


def run_oracle(
    sizes: Sequence[int], epsilons: Sequence[float], data_dir: Path, results: Path, selection: Selection = ALL
) -> None:
    """The oracle alone, per pool size, query and ε, beside the expected error of the fixed policy's bounds."""
    environment = Environment.now()
    entries: list[dict[str, Any]] = []
    for rows in sizes:
        pool = pool_for(rows, data_dir)
        for query in selection.chosen([query for query in QUERIES if query.name in ORACLE_QUERIES]):
            start = time.perf_counter()
            table = _contributions(query, pool, None)
            assert table is not None
            answers = search(table, epsilons)
            fixed = policy_bounds(query)
            seconds = time.perf_counter() - start
            for epsilon, answer in answers.items():
                entries.append(
                    {
                        "rows": rows,
                        "query": query.name,
                        **answer.to_dict(),
                        "policy_bounds": fixed.to_dict(),
                        "policy_error": expected_error(table, fixed, epsilon),
                        "policy_removed_share": removed_share(table, fixed),
                        "seconds": seconds,
                    }
                )
            console.print(f"{label(rows):>5} {query.name:24} {len(table.member):,} pairs, {seconds:.2f} s")
        save(results / selection.file(ORACLE_STEM), environment, entries)
    print_oracle_table(console, entries)


def suite_policies(pool: Pool, mode: BoundsMode, directory: Path) -> SuitePolicies:
    """The member-level policy over ``pool`` in ``directory``: automatic bounds if asked and the engine takes them.

    The engine is asked for a dry run of a count with the automatic policy;
    if it refuses (the policy or the query), the fixed policy is written instead, with a note saying why.
    """
    source = str((pool.directory / PARTS_DIR).resolve() / "*.parquet")
    if mode is BoundsMode.FIXED:
        _write_member_policy(directory, source, MEMBER_BOUNDS)
        return SuitePolicies(directory, BoundsMode.FIXED)
    _write_member_policy(directory, source, AUTO_MEMBER_BOUNDS)
    refusal = engine_refusal(directory)
    if refusal is None:
        return SuitePolicies(directory, BoundsMode.AUTO)
    _write_member_policy(directory, source, MEMBER_BOUNDS)
    note = f"the engine refused automatic member bounds ({refusal}); this run used the fixed policy {_fixed()}"
    return SuitePolicies(directory, BoundsMode.FIXED, note)


def engine_refusal(directory: Path) -> str | None:
    """Why the engine cannot load the policies in ``directory`` or dry-run a count on them, or None if it can."""
    count = next(query for query in QUERIES if query.name == "count_by_region")
    try:
        engine = Engine.from_policies(directory, ledger=f"sqlite:///{directory / 'probe.db'}")
        try:
            engine.query(MEMBER_DATASET, count.sql(MEMBER_DATASET), epsilon=1.0, dry_run=True)
        finally:
            engine.close()
    except Exception as error:  # noqa: BLE001 - any refusal means: fall back, and say why
        lines = str(error).replace(f"{directory}/", "").strip().splitlines()
        return f"{error.__class__.__name__}: {lines[0][:200] if lines else ''}"
    return None


def our_entries(
    rows: int,
    query: BenchQuery,
    runs: Sequence[float],
    answers: Answers,
    exact: dict[str, float],
    table: Contributions | None,
    oracle: dict[float, OracleAnswer],
) -> tuple[list[dict[str, Any]], dict[float, Bounds]]:
    """Per ε: our mean error, the median bounds we chose, the reported and true bias, and the oracle's error.

    Also the median bounds per ε, for the peers to run with.
    """
    if answers.error:
        return [], {}
    fixed = policy_bounds(query)
    by_epsilon: dict[float, list[int]] = {}
    for index, epsilon in enumerate(runs):
        by_epsilon.setdefault(epsilon, []).append(index)
    entries, medians = [], {}
    for epsilon, indices in by_epsilon.items():
        errors = [e for i in indices if (e := relative_error(answers.releases[i], exact)) is not None]
        reported = [_run_document(answers.bounds, i) for i in indices]
        chosen = [bounds_from_result(document, query) or fixed for document in reported]
        middle = medians[epsilon] = median_bounds(chosen) or fixed
        bias_runs = [
            [_reported_bias(_run_document(answers.bias, i)), _true_share(table, bounds)]
            for i, bounds in zip(indices, chosen, strict=True)
        ]
        reported_bias = [pair[0] for pair in bias_runs if pair[0] is not None]
        entry: dict[str, Any] = {
            "rows": rows,
            "query": query.name,
            "system": OURS,
            "epsilon": epsilon,
            "relative_error": statistics.fmean(errors) if errors else None,
            **released_cells([answers.releases[i] for i in indices], exact),
            "bounds": middle.to_dict(),
            "bounds_source": "result" if any(reported) else "policy",
            "true_bias": _true_share(table, middle),
            "reported_bias": statistics.median(reported_bias) if reported_bias else None,
            "bias_runs": bias_runs,
        }
        answer = oracle.get(epsilon)
        if answer is not None:
            entry |= {"oracle_error": answer.error, "oracle_bounds": answer.bounds.to_dict()}
        entries.append(entry)
    return entries, medians


def peer_entries(
    rows: int,
    query: BenchQuery,
    peer: str,
    python: Path,
    pool: Pool,
    epsilons: Sequence[float],
    repetitions: int,
    exact: dict[str, float],
    chosen: dict[float, Bounds],
    notes: list[str],
) -> list[dict[str, Any]]:
    """A peer with the policy's bounds, then (per ε where ours chose other bounds) with ours."""
    entries = []
    runs = _runs(epsilons, repetitions)
    answers = peer_answers(peer, python, query, pool, runs)
    _note_error(notes, peer, query, answers)
    for epsilon, error in errors_by_epsilon(runs, answers, exact).items():
        cells = released_cells([r for at, r in zip(runs, answers.releases, strict=False) if at == epsilon], exact)
        entries.append(_peer_entry(rows, query, peer, epsilon, error, None) | cells)
    fixed = policy_bounds(query)
    for epsilon in epsilons:
        ours_chose = chosen.get(epsilon)
        if ours_chose is None or ours_chose == fixed:
            continue
        system, asked = f"{peer} ({OUR_BOUNDS})", ours_chose.to_dict()
        answers = peer_answers(peer, python, query, pool, [epsilon] * repetitions, asked)
        _note_error(notes, system, query, answers)
        clamp = {"value_bounds": asked["value_bounds"]} if "value_bounds" in asked else {}
        sent = peer_bounds(peer, asked) | clamp
        for at, error in errors_by_epsilon([epsilon] * repetitions, answers, exact).items():
            entries.append(_peer_entry(rows, query, system, at, error, sent) | released_cells(answers.releases, exact))
    return entries


def errors_by_epsilon(runs: list[float], answers: Answers, exact: dict[str, float]) -> dict[float, float]:
    """Mean relative error of the releases made at each ε (releases with no comparable cell are left out)."""
    by_epsilon: dict[float, list[float]] = {}
    for epsilon, release in zip(runs, answers.releases, strict=False):
        error = relative_error(release, exact)
        if error is not None:
            by_epsilon.setdefault(epsilon, []).append(error)
    return {epsilon: statistics.fmean(errors) for epsilon, errors in by_epsilon.items()}


def released_cells(releases: Sequence[dict[str, float]], exact: dict[str, float]) -> dict[str, float]:
    """Cells released per run (mean) beside the cells of the exact answer: the error is over released cells only."""
    released = [len(release.keys() & exact.keys()) for release in releases]
    return {"cells_released": statistics.fmean(released) if released else 0.0, "cells_exact": len(exact)}


def _peer_entry(
    rows: int, query: BenchQuery, system: str, epsilon: float, error: float, bounds: dict[str, Any] | None
) -> dict[str, Any]:
    """A peer's mean error at one ε; ``bounds``: what it was sent when not the policy's (a G×R equivalent for some)."""
    entry = {"rows": rows, "query": query.name, "system": system, "epsilon": epsilon, "relative_error": error}
    console.print(f"{query.name:24} {system:30} ε={epsilon:<5g} error {error:.4f}")
    return entry | ({"bounds": bounds} if bounds is not None else {})


def _ours(query: BenchQuery, pool: Pool, runs: Sequence[float], policies: SuitePolicies) -> Answers:
    """Our runs; a query the engine refuses is recorded as an error, like a peer's, and the suite goes on."""
    try:
        return ours(query, pool, runs, policies.directory)
    except Exception as error:  # noqa: BLE001 - recorded in the results' notes
        lines = str(error).strip().splitlines()
        return Answers([], [], f"{error.__class__.__name__}: {lines[0][:300] if lines else ''}")


def _contributions(query: BenchQuery, pool: Pool, answers: Answers | None) -> Contributions | None:
    """The query's (member, group) table for the oracle, with clamped sums for every clamp our runs reported."""
    if query.name not in ORACLE_QUERIES:
        return None
    extra = set()
    for document in answers.bounds if answers is not None else []:
        bounds = bounds_from_result(document, query)
        if bounds is not None and bounds.upper is not None and bounds.lower is not None:
            extra.add((bounds.lower, bounds.upper))
    scan = pl.scan_parquet([str(part) for part in pool.parts])
    return contributions(query, scan, UNIT, sorted(extra))


def _true_share(table: Contributions | None, bounds: Bounds) -> float | None:
    return removed_share(table, bounds) if table is not None else None


def _reported_bias(document: dict[str, Any]) -> float | None:
    """The reported share for the query's one output column (``value``), or None."""
    share = document.get("value")
    return float(share) if isinstance(share, (int, float)) and not isinstance(share, bool) else None


def _run_document(documents: list[dict[str, Any]], index: int) -> dict[str, Any]:
    return documents[index] if index < len(documents) else {}


def _runs(epsilons: Sequence[float], repetitions: int) -> list[float]:
    return [epsilon for epsilon in epsilons for _ in range(repetitions)]


def _note_error(notes: list[str], system: str, query: BenchQuery, answers: Answers) -> None:
    if answers.error:
        notes.append(f"{system} on {query.name}: {answers.error}")
        console.print(f"{query.name:24} {system:30} [red]{answers.error}[/]")


def _write_member_policy(directory: Path, source: str, contribution: Contribution) -> None:
    columns = AUTO_POLICY_COLUMNS if contribution.automatic else POLICY_COLUMNS
    write_policy(directory / f"{MEMBER_DATASET}.toml", MEMBER_DATASET, source, contribution, columns)


def _fixed() -> str:
    return f"(max_groups = {MEMBER_BOUNDS.max_groups}, max_rows_per_group = {MEMBER_BOUNDS.max_rows_per_group})"
