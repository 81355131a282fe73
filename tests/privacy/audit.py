"""An empirical privacy audit: a statistical lower bound on a mechanism's privacy loss.

A mechanism ``M`` is (ε, δ)-DP when, for neighbouring pools ``D0`` and ``D1``
and every event ``S``, ``P[M(D0) ∈ S] ≤ e^ε · P[M(D1) ∈ S] + δ`` (and with the
pools swapped). Any event therefore gives ``ε ≥ ln((P0(S) − δ) / P1(S))``.

The audit draws two independent sets of samples from each pool:

1. *selection* samples pick the event (a threshold on a scalar observable,
   either side, either direction) that looks most damning;
2. *fresh* samples then bound that one event's probabilities with
   Clopper–Pearson intervals, so the lower bound
   ``ln((lower(P0) − δ) / upper(P1))`` holds with confidence ``1 − alpha``
   whatever the selection step did.

A correct mechanism yields a bound below its ε (except with probability at
most ``alpha``); a mechanism leaking more than it claims yields a larger one,
given enough samples. ``tests/privacy/test_audit.py`` shows both.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import numpy as np
from scipy import stats

Sampler = Callable[[int], np.ndarray]
"""Draws ``n`` independent outputs of a mechanism on one pool, each reduced to a float."""

_MAX_CANDIDATE_THRESHOLDS = 400


@dataclass(frozen=True)
class AuditSizes:
    """Samples drawn per pool: to choose the event, then to bound its probabilities."""

    select: int
    test: int


class Side(Enum):
    AT_LEAST = "≥"
    AT_MOST = "≤"


@dataclass(frozen=True)
class Event:
    """``observable <side> threshold``; ``numerator`` names the pool expected to make it likelier."""

    side: Side
    threshold: float
    numerator: int

    def hits(self, samples: np.ndarray) -> int:
        inside = samples >= self.threshold if self.side is Side.AT_LEAST else samples <= self.threshold
        return int(np.count_nonzero(inside))


@dataclass(frozen=True)
class AuditResult:
    epsilon_lower_bound: float
    """−inf when no event was frequent enough to say anything."""
    event: Event
    numerator_lower: float
    denominator_upper: float
    samples_per_pool: int


def clopper_pearson(hits: int, trials: int, alpha: float) -> tuple[float, float]:
    """One-sided exact binomial bounds: each holds with probability at least ``1 − alpha``."""
    lower = 0.0 if hits == 0 else float(stats.beta.ppf(alpha, hits, trials - hits + 1))
    upper = 1.0 if hits == trials else float(stats.beta.ppf(1 - alpha, hits + 1, trials - hits))
    return lower, upper


def probability_bounds(numerator_hits: int, denominator_hits: int, trials: int, alpha: float) -> tuple[float, float]:
    """A lower bound on P_num and an upper bound on P_den, jointly holding with probability ``1 − alpha``."""
    numerator, _ = clopper_pearson(numerator_hits, trials, alpha / 2)
    _, denominator = clopper_pearson(denominator_hits, trials, alpha / 2)
    return numerator, denominator


def epsilon_from(numerator: float, denominator: float, delta: float) -> float:
    """``ln((P_num − δ) / P_den)``: the ε any (ε, δ)-DP mechanism must have, given these probabilities."""
    if numerator <= delta:
        return -math.inf
    return math.log((numerator - delta) / denominator)


def candidate_events(samples: tuple[np.ndarray, np.ndarray]) -> list[Event]:
    """Thresholds at (up to a few hundred) distinct pooled values, both sides, both directions."""
    pooled = np.unique(np.concatenate(samples))
    if len(pooled) > _MAX_CANDIDATE_THRESHOLDS:
        pooled = np.unique(np.quantile(pooled, np.linspace(0, 1, _MAX_CANDIDATE_THRESHOLDS), method="nearest"))
    return [Event(side, float(t), numerator) for t in pooled for side in Side for numerator in (0, 1)]


def choose_event(samples: tuple[np.ndarray, np.ndarray], delta: float, alpha: float) -> Event:
    """The event whose bound, computed on these (selection) samples, is largest."""
    trials = len(samples[0])

    def score(event: Event) -> float:
        hits = (event.hits(samples[event.numerator]), event.hits(samples[1 - event.numerator]))
        return epsilon_from(*probability_bounds(*hits, trials, alpha), delta)

    return max(candidate_events(samples), key=score)


def audit(pool0: Sampler, pool1: Sampler, delta: float, sizes: AuditSizes, alpha: float = 1e-3) -> AuditResult:
    """A lower bound on ε that holds with confidence ``1 − alpha`` (for the claimed ``delta``)."""
    event = choose_event((pool0(sizes.select), pool1(sizes.select)), delta, alpha)
    fresh = (pool0(sizes.test), pool1(sizes.test))
    hits = (event.hits(fresh[event.numerator]), event.hits(fresh[1 - event.numerator]))
    numerator, denominator = probability_bounds(*hits, sizes.test, alpha)
    return AuditResult(epsilon_from(numerator, denominator, delta), event, numerator, denominator, sizes.test)
