"""Oracle error: the least mean relative error any fixed choice of bounds achieves on a pool (issue 13).

For evaluation only: the search reads the exact data, which no DP engine may
do. Per query it aggregates the pool once per (member, group), then tries
every candidate on a grid in NumPy:

* total mode: each member keeps at most C rows across all groups
  (``max_rows_per_member``), spread proportionally over the member's groups
  (a member with T rows keeps ``n × min(1, C / T)`` of a group's n rows; for
  a column's aggregate the rows are its non-NULL values, as the engine's
  per-group cap counts them); L1 sensitivity C × magnitude;
* G×R mode: each member keeps G of their groups (a seeded random choice, as
  the engine's hash draw) and at most R rows in each (``max_groups``,
  ``max_rows_per_group``); L1 sensitivity min(G, public groups) × R × magnitude;
* for sums and averages, the value clamp ``[lower, upper × 2^-k]``, k = 0 … 6,
  from the column's policy bounds; magnitude = max(|lower|, |upper|) (1 for counts).

A member's bounded sum in a group is their clamped sum scaled like their
rows, which is their clamped mean times the rows kept (the engine's rule).
The noise is pure DP: discrete Laplace of scale L1 / ε on counts, Laplace on
sums (the engine's fixed point is fine enough for the continuous law), and
for AVG, whose two parts (count, centred sum) each get ε / 2, a seeded Monte
Carlo of the noisy ratio (Laplace draws, the count's rounded to an integer).
The error is the benchmark's: the mean over groups of
E|released − exact| / max(|exact|, 1), exact being the unbounded answer.
Clipping of released counts and sums at 0 is left out (it can only lower the
error, and matters only for cells smaller than the noise).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import polars as pl

from benchmarks.bounds import VALUE_BOUNDS, Bounds
from benchmarks.generate import POLICY_COLUMNS
from benchmarks.queries import Aggregate, BenchQuery

ORACLE_QUERIES = ("count_by_region", "sum_by_sector", "count_by_region_sector", "filtered_sum", "avg_by_region")
ROW_GRID: tuple[int, ...] = tuple(sorted({round(2 ** (step / 2)) for step in range(21)}))
"""1 … 1024 in steps of √2, rounded to whole rows: 1, 2, 3, 4, 6, 8, 11, 16, 23, 32, 45, 64, 91, 128, …, 1024."""
MAX_GROUPS = 8
CLAMP_STEPS = 7
"""Value clamps: the policy's upper bound × 2^-k for k = 0 … 6."""
DRAW_SEED = 20_261_301
MONTE_CARLO_DRAWS = 200


@dataclass(frozen=True)
class Contributions:
    """One query's pool as (member, group) pairs: what every candidate's bounded answer is computed from."""

    aggregate: Aggregate
    groups: tuple[str, ...]
    """Each group's key, as ``benchmarks.peers.compare.exact_cells`` writes it."""
    truth: np.ndarray
    """The exact, unbounded answer per group."""
    public_groups: int
    member: np.ndarray
    group: np.ndarray
    counted: np.ndarray
    """Rows the aggregate counts per pair: every row for COUNT(*), the non-NULL values of the column otherwise."""
    member_counted: np.ndarray
    """Per pair, the counted rows of its member in all groups (T)."""
    draw: np.ndarray
    """Per pair, its place in a seeded random order of the member's groups (0, 1, …): G×R keeps those below G."""
    clamped: dict[tuple[float, float], np.ndarray] = field(default_factory=dict)
    """Per value clamp ``(lower, upper)``, each pair's sum of values clamped to it."""
    grid: tuple[tuple[float, float], ...] = ()
    """The clamps the search tries (the others in ``clamped`` are there to evaluate given bounds)."""


def contributions(
    query: BenchQuery,
    scan: pl.LazyFrame,
    unit: str,
    extra_clamps: Sequence[tuple[float, float]] = (),
    seed: int = DRAW_SEED,
) -> Contributions:
    """Aggregate ``scan`` once per (member, group) for ``query`` (filter applied).

    Clamped sums are kept for the search's grid (:func:`clamp_grid` of the
    column's policy bounds) and for ``extra_clamps`` (bounds a system chose).
    """
    keys = list(query.keys)
    frame = scan if query.where is None else scan.filter(query.where.expr())
    statistics = [pl.len().cast(pl.Float64).alias("rows")]
    grid: tuple[tuple[float, float], ...] = ()
    clamps: list[tuple[float, float]] = []
    if query.column is not None:
        grid = clamp_grid(*VALUE_BOUNDS[query.column])
        clamps = list(dict.fromkeys([*grid, *extra_clamps]))
        column = pl.col(query.column).cast(pl.Float64)
        statistics += [column.count().cast(pl.Float64).alias("values"), column.sum().alias("raw")]
        statistics += [column.clip(low, high).sum().alias(f"clamped_{k}") for k, (low, high) in enumerate(clamps)]
    # sorted: group_by's row order varies from run to run, and the seeded draw follows the rows
    pairs = frame.group_by([unit, *keys]).agg(statistics).sort([unit, *keys]).collect(engine="streaming")
    table = pairs.select(keys).unique().sort(keys).with_row_index("__group") if keys else None
    if table is not None:
        pairs = pairs.join(table, on=keys, how="left")
        group = pairs["__group"].to_numpy().astype(np.int64)
        labels = tuple(json.dumps(list(row)) for row in table.select(keys).rows())
    else:
        group = np.zeros(pairs.height, dtype=np.int64)
        labels = (json.dumps([]),)
    member = pairs[unit].rank("dense").to_numpy().astype(np.int64) - 1
    counted = pairs["rows" if query.column is None else "values"].to_numpy()
    count_truth = np.bincount(group, counted, minlength=len(labels)).astype(float)
    truth: np.ndarray
    if query.aggregate is Aggregate.COUNT:
        truth = count_truth
    else:
        sum_truth = np.bincount(group, pairs["raw"].to_numpy(), minlength=len(labels))
        truth = sum_truth if query.aggregate is Aggregate.SUM else sum_truth / np.maximum(count_truth, 1)
    clamped = {clamp: pairs[f"clamped_{k}"].to_numpy() for k, clamp in enumerate(clamps)}
    return Contributions(
        aggregate=query.aggregate,
        groups=labels,
        truth=truth,
        public_groups=public_groups(query),
        member=member,
        group=group,
        counted=counted,
        member_counted=np.bincount(member, counted)[member],
        draw=draw_order(member, np.random.default_rng(seed)),
        clamped=clamped,
        grid=grid,
    )


def public_groups(query: BenchQuery) -> int:
    """How many groups the query's public keys make (the engine's L0 cap)."""
    values = {column.name: column.values for column in POLICY_COLUMNS}
    return math.prod(len(values[key] or ()) for key in query.keys) if query.keys else 1


def clamp_grid(lower: float, upper: float) -> tuple[tuple[float, float], ...]:
    """``[lower, upper × 2^-k]`` for k = 0 … 6 (lower is 0 for every value column of the pool)."""
    return tuple((lower, upper * 2.0**-step) for step in range(CLAMP_STEPS))


def draw_order(member: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per pair, its rank among its member's pairs in a random order (0 for the first)."""
    order = np.lexsort((rng.random(len(member)), member))
    ranks = np.empty(len(member), dtype=np.int64)
    sorted_members = member[order]
    starts = np.flatnonzero(np.r_[True, sorted_members[1:] != sorted_members[:-1]])
    run_start = np.repeat(starts, np.diff(np.r_[starts, len(member)]))
    ranks[order] = np.arange(len(member)) - run_start
    return ranks


# --- one candidate ----------------------------------------------------------------------------


def kept_share(contributions: Contributions, bounds: Bounds) -> np.ndarray:
    """Per pair, the share of its counted rows (and so of its clamped sum) that the bounds keep."""
    counted = contributions.counted
    if bounds.total:
        assert bounds.max_rows_per_member is not None
        return np.minimum(1.0, bounds.max_rows_per_member / np.maximum(contributions.member_counted, 1.0))
    assert bounds.max_groups is not None and bounds.max_rows_per_group is not None
    capped = np.minimum(1.0, bounds.max_rows_per_group / np.maximum(counted, 1.0))
    return np.where(contributions.draw < bounds.max_groups, capped, 0.0)


def bounded_answer(contributions: Contributions, bounds: Bounds) -> tuple[np.ndarray, np.ndarray | None]:
    """Per group, the exact bounded count and (for a value column) the bounded clamped sum."""
    share = kept_share(contributions, bounds)
    groups = len(contributions.groups)
    count = np.bincount(contributions.group, contributions.counted * share, minlength=groups)
    if not contributions.grid:
        return count, None
    return count, np.bincount(contributions.group, _clamped(contributions, bounds) * share, minlength=groups)


def removed_share(contributions: Contributions, bounds: Bounds) -> float:
    """The TRUE share of the answer that these bounds remove, over all groups.

    COUNT: of its rows; SUM: of its mass (capping and clamping both); AVG: of
    its value, 1 − bounded average / exact average over all the query's rows
    (dropping rows thins an average without lowering it; clamping lowers it;
    negative if bounding raises it). The engine's ``Result.bias`` means the same.
    """
    count, total = bounded_answer(contributions, bounds)
    if contributions.aggregate is Aggregate.COUNT:
        exact = float(contributions.counted.sum())
        return 1.0 - float(count.sum()) / exact if exact else 0.0
    assert total is not None
    if contributions.aggregate is Aggregate.SUM:
        exact = float(contributions.truth.sum())
        return 1.0 - float(total.sum()) / exact if exact else 0.0
    exact_mean = float((contributions.truth * np.bincount(contributions.group, contributions.counted)).sum())
    exact_mean /= max(float(contributions.counted.sum()), 1.0)
    kept = float(count.sum())
    return 1.0 - (float(total.sum()) / kept) / exact_mean if kept and exact_mean else 0.0


def l1_scale(contributions: Contributions, bounds: Bounds) -> int:
    """Rows' worth one member can move the answer by, summed over groups (L1 of a count)."""
    if bounds.total:
        assert bounds.max_rows_per_member is not None
        return bounds.max_rows_per_member
    assert bounds.max_groups is not None and bounds.max_rows_per_group is not None
    return min(bounds.max_groups, contributions.public_groups) * bounds.max_rows_per_group


def expected_error(contributions: Contributions, bounds: Bounds, epsilon: float) -> float:
    """Mean over groups of E|released − exact| / max(|exact|, 1) with these bounds at ``epsilon`` (pure DP)."""
    count, total = bounded_answer(contributions, bounds)
    return float(_errors(contributions, bounds, count, total, np.array([epsilon]))[0])


def expected_abs_discrete_laplace(offset: np.ndarray, scale: float | np.ndarray) -> np.ndarray:
    """E|offset + N| for N discrete Laplace (P(k) ∝ exp(−|k| / scale)): exact, also between integers.

    At an integer d ≥ 0 it is d + 2p^(d+1) / (1 − p²), p = exp(−1/scale); as N
    is integer, E|d + N| is linear between consecutive integers.
    """
    distance = np.abs(np.asarray(offset, dtype=float))
    scale = np.asarray(scale, dtype=float)
    if np.all(scale == 0):
        return distance
    p = np.exp(-1.0 / np.where(scale > 0, scale, 1.0))
    low = np.floor(distance)
    fraction = distance - low

    def at(d: np.ndarray) -> np.ndarray:
        return d + 2.0 * p ** (d + 1.0) / (1.0 - p * p)

    value = (1 - fraction) * at(low) + fraction * at(low + 1.0)
    return np.where(scale > 0, value, distance)


def expected_abs_laplace(offset: np.ndarray, scale: float | np.ndarray) -> np.ndarray:
    """E|offset + N| for N continuous Laplace of ``scale``: |d| + scale · exp(−|d| / scale)."""
    distance = np.abs(np.asarray(offset, dtype=float))
    scale = np.asarray(scale, dtype=float)
    safe = np.where(scale > 0, scale, 1.0)
    return np.where(scale > 0, distance + safe * np.exp(-distance / safe), distance)


# --- the search -------------------------------------------------------------------------------


@dataclass(frozen=True)
class OracleAnswer:
    """The least expected error at one ε, the bounds that give it and the share of the answer they remove."""

    epsilon: float
    error: float
    bounds: Bounds
    removed_share: float
    candidates: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "epsilon": self.epsilon,
            "oracle_error": self.error,
            "oracle_bounds": self.bounds.to_dict(),
            "oracle_removed_share": self.removed_share,
            "candidates": self.candidates,
        }


def modes(contributions: Contributions) -> list[Bounds]:
    """The contribution bounds tried: total C, then G×R (G in 1 … 8 and the public key count); R and C on the grid."""
    groups = sorted({*range(1, min(MAX_GROUPS, contributions.public_groups) + 1), contributions.public_groups})
    totals = [Bounds(max_rows_per_member=rows) for rows in ROW_GRID]
    return totals + [Bounds(max_groups=g, max_rows_per_group=rows) for g in groups for rows in ROW_GRID]


def candidates(contributions: Contributions) -> Iterator[Bounds]:
    """Every grid point: each of :func:`modes` with each value clamp (counts: none)."""
    for mode in modes(contributions):
        yield from _with_clamps(contributions, mode)


def search(contributions: Contributions, epsilons: Sequence[float]) -> dict[float, OracleAnswer]:
    """Per ε, the candidate with the least expected error (ties: the first on the grid).

    One pass over :func:`modes`: each mode's kept shares and bounded counts
    are computed once and reused for every clamp and every ε.
    """
    eps = np.asarray(epsilons, dtype=float)
    best_error = np.full(len(eps), np.inf)
    best: list[Bounds | None] = [None] * len(eps)
    tried = 0
    groups = len(contributions.groups)
    for mode in modes(contributions):
        share = kept_share(contributions, mode)
        count = np.bincount(contributions.group, contributions.counted * share, minlength=groups)
        for bounds in _with_clamps(contributions, mode):
            total = None
            if bounds.upper is not None:
                total = np.bincount(contributions.group, _clamped(contributions, bounds) * share, minlength=groups)
            errors = _errors(contributions, bounds, count, total, eps)
            tried += 1
            better = errors < best_error
            best_error = np.where(better, errors, best_error)
            best = [bounds if improved else old for improved, old in zip(better, best, strict=True)]
    answers = {}
    for index, epsilon in enumerate(epsilons):
        chosen = best[index]
        assert chosen is not None
        removed = removed_share(contributions, chosen)
        answers[epsilon] = OracleAnswer(epsilon, float(best_error[index]), chosen, removed, tried)
    return answers


def _with_clamps(contributions: Contributions, mode: Bounds) -> list[Bounds]:
    if not contributions.grid:
        return [mode]
    return [replace(mode, lower=low, upper=high) for low, high in contributions.grid]


def _clamped(contributions: Contributions, bounds: Bounds) -> np.ndarray:
    clamp = (bounds.lower, bounds.upper)
    if clamp not in contributions.clamped:
        raise KeyError(f"no clamped sums for {clamp}: pass it to contributions() as an extra clamp")
    return contributions.clamped[clamp]  # type: ignore[index]


def _errors(
    contributions: Contributions, bounds: Bounds, count: np.ndarray, total: np.ndarray | None, epsilons: np.ndarray
) -> np.ndarray:
    """Expected mean relative error per ε of the bounded answer (count, clamped sum) plus noise."""
    truth = contributions.truth
    denominator = np.maximum(np.abs(truth), 1.0)
    rows = l1_scale(contributions, bounds)
    if contributions.aggregate is Aggregate.COUNT:
        scales = rows / epsilons
        expected = expected_abs_discrete_laplace((count - truth)[None, :], scales[:, None])
        return (expected / denominator).mean(axis=1)
    assert total is not None and bounds.upper is not None and bounds.lower is not None
    if contributions.aggregate is Aggregate.SUM:
        magnitude = max(abs(bounds.lower), abs(bounds.upper))
        scales = rows * magnitude / epsilons
        expected = expected_abs_laplace((total - truth)[None, :], scales[:, None])
        return (expected / denominator).mean(axis=1)
    return _average_errors(contributions, bounds, count, total, epsilons)


def _average_errors(
    contributions: Contributions, bounds: Bounds, count: np.ndarray, total: np.ndarray, epsilons: np.ndarray
) -> np.ndarray:
    """AVG as the engine releases it: centre + noisy centred sum / noisy count, kept in the clamp; NULL if count < 1.

    Each part gets ε / 2; seeded Monte Carlo (the same draws for every candidate). A NULL cell is left out.
    """
    assert bounds.lower is not None and bounds.upper is not None
    rows = l1_scale(contributions, bounds)
    center, half_width = (bounds.lower + bounds.upper) / 2, (bounds.upper - bounds.lower) / 2
    rng = np.random.default_rng(DRAW_SEED)
    shape = (MONTE_CARLO_DRAWS, len(contributions.groups))
    count_noise, sum_noise = rng.laplace(size=shape), rng.laplace(size=shape)
    errors = []
    for epsilon in epsilons:
        noisy_count = np.round(count + count_noise * 2 * rows / epsilon)
        noisy_sum = (total - center * count) + sum_noise * 2 * rows * half_width / epsilon
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = np.clip(center + noisy_sum / noisy_count, bounds.lower, bounds.upper)
        relative = np.abs(mean - contributions.truth) / np.maximum(np.abs(contributions.truth), 1.0)
        relative = np.where(noisy_count >= 1, relative, np.nan)
        errors.append(float(np.nanmean(relative)) if np.isfinite(relative).any() else math.inf)
    return np.array(errors)
