"""OpenDP measurements: calibrating noise to a request, adding it, accuracy.

Each measured part of a plan (a vector of bounded integer aggregates, one
entry per group) gets its own OpenDP measurement: discrete Laplace under pure
DP, discrete Gaussian under zCDP. Their privacy maps, not hand-written
formulas, give the loss; the query's budget is split evenly across parts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import opendp.prelude as dp

from engine.accounting import Accounting, Cost, PrivacyRequest, compose, largest_rho, zcdp_to_epsilon
from engine.errors import InternalError
from engine.ledger import ChargeReceipt
from engine.plan import Part, QueryPlan

ALPHA = 0.05
"""Accuracy is the half-width of a (1 - ALPHA) interval: 95%."""
_ATTEMPTS = 40
_EXACT_GAUSSIAN_ACCURACY_SCALE = 10_000.0


@dataclass(frozen=True)
class PartNoise:
    """How one part is noised: its sensitivity and noise scale in integer units."""

    part: Part
    sensitivity: int
    scale: float
    units_per_value: int
    """Fixed-point units per 1.0 of the column (1 for counts)."""


@dataclass(frozen=True)
class NoisePlan:
    accounting: Accounting
    parts: tuple[PartNoise, ...]
    cost: Cost
    """What the ledger must charge before :func:`add_noise` may run."""
    loss: float
    """The composed loss OpenDP's maps report: ε (pure) or ρ (zCDP)."""

    def accuracy(self, index: int, alpha: float = ALPHA) -> float:
        """Half-width of the (1 - alpha) interval around one noisy cell of part ``index``, in the column's units."""
        noise = self.parts[index]
        return _integer_accuracy(self.accounting, noise.scale, alpha) / noise.units_per_value


def _integer_accuracy(accounting: Accounting, scale: float, alpha: float) -> float:
    if accounting is Accounting.PURE:
        return float(dp.discrete_laplacian_scale_to_accuracy(scale, alpha))
    if scale <= _EXACT_GAUSSIAN_ACCURACY_SCALE:
        return float(dp.discrete_gaussian_scale_to_accuracy(scale, alpha))
    # OpenDP sums the discrete tail term by term (slow for large scales). There
    # P(|X| >= k) is about the continuous P(|Y| >= k - 1/2), so the continuous
    # half-width plus one, rounded up, is sound (checked against OpenDP's exact
    # answer around the cut-over in tests/test_noise_distribution.py).
    return math.floor(float(dp.gaussian_scale_to_accuracy(scale, alpha))) + 2.0


def _measurement(accounting: Accounting, scale: float) -> dp.Measurement:
    domain = dp.vector_domain(dp.atom_domain(T="i64"))
    if accounting is Accounting.PURE:
        return dp.m.make_laplace(domain, dp.l1_distance(T="i64"), scale=scale)
    return dp.m.make_gaussian(domain, dp.l2_distance(T="i64"), scale=scale)


def calibrate(plan: QueryPlan, request: PrivacyRequest) -> NoisePlan:
    """Noise scales for every part so that the whole query costs at most ``request``.

    Each part's scale is ``multiplier × sensitivity``, so every part gets an
    equal share of the loss; the multiplier is the smallest one whose composed
    loss, as OpenDP's maps report it, fits the request.
    """
    accounting = request.accounting
    sensitivities = [_sensitivity(plan, part, accounting) for part in plan.parts]
    count = len(sensitivities)
    epsilon, delta = float(request.epsilon), float(request.delta)
    if accounting is Accounting.PURE:
        target = epsilon
        multiplier = count / epsilon
    else:
        target = largest_rho(epsilon, delta)
        multiplier = math.sqrt(count / (2 * target))
    for _ in range(_ATTEMPTS):
        losses = [_measurement(accounting, multiplier * s).map(s) for s in sensitivities]
        loss = compose(losses)
        if loss <= target and (accounting is Accounting.PURE or zcdp_to_epsilon(loss, delta) <= epsilon):
            break
        multiplier = math.nextafter(multiplier * (1 + 1e-12), math.inf)
    else:
        raise InternalError("could not calibrate noise within the requested budget")
    parts = tuple(
        PartNoise(part, s, multiplier * s, part.value.scale if part.value else 1)
        for part, s in zip(plan.parts, sensitivities, strict=True)
    )
    return NoisePlan(accounting, parts, request.cost, loss)


def _sensitivity(plan: QueryPlan, part: Part, accounting: Accounting) -> int:
    sensitivity = plan.sensitivity(part)
    return sensitivity.l1 if accounting is Accounting.PURE else sensitivity.l2


def add_noise(noise: NoisePlan, exact: Sequence[Sequence[int]], receipt: ChargeReceipt) -> list[list[int]]:
    """Noisy copies of the exact bounded aggregates, one list per part.

    Takes the ledger's receipt so that noise is only ever drawn after the
    charge; a receipt for another cost is a bug.
    """
    if receipt.cost != noise.cost:
        raise InternalError("the ledger charged a different cost than the noise was calibrated for")
    if len(exact) != len(noise.parts):
        raise InternalError("the backend returned a different number of parts than the plan has")
    noisy = []
    for part_noise, values in zip(noise.parts, exact, strict=True):
        measurement = _measurement(noise.accounting, part_noise.scale)
        noisy.append(list(measurement([int(value) for value in values])))
    return noisy
