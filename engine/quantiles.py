"""DP quantiles: OpenDP's noisy max over intervals of the bounds, then a uniform draw inside the chosen one.

A quantile part releases, per group, one value of the column's bounds
``[lower, upper]`` (fixed-point units). The candidates are :data:`INTERVALS`
equal intervals of the bounds, or every fixed-point value when the bounds hold
no more than that many (narrow integer ranges). Each candidate's score is how
far, in rows of rank, the quantile is from it: the least, over the points
``c`` of the candidate, of OpenDP's quantile score

    ``|(1 - q)·#{x < c} - q·#{x > c}|``   (q the quantile),

in OpenDP's integer units (the score times the denominator of ``q``).
OpenDP's report-noisy-max picks the candidate with the least noisy score
(exponential noise, i.e. permute-and-flip, under pure DP; Gumbel noise, the
exponential mechanism, under zCDP). A point is released as it is; in an
interval the value is drawn uniformly, so that the release is not stuck on a
grid (with every interval of equal width this is the exponential mechanism
over the bounds with the width as base measure, Smith 2011). The draw
depends on the chosen interval only: post-processing.

Privacy. The scores are a function of the group's values whose L∞
sensitivity is that of OpenDP's candidate scores (a minimum over a fixed set
of points moves no more than the points' scores do), so the loss is OpenDP's
map of its score transformation chained into its noisy max
(:func:`measurement`), the very map OpenDP's ``make_private_quantile`` has:
the same scale costs the same ε or ρ as before this module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import opendp.prelude as dp

from engine.plan_parts import FixedPoint, Part, PartKind

INTERVALS = 4096
"""Candidates per quantile: wider bounds are cut into this many equal intervals (2^12)."""


@dataclass(frozen=True)
class Weights:
    """OpenDP's integer score ``|below·#{x < c} - above·#{x > c}|``: the quantile ``above / (below + above)``."""

    below: int
    above: int

    @property
    def per_row(self) -> int:
        """Score units per row of rank (the denominator of the quantile)."""
        return self.below + self.above


@lru_cache(maxsize=256)
def weights(alpha: float) -> Weights:
    """The integer weights OpenDP scores the ``alpha`` quantile with, read off OpenDP's own transformation.

    One value 0 and the candidates -1 and 1: the first scores ``above``
    (one value above it), the second ``below``.
    """
    scores = _score_transformation(alpha, (-1, 1))(np.zeros(1, dtype=np.int64))
    return Weights(below=int(scores[1]), above=int(scores[0]))


def _score_transformation(alpha: float, candidates: tuple[int, ...]) -> dp.Transformation:
    """OpenDP's quantile scores of integer (fixed-point) values, over vectors of unknown size."""
    return dp.t.make_quantile_score_candidates(
        dp.vector_domain(dp.atom_domain(T="i64")), dp.symmetric_distance(), candidates=list(candidates), alpha=alpha
    )


def _selection(measure: dp.Measure, scale: float) -> dp.Measurement:
    """OpenDP's report-noisy-min over integer score vectors of any length, ``scale`` in score units."""
    domain = dp.vector_domain(dp.atom_domain(T="u64"))
    return dp.m.make_noisy_max(domain, dp.linf_distance(T="u64"), measure, scale=scale, negate=True)


def measurement(part: Part, measure: dp.Measure, scale: float) -> dp.Measurement:
    """The measurement whose privacy map a quantile part is charged by: OpenDP's scores, then its noisy min.

    ``scale`` is in rows of rank (as ``make_private_quantile`` takes it). The
    map does not depend on the candidates, so the bounds stand for them.
    """
    assert part.value is not None and part.alpha is not None
    scores = _score_transformation(part.alpha, (part.value.lower, part.value.upper))
    return scores >> dp.m.then_noisy_max(measure, scale=scale * weights(part.alpha).per_row, negate=True)


@dataclass(frozen=True)
class Candidates:
    """A quantile's candidates in fixed-point units: the edges ``lower + k·span/steps`` (k = 0 … steps, exact
    rationals), and per candidate the edges it runs between (the same one for a point)."""

    lower: int
    span: int
    steps: int
    left: np.ndarray
    right: np.ndarray

    @property
    def count(self) -> int:
        return len(self.left)

    def edge(self, index: int) -> float:
        return self.lower + self.span * index / self.steps


def candidates(value: FixedPoint) -> Candidates:
    """Every fixed-point value of narrow bounds (each its own point), else :data:`INTERVALS` equal intervals."""
    span = value.upper - value.lower
    if span < INTERVALS:
        points = np.arange(span + 1)
        return Candidates(value.lower, span, span, points, points)
    index = np.arange(INTERVALS)
    return Candidates(value.lower, span, INTERVALS, index, index + 1)


def candidate_count(part: Part) -> int:
    assert part.value is not None
    return candidates(part.value).count


def scores(values: np.ndarray, grid: Candidates, weight: Weights) -> np.ndarray:
    """Each candidate's score: the least OpenDP score over its points (an interval's: over every real in it).

    ``F(c) = below·#{x < c} - above·#{x > c}`` grows with ``c``, so over
    ``[a, b]`` the least ``|F|`` is ``F(a)`` when that is non-negative,
    ``-F(b)`` when that is non-positive, and otherwise (the one interval where
    ``F`` changes sign) the least ``|F|`` over all the bounds: in each case
    ``max(F(a), -F(b), least)``. Values are fixed-point integers inside the
    bounds; the counts at the edges are exact integer arithmetic.
    """
    inside_bounds = np.clip(np.asarray(values, dtype=np.int64), grid.lower, grid.lower + grid.span)  # clamped already
    shifted = (inside_bounds - grid.lower) * grid.steps  # edge k ≤ x iff k·span ≤ shifted
    step, offset = np.divmod(shifted, grid.span)  # x lies in [edge step, edge step + 1); on it when offset is 0
    edges = grid.steps + 1
    less = np.concatenate(([0], np.cumsum(np.bincount(step, minlength=edges))[:-1]))  # values below each edge
    on = np.bincount(step[offset == 0], minlength=edges)
    greater = len(shifted) - less - on
    signed = weight.below * less - weight.above * greater
    least = _least_score(shifted, step, offset, signed, greater, weight)
    return np.maximum(np.maximum(signed[grid.left], -signed[grid.right]), least).astype(np.uint64)


def _least_score(
    shifted: np.ndarray, step: np.ndarray, offset: np.ndarray, signed: np.ndarray, greater: np.ndarray, weight: Weights
) -> int:
    """The least ``|F|`` over every real of the bounds, found between the two edges where ``F`` changes sign.

    There ``F`` takes its values at the two edges, just right of the left edge,
    and at and just right of each distinct value strictly between them.
    """
    rising = int(np.count_nonzero(signed < 0))  # F(edge) < 0 exactly for the first ``rising`` edges
    if rising == 0:
        return int(signed[0])
    if rising == len(signed):
        return int(-signed[-1])
    if signed[rising] == 0:
        return 0
    low, rows = rising - 1, len(shifted)
    inside = shifted[(step == low) & (offset != 0)]  # strictly between edges low and low + 1
    up_to_low = rows - int(greater[low])  # rows ≤ edge low
    found = [-int(signed[low]), int(signed[rising]), abs(weight.below * up_to_low - weight.above * (rows - up_to_low))]
    if len(inside):
        repeats = np.unique(inside, return_counts=True)[1]
        less = up_to_low + np.concatenate(([0], np.cumsum(repeats)[:-1]))
        at_value = weight.below * less - weight.above * (rows - less - repeats)
        found += [int(np.abs(at_value).min()), int(np.abs(at_value + weight.below * repeats).min())]
    return min(found)


def release(measure: dp.Measure, part: Part, scale: float, groups: Sequence[Any]) -> list[int]:
    """One released quantile per group, in fixed-point units like every other part.

    The draw inside each chosen interval is OpenDP's too (its uniform floats
    in [0, 1), one per group): no Python or NumPy generator runs in a release.
    """
    assert part.value is not None and part.alpha is not None
    grid = candidates(part.value)
    weight = weights(part.alpha)
    select = _selection(measure, scale * weight.per_row)
    chosen = [int(select(scores(np.asarray(values), grid, weight))) for values in groups]
    uniform = _uniform(len(chosen))
    released = []
    for candidate, fraction in zip(chosen, uniform, strict=True):
        low, high = grid.edge(int(grid.left[candidate])), grid.edge(int(grid.right[candidate]))
        released.append(min(max(round(low + fraction * (high - low)), part.value.lower), part.value.upper))
    return released


def _uniform(count: int) -> list[float]:
    """``count`` uniform floats in [0, 1) from OpenDP's sampler (its imputation of missing values)."""
    domain = dp.vector_domain(dp.atom_domain(T=float, nan=True))
    impute = dp.t.make_impute_uniform_float(domain, dp.symmetric_distance(), bounds=(0.0, 1.0))
    return list(impute([math.nan] * count))


def rank_accuracy(part: Part, scale: float, alpha: float) -> float:
    """Rows of rank by which, with probability 1 - alpha, the chosen candidate's score exceeds the best one's.

    A candidate scoring ``t`` rows worse than the best wins with probability
    at most ``exp(-t / scale)`` (either noise); a union bound over the
    candidates gives this.
    """
    return scale * math.log(candidate_count(part) / alpha)


def in_order(parts: Sequence[Part], noisy: Sequence[Sequence[int]]) -> list[list[int]]:
    """The released parts, each group's quantiles of one column sorted as their quantiles are (post-processing).

    The quantiles of one column rank the same sample of values, so their true
    values are in order; sorting the released ones (e.g. ``MIN ≤ MEDIAN``)
    never moves them further from those in any ℓp distance (the rearrangement
    inequality).
    """
    ordered = [list(values) for values in noisy]
    by_column: dict[FixedPoint, list[int]] = {}
    for index, part in enumerate(parts):
        if part.kind is PartKind.QUANTILE and part.value is not None:
            by_column.setdefault(part.value, []).append(index)
    for indices in by_column.values():
        indices.sort(key=lambda index: parts[index].alpha or 0.0)
        for group in range(len(ordered[indices[0]]) if len(indices) > 1 else 0):
            values = sorted(ordered[index][group] for index in indices)
            for index, value in zip(indices, values, strict=True):
                ordered[index][group] = value
    return ordered
