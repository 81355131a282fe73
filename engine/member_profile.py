"""The DP release of how much members contribute: what choosing bounds, and disclosing their bias, read.

Per member, three statistics of the rows a query reads (after its filter):
rows in all its groups, groups touched, rows in its fullest group. Each is
counted into a fixed, public histogram of geometric bins, so that adding or
removing a member moves one count of each histogram by one: the released
vector's L1 sensitivity is the number of histograms, its L2 the root of that.
OpenDP's integer-vector noise (the query's accounting: discrete Laplace or
Gaussian) is added after the charge, like every other part of the query.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

from engine.accounting import ChargeReceipt, Cost
from engine.backends.base import MemberProfile
from engine.errors import InternalError
from engine.mechanisms import Mode, add_vector_noise, fitted_vector_noise
from engine.sensitivity import profile_sensitivity

EDGES: tuple[int, ...] = tuple(sorted({round(2 ** (step / 2)) for step in range(41)}))
"""Bin edges, and every value a chosen bound may take: 1, 2, 3, 4, 6, 8, 11, 16, 23, 32, 45, … 2^20."""
DETECTION_ALPHA = 0.05
"""The chance that noise alone makes any empty bin of the profile read as occupied."""
TOTAL = "rows"
SPREAD = ("groups", "fullest")
"""The statistics of the per-group mode (G groups × R rows in each); the total mode reads rows only."""


def bin_of(value: int) -> int:
    """The bin a member's statistic (≥ 1) falls in: the last edge at or below it."""
    return max(bisect.bisect_right(EDGES, value) - 1, 0)


def representative(index: int) -> float:
    """A bin's typical value: the middle of its integers (the last bin's lower edge times √2)."""
    if index == len(EDGES) - 1:
        return EDGES[index] * math.sqrt(2)
    return (EDGES[index] + EDGES[index + 1] - 1) / 2


@dataclass(frozen=True)
class ProfileNoise:
    """How the profile is released: which statistics, the integer-vector noise's scale, and its loss."""

    mode: Mode
    statistics: tuple[str, ...]
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
        alpha = DETECTION_ALPHA / (2 * len(EDGES) * len(self.statistics))
        single = self.mode.accuracy(self.scale, alpha)
        above = 0
        for index in range(len(noisy) - 1, -1, -1):
            above += noisy[index]
            if noisy[index] > single or above > single * math.sqrt(len(noisy) - index):
                return index
        return -1

    @classmethod
    def fitted(cls, mode: Mode, statistics: tuple[str, ...], loss: float) -> ProfileNoise:
        """The least noise whose loss is at most ``loss``."""
        scale, spent = fitted_vector_noise(mode, mode.norm(profile_sensitivity(len(statistics))), loss)
        return cls(mode, statistics, scale, spent)


@dataclass(frozen=True)
class NoisyProfile:
    """The released histograms (noisy member counts per bin, negative ones read as 0)."""

    counts: dict[str, tuple[float, ...]]

    def members(self) -> float:
        """About how many members the query's rows belong to."""
        return max(math.fsum(self.counts[TOTAL]), 1.0)

    def total(self, statistic: str) -> float:
        """About the sum of ``statistic`` over members (rows: the query's rows)."""
        return max(math.fsum(count * representative(k) for k, count in enumerate(self.counts[statistic])), 1.0)

    def excess(self, statistic: str, cap: int) -> float:
        """About Σ over members of (statistic − cap)⁺: what capping the statistic at ``cap`` removes."""
        return math.fsum(count * max(representative(k) - cap, 0.0) for k, count in enumerate(self.counts[statistic]))


def release(noise: ProfileNoise, exact: MemberProfile, receipt: ChargeReceipt, cost: Cost) -> NoisyProfile:
    """Bin the exact counts and add the noise: only ever after the charge (a receipt for the query's ``cost``)."""
    if receipt.cost != cost:
        raise InternalError("the ledger charged a different cost than the profile was calibrated for")
    vector: list[int] = []
    for statistic in noise.statistics:
        vector += _binned(exact.members.get(statistic, {}))
    noisy = add_vector_noise(noise.mode, noise.scale, vector)
    counts = {}
    for index, statistic in enumerate(noise.statistics):
        window = noisy[index * len(EDGES) : (index + 1) * len(EDGES)]
        top = noise.highest_occupied(window)
        counts[statistic] = tuple(float(max(count, 0)) if bin_ <= top else 0.0 for bin_, count in enumerate(window))
    return NoisyProfile(counts)


def _binned(members: dict[int, int]) -> list[int]:
    counts = [0] * len(EDGES)
    for value, count in members.items():
        counts[bin_of(value)] += count
    return counts
