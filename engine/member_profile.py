"""The DP release of how much members contribute: what choosing bounds, and disclosing their bias, read.

Per member, statistics of the rows a query reads (after its filter): rows in
all its groups, groups touched, rows in its fullest group, and for each column
whose clamp bound is chosen (``bounds = "auto"``) one of its values, drawn at
random. Each is counted into a fixed, public histogram of geometric bins, so
that adding or removing a member moves one count of each histogram by one:
the released vector's L1 sensitivity is the number of histograms, its L2 the
root of that. OpenDP's integer-vector noise (the query's accounting: discrete
Laplace or Gaussian) is added after the charge, like every other part of the query.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

from engine import plan as ir
from engine.accounting import ChargeReceipt, Cost
from engine.backends.base import MemberProfile
from engine.backends.bounding import value_statistic
from engine.errors import InternalError
from engine.mechanisms import Mode, add_vector_noise, fitted_vector_noise
from engine.sensitivity import profile_sensitivity

STEPS = 41
"""Geometric steps of √2: from 1 to 2^20 rows, or from a range's top down to 2^-20 of it."""
EDGES: tuple[int, ...] = tuple(sorted({round(2 ** (step / 2)) for step in range(STEPS)}))
"""Bin edges of the contribution statistics, and every value a chosen bound may take: 1, 2, 3, 4, 6, 8, 11, … 2^20."""
DETECTION_ALPHA = 0.05
"""The chance that noise alone makes any empty bin of the profile read as occupied."""
SHRINKAGE = 1.0
"""Dense histograms' counts are lowered by this many times the noise's mean size (``ProfileNoise.dense_counts``)."""
TOTAL = "rows"
SPREAD = ("groups", "fullest")
"""The statistics of the per-group mode (G groups × R rows in each); the total mode reads rows only."""


@dataclass(frozen=True)
class Histogram:
    """The public bins of one statistic: bin k holds values in ``[edges[k], edges[k + 1])``, the last bin the rest."""

    name: str
    edges: tuple[int, ...]
    last: float
    """The last bin's typical value: its lower edge times √2 (counts), or the range's top (values, clamped to it)."""
    sparse: bool = False
    """Whether most of its bins are empty far from the data (a column's range): noise there is read as nothing."""

    def bin_of(self, value: int) -> int:
        return max(bisect.bisect_right(self.edges, value) - 1, 0)

    def representative(self, index: int) -> float:
        """A bin's typical value: the middle of its integers."""
        if index == len(self.edges) - 1:
            return self.last
        return (self.edges[index] + self.edges[index + 1] - 1) / 2


def contribution_histogram(name: str, limit: int) -> Histogram:
    """Bins of a contribution statistic: every edge up to ``limit`` (the largest bound a choice may make), and the
    rest above it in one bin: a thin tail of busy members holds many rows, and only bins this few keep its noise
    small enough to see it (``ProfileNoise.dense_counts`` reads them)."""
    edges = tuple(sorted({*(edge for edge in EDGES if edge < limit), limit}))
    return Histogram(name, edges, limit * math.sqrt(2))


def value_histogram(value: ir.FixedPoint) -> Histogram:
    """Bins of a column's values (fixed point, inside its range): edges at the range's top × 2^(-k/2), and its bottom.

    These edges are also the upper bounds a choice may make.
    """
    tops = {max(value.lower + 1, math.floor(value.upper * 2 ** (-step / 2))) for step in range(STEPS)}
    return Histogram(
        value_statistic(value.column), tuple(sorted({value.lower, *tops})), float(value.upper), sparse=True
    )


@dataclass(frozen=True)
class ProfileNoise:
    """How the profile is released: its histograms, the integer-vector noise's scale, and its loss."""

    mode: Mode
    histograms: tuple[Histogram, ...]
    scale: float
    loss: float
    """By OpenDP's map at the vector's sensitivity; composed with the query's other parts."""

    def highest_occupied(self, noisy: Sequence[int]) -> int:
        """The highest bin the members reach: the highest whose noisy count, or whose noisy count of members at or
        above it, passes what noise alone would give (with 5% probability over the whole profile, both tests).

        Without it, noise in the many empty bins of large values would read as
        members with millions of rows. A tail of members too thin to tell from
        noise goes unseen: a larger ``auto_share`` shows more of it. -1 when no bin is.
        """
        bins = sum(len(histogram.edges) for histogram in self.histograms)
        single = self.mode.accuracy(self.scale, DETECTION_ALPHA / (2 * bins))
        above = 0
        for index in range(len(noisy) - 1, -1, -1):
            above += noisy[index]
            if noisy[index] > single or above > single * math.sqrt(len(noisy) - index):
                return index
        return -1

    def dense_counts(self, noisy: Sequence[int]) -> tuple[float, ...]:
        """A contribution histogram's counts, read from its noisy release (post-processing only).

        A bin of busy members holds many rows. Read as released, the noise of
        the many empty bins of large values would show phantom rows; cut at a
        strict threshold, a thin tail holding a third of the rows would not
        show at all. Above its fullest bin a histogram of members is about
        non-increasing, so the counts there are fitted as such (pooling
        adjacent bins that break it, as isotonic regression does), and each
        pooled run of m bins keeps its count less the noise's mean size times
        √m (at least 0), shared among its bins as they were released: an empty
        tail pools into long runs whose noise averages out, a real one keeps
        its counts, and a cluster of busy members stays where it was.
        """
        mean = self.mode.mean_error(self.scale)
        peak = max(range(len(noisy)), key=lambda k: noisy[k])
        head = [max(float(n) - SHRINKAGE * mean, 0.0) for n in noisy[:peak]]
        runs: list[list[float]] = []  # [sum, bins] per pooled run, non-increasing in average
        for n in noisy[peak:]:
            runs.append([float(n), 1.0])
            while len(runs) > 1 and runs[-2][0] / runs[-2][1] < runs[-1][0] / runs[-1][1]:
                total, bins = runs.pop()
                runs[-1][0] += total
                runs[-1][1] += bins
        tail: list[float] = []
        for total, bins in runs:
            released = noisy[peak + len(tail) : peak + len(tail) + int(bins)]
            kept = max(total - SHRINKAGE * mean * math.sqrt(bins), 0.0)
            weights = [max(float(n), 0.0) for n in released]
            spread = math.fsum(weights) or 1.0
            tail += [kept * weight / spread for weight in weights]
        return (*head, *tail)

    @classmethod
    def fitted(cls, mode: Mode, histograms: tuple[Histogram, ...], loss: float) -> ProfileNoise:
        """The least noise whose loss is at most ``loss``."""
        scale, spent = fitted_vector_noise(mode, mode.norm(profile_sensitivity(len(histograms))), loss)
        return cls(mode, histograms, scale, spent)


@dataclass(frozen=True)
class NoisyProfile:
    """The released histograms (noisy member counts per bin; negative ones, and bins above the top, read as 0)."""

    counts: dict[str, tuple[float, ...]]
    histograms: dict[str, Histogram]

    def members(self) -> float:
        """About how many members the query's rows belong to (at row level, rows: each counted once in a value
        histogram, the only kind a row-level profile has)."""
        counted = self.counts[TOTAL] if TOTAL in self.counts else max(self.counts.values(), key=math.fsum, default=())
        return max(math.fsum(counted), 1.0)

    def total(self, statistic: str) -> float:
        """About the sum of ``statistic`` over members (rows: the query's rows)."""
        return max(math.fsum(self._weighted(statistic, lambda value: value)), 1.0)

    def excess(self, statistic: str, cap: float) -> float:
        """About Σ over members of (statistic − cap)⁺: what capping the statistic at ``cap`` removes."""
        return math.fsum(self._weighted(statistic, lambda value: max(value - cap, 0.0)))

    def mean(self, statistic: str, cap: float | None = None) -> float:
        """About the members' mean of the statistic (capped at ``cap``); 0 when the histogram reads empty."""
        counts = math.fsum(self.counts[statistic])
        if counts <= 0:
            return 0.0
        capped = (lambda value: min(value, cap)) if cap is not None else (lambda value: value)
        return math.fsum(self._weighted(statistic, capped)) / counts

    def _weighted(self, statistic: str, weight: object) -> list[float]:
        histogram = self.histograms[statistic]
        assert callable(weight)
        return [count * weight(histogram.representative(k)) for k, count in enumerate(self.counts[statistic])]


def release(noise: ProfileNoise, exact: MemberProfile, receipt: ChargeReceipt, cost: Cost) -> NoisyProfile:
    """Bin the exact counts and add the noise: only ever after the charge (a receipt for the query's ``cost``)."""
    if receipt.cost != cost:
        raise InternalError("the ledger charged a different cost than the profile was calibrated for")
    vector: list[int] = []
    for histogram in noise.histograms:
        vector += _binned(histogram, exact.members.get(histogram.name, {}))
    noisy = add_vector_noise(noise.mode, noise.scale, vector)
    counts, start = {}, 0
    for histogram in noise.histograms:
        window = noisy[start : start + len(histogram.edges)]
        start += len(histogram.edges)
        if histogram.sparse:
            top = noise.highest_occupied(window)
            counts[histogram.name] = tuple(float(max(n, 0)) if k <= top else 0.0 for k, n in enumerate(window))
        else:
            counts[histogram.name] = noise.dense_counts(window)
    return NoisyProfile(counts, {histogram.name: histogram for histogram in noise.histograms})


def _binned(histogram: Histogram, members: dict[int, int]) -> list[int]:
    counts = [0] * len(histogram.edges)
    for value, count in members.items():
        counts[histogram.bin_of(value)] += count
    return counts
