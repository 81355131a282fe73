"""Privacy costs as exact values, composition, and budget arithmetic.

Costs are :class:`~decimal.Decimal` so that thousands of charges of 0.1 add
up to exactly what was asked (no float drift in the ledger). Their arithmetic
runs in an unbounded context that refuses to round: the default context keeps
28 digits, so 1000 + 4e-28 would round back to 1000 and a spent budget would
keep answering tiny charges for free. Composition of
the measurements inside one query uses the losses OpenDP's privacy maps
report; the zCDP → (ε, δ) conversion is OpenDP's too.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal, Inexact, Rounded
from enum import StrEnum

import opendp.prelude as dp

from engine.errors import PolicyViolation
from engine.policy import BudgetSection

dp.enable_features("contrib")


class Accounting(StrEnum):
    PURE = "pure"
    """ε-DP; discrete Laplace noise; δ is never spent."""
    ZCDP = "zcdp"
    """ρ-zCDP inside a query, discrete Gaussian noise, charged as (ε, δ)."""


EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN, traps=[Inexact, Rounded])
"""Adds and subtracts costs without rounding (an inexact result raises instead of passing silently)."""


def exact(value: float | int | str | Decimal) -> Decimal:
    """The decimal a person typed: ``0.1`` stays ``Decimal('0.1')``."""
    return value if isinstance(value, Decimal) else Decimal(repr(float(value)) if not isinstance(value, str) else value)


@dataclass(frozen=True)
class Cost:
    """An (ε, δ) privacy cost or budget, exact."""

    epsilon: Decimal
    delta: Decimal

    def __add__(self, other: Cost) -> Cost:
        return Cost(EXACT.add(self.epsilon, other.epsilon), EXACT.add(self.delta, other.delta))

    def __sub__(self, other: Cost) -> Cost:
        return Cost(EXACT.subtract(self.epsilon, other.epsilon), EXACT.subtract(self.delta, other.delta))

    def within(self, budget: Cost) -> bool:
        return self.epsilon <= budget.epsilon and self.delta <= budget.delta

    def to_dict(self) -> dict[str, float]:
        return {"epsilon": float(self.epsilon), "delta": float(self.delta)}


ZERO = Cost(Decimal(0), Decimal(0))


@dataclass(frozen=True)
class ChargeReceipt:
    """Proof that ``cost`` was durably charged for ``query_id``: the ledger issues it, noise is drawn only against it.

    Defined here, beside :class:`Cost`, so that the mechanisms can demand one
    without depending on the ledger that issues it.
    """

    query_id: str
    cost: Cost


def budget_of(section: BudgetSection) -> Cost:
    return Cost(exact(section.epsilon), exact(section.delta))


@dataclass(frozen=True)
class PrivacyRequest:
    """The (ε, δ) a query may spend, validated against the dataset's policy."""

    epsilon: Decimal
    delta: Decimal
    accounting: Accounting

    @classmethod
    def validate(cls, epsilon: object, delta: object, budget: BudgetSection) -> PrivacyRequest:
        eps = _finite(epsilon, "epsilon")
        if eps <= 0:
            raise PolicyViolation("epsilon must be greater than 0")
        if eps > budget.max_epsilon_per_query:
            raise PolicyViolation(
                f"epsilon {eps} is above this dataset's max_epsilon_per_query ({budget.max_epsilon_per_query})"
            )
        accounting = Accounting(budget.accounting)
        dlt = 0.0 if delta is None else _finite(delta, "delta")
        if not 0 <= dlt < 1:
            raise PolicyViolation("delta must be at least 0 and below 1")
        if accounting is Accounting.ZCDP and dlt == 0:
            raise PolicyViolation("this dataset uses zcdp accounting: give a delta > 0 (e.g. --delta 1e-7)")
        if exact(dlt) > budget.delta_per_query:
            raise PolicyViolation(
                f"delta {dlt} is above this dataset's max_delta_per_query ({budget.delta_per_query}), "
                "so that no one query can take the delta every other buyer needs"
            )
        return cls(exact(eps), exact(dlt), accounting)


def _finite(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal, str)):
        raise PolicyViolation(f"{name} must be a number")
    try:
        number = float(value)
    except ValueError:
        raise PolicyViolation(f"{name} must be a number") from None
    if not math.isfinite(number):
        raise PolicyViolation(f"{name} must be a finite number")
    return number


def compose(losses: Sequence[float]) -> float:
    """Sequential composition: ε adds under pure DP, ρ adds under zCDP."""
    return math.fsum(losses)


def zcdp_to_epsilon(rho: float, delta: float) -> float:
    """The ε of (ε, δ)-DP implied by ρ-zCDP, by OpenDP's conversion.

    A Gaussian of scale 1 queried at distance ``d`` is ``d²/2``-zCDP, so it
    carries OpenDP's conversion for any ρ (``d`` rounded up, to stay sound).
    """
    if rho == 0:
        return 0.0
    epsilon, _ = _conversion(delta).map(math.nextafter(math.sqrt(2 * rho), math.inf))
    return float(epsilon)


@functools.lru_cache(maxsize=64)
def _conversion(delta: float) -> dp.Measurement:
    reference = dp.m.make_gaussian(dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float), scale=1.0)
    return dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(reference), delta)


@functools.lru_cache(maxsize=256)
def largest_rho(epsilon: float, delta: float) -> float:
    """The largest ρ whose (ε, δ) conversion stays within ``epsilon`` (bisection on OpenDP's map)."""
    log_term = math.log(1 / delta)
    low = (math.sqrt(log_term + epsilon) - math.sqrt(log_term)) ** 2  # the classic bound: always feasible
    high = epsilon
    while high - low > 1e-7 * high:
        middle = (low + high) / 2
        if middle in (low, high):  # no float lies between them (a subnormal ε): as close as it gets
            break
        if zcdp_to_epsilon(middle, delta) <= epsilon:
            low = middle
        else:
            high = middle
    return low
