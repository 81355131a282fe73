"""OpenDP measurements: calibrating noise to a request, adding it, accuracy.

Each measured part of a plan (a vector of bounded integer aggregates, one
entry per group) gets its own OpenDP measurement: discrete Laplace under pure
DP, discrete Gaussian under zCDP. Their privacy maps, not hand-written
formulas, give the loss; the query's budget is split across parts evenly, or
in proportion to weights the buyer gives its output columns. What differs
between the two is chosen once, as the accounting mode's :class:`Mode`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import opendp.prelude as dp

from engine import quantiles
from engine.accounting import Accounting, ChargeReceipt, Cost, PrivacyRequest, compose, largest_rho, zcdp_to_epsilon
from engine.backends.base import ExactAggregates
from engine.errors import InternalError, PolicyViolation, UnknownColumn
from engine.plan import Part, PartKind, QueryPlan
from engine.sensitivity import Sensitivity

ALPHA = 0.05
"""Accuracy is the half-width of a (1 - ALPHA) interval: 95%."""
_ATTEMPTS = 40
_EXACT_GAUSSIAN_ACCURACY_SCALE = 10_000.0
MAX_WEIGHT_RATIO = 1e6
"""Weights further apart than this would starve a part of budget (and strain floating point)."""


@dataclass(frozen=True)
class Mode:
    """What an accounting mode fixes for every measurement of a query, chosen once from its :class:`Accounting`.

    The loss is ε under pure DP and ρ under zCDP; a noise ``scale`` is
    ``multiplier × sensitivity``, so that a part with ``spread(weight)`` pays
    its weight's share of the loss.
    """

    norm: Callable[[Sensitivity], int]
    """The sensitivity the noise is calibrated to: L1 (Laplace) or L2 (Gaussian)."""
    make_noise: Callable[..., dp.Measurement]
    """OpenDP's constructor of integer vector noise: discrete Laplace or discrete Gaussian."""
    vector_metric: dp.Metric
    quantile_measure: dp.Measure
    make_threshold: Callable[..., dp.Measurement]
    """OpenDP's constructor of the noisy threshold that releases private keys."""
    threshold_metric: dp.Metric
    accuracy: Callable[[float, float], float]
    """(scale, alpha) → half-width of the (1 - alpha) interval of one noisy integer."""
    mean_error: Callable[[float], float]
    """scale → the expected absolute noise (Laplace: the scale; Gaussian: σ·√(2/π)); for choosing bounds."""
    largest_loss: Callable[[float, float], float]
    """(ε, δ) → the largest loss a request of (ε, δ) allows."""
    epsilon_of: Callable[[float, float], float]
    """(loss, δ) → the ε of the (ε, δ) that the loss is charged as."""
    multiplier: Callable[[float, float], float]
    """(total weight, loss) → the first multiplier to try for that loss, split in proportion to the weights."""
    spread: Callable[[float], float]
    """A part's weight → the factor on its multiplier (the loss falls as 1/scale, or 1/scale² for ρ)."""
    weight_of: Callable[[float], float]
    """The inverse of ``spread``: a factor on the multiplier → the weight that gives it."""
    quantile_scale: Callable[[float], float]
    """A quantile's loss at scale 1 → its scale per unit of multiplier."""
    threshold_delta_share: float
    """The share of the request's δ that the private-key threshold may spend; the rest pays the conversion."""
    spends_delta: bool
    """Whether every query is charged its δ, not only one with private keys."""


def _gaussian_accuracy(scale: float, alpha: float) -> float:
    if scale <= _EXACT_GAUSSIAN_ACCURACY_SCALE:
        return float(dp.discrete_gaussian_scale_to_accuracy(scale, alpha))
    # OpenDP sums the discrete tail term by term (slow for large scales). There
    # P(|X| >= k) is about the continuous P(|Y| >= k - 1/2), so the continuous
    # half-width plus one, rounded up, is sound (checked against OpenDP's exact
    # answer around the cut-over in tests/test_noise_distribution.py).
    return math.floor(float(dp.gaussian_scale_to_accuracy(scale, alpha))) + 2.0


PURE = Mode(
    norm=lambda sensitivity: sensitivity.l1,
    make_noise=dp.m.make_laplace,
    vector_metric=dp.l1_distance(T="i64"),
    quantile_measure=dp.max_divergence(),
    make_threshold=dp.m.make_laplace_threshold,
    threshold_metric=dp.l01inf_distance(dp.absolute_distance(T="i64")),
    accuracy=lambda scale, alpha: float(dp.discrete_laplacian_scale_to_accuracy(scale, alpha)),
    mean_error=lambda scale: scale,
    largest_loss=lambda epsilon, delta: epsilon,
    epsilon_of=lambda epsilon, delta: epsilon,
    multiplier=lambda total, epsilon: total / epsilon,
    spread=lambda weight: 1 / weight,
    weight_of=lambda factor: 1 / factor,
    quantile_scale=lambda epsilon_at_unit_scale: epsilon_at_unit_scale,
    threshold_delta_share=1.0,
    spends_delta=False,
)
ZCDP = Mode(
    norm=lambda sensitivity: sensitivity.l2,
    make_noise=dp.m.make_gaussian,
    vector_metric=dp.l2_distance(T="i64"),
    quantile_measure=dp.zero_concentrated_divergence(),
    make_threshold=dp.m.make_gaussian_threshold,
    threshold_metric=dp.l02inf_distance(dp.absolute_distance(T="i64")),
    accuracy=_gaussian_accuracy,
    mean_error=lambda scale: scale * math.sqrt(2 / math.pi),
    largest_loss=largest_rho,
    epsilon_of=zcdp_to_epsilon,
    multiplier=lambda total, rho: math.sqrt(total / (2 * rho)) if rho > 0 else math.inf,
    spread=lambda weight: 1 / math.sqrt(weight),
    weight_of=lambda factor: 1 / factor**2,
    quantile_scale=lambda rho_at_unit_scale: math.sqrt(2 * rho_at_unit_scale),
    threshold_delta_share=0.5,
    spends_delta=True,
)
MODES = {Accounting.PURE: PURE, Accounting.ZCDP: ZCDP}


@dataclass(frozen=True)
class PartNoise:
    """How one part is noised: its sensitivity and noise scale in integer units."""

    part: Part
    sensitivity: int
    scale: float
    units_per_value: int
    """Fixed-point units per 1.0 of the column (1 for counts)."""
    loss: float
    """This part's share of the query's loss by OpenDP's map: ε (pure) or ρ (zCDP)."""


@dataclass(frozen=True)
class Threshold:
    """Private keys: a group is released only if its noisy count of units reaches ``value``."""

    part_index: int
    value: int
    delta: float
    """The δ this release of keys spends (OpenDP's map)."""


@dataclass(frozen=True)
class NoisePlan:
    accounting: Accounting
    parts: tuple[PartNoise, ...]
    cost: Cost
    """What the ledger must charge before :func:`release` may run."""
    loss: float
    """The composed loss OpenDP's maps report: ε (pure) or ρ (zCDP)."""
    threshold: Threshold | None = None

    @property
    def mode(self) -> Mode:
        return MODES[self.accounting]

    def accuracy(self, index: int, alpha: float = ALPHA) -> float:
        """Half-width of the (1 - alpha) interval around one noisy cell of part ``index``, in the column's units."""
        noise = self.parts[index]
        return self.mode.accuracy(noise.scale, alpha) / noise.units_per_value

    def rank_accuracy(self, index: int, alpha: float = ALPHA) -> float:
        """For a quantile part: rows by which, with probability 1 - alpha, one released cell may miss its quantile.

        A candidate (a point, or an interval of the bounds) scores the rows of
        rank between it and the quantile, ``|#{x < c} - q·n|`` at its best point
        c when no value equals c; OpenDP picks the least score after noise at
        ``scale`` (engine/quantiles.py). A candidate scoring ``t`` worse than
        the best one wins with probability at most ``exp(-t / scale)``, so a
        union bound over the candidates gives this half-width. It adds to the
        best point's own miss (ties) and to the rows inside the chosen
        interval, where the value is drawn uniformly; it is in rows, not in the
        column's units, because that conversion needs the data.
        """
        noise = self.parts[index]
        assert noise.part.kind is PartKind.QUANTILE
        return quantiles.rank_accuracy(noise.part, noise.scale, alpha)


def _measurement(mode: Mode, scale: float) -> dp.Measurement:
    return mode.make_noise(dp.vector_domain(dp.atom_domain(T="i64")), mode.vector_metric, scale=scale)


def fitted_vector_noise(mode: Mode, sensitivity: int, loss: float) -> tuple[float, float]:
    """The least noise scale (found by search) at which integer-vector noise of ``sensitivity`` spends at most ``loss``.

    Returns the scale and the loss OpenDP's map reports for it.
    """
    scale = mode.multiplier(1.0, loss) * sensitivity
    for _ in range(_ATTEMPTS):
        spent = float(_measurement(mode, scale).map(sensitivity))
        if spent <= loss:
            return scale, spent
        scale = math.nextafter(scale * (1 + 1e-12), math.inf)
    raise InternalError("could not calibrate noise within the requested budget")


def add_vector_noise(mode: Mode, scale: float, values: Sequence[int]) -> list[int]:
    """``values`` with integer noise at ``scale`` (OpenDP's discrete Laplace or Gaussian); callers hold a receipt."""
    return [int(value) for value in _measurement(mode, scale)([int(value) for value in values])]


def part_weights(plan: QueryPlan, weights: Mapping[str, float]) -> tuple[float, ...]:
    """Per measured part, its share of the loss from the buyer's weights per output column (1 when unnamed).

    A part several columns read takes the largest of their weights; a part no
    output reads (one only HAVING uses, or the private-key threshold) keeps 1.
    """
    outputs = {column.name.lower(): column for column in plan.output}
    unknown = [name for name in weights if name.lower() not in outputs]
    if unknown:
        names = ", ".join(column.name for column in plan.output)
        raise UnknownColumn(f"weights name {', '.join(map(repr, unknown))}, not output columns of the query ({names})")
    numbers = {name: _weight(value) for name, value in weights.items()}
    shares: list[float | None] = [None] * len(plan.parts)
    for name, weight in numbers.items():
        for index in plan.parts_of(outputs[name.lower()].expr):
            shares[index] = max(shares[index] or 0.0, weight)
    result = tuple(1.0 if share is None else share for share in shares)
    if result and max(result) / min(result) > MAX_WEIGHT_RATIO:
        raise PolicyViolation(f"weights may differ by a factor of at most {MAX_WEIGHT_RATIO:g}")
    largest = max(result, default=1.0)
    return tuple(share / largest for share in result)  # only ratios matter; 1e308s must not overflow a sum


def _weight(value: object) -> float:
    """A weight as a positive, finite float (an int too large for a float, a bool or NaN is refused)."""
    try:
        number = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan
    except OverflowError:
        number = math.inf
    if not (math.isfinite(number) and number > 0):
        raise PolicyViolation("weights must be positive, finite numbers")
    return number


def calibrate(
    plan: QueryPlan, request: PrivacyRequest, weights: Sequence[float] | None = None, reserved: float = 0.0
) -> NoisePlan:
    """Noise scales for every part so that the whole query costs at most ``request``.

    ``reserved`` is a loss (ε, or ρ under zCDP) another measurement of the
    same query spends (choosing its contribution bounds): it is composed
    with the parts' losses, so that all of them together fit the request.

    Each part's scale is ``multiplier × sensitivity`` over its weight (pure:
    the ε shares are proportional to the weights) or over the weight's square
    root (zCDP: so are the ρ shares); without weights every part gets an equal
    share. The multiplier is the smallest one whose composed loss, as OpenDP's
    maps report it, fits the request. With private keys the
    units-per-group part is released through OpenDP's threshold measurement,
    whose threshold is the smallest that keeps its δ within the request's
    (pure DP), or half of it (zCDP; the other half pays the ρ → ε conversion).
    """
    mode = MODES[request.accounting]
    epsilon, delta = float(request.epsilon), float(request.delta)
    private = plan.threshold_part is not None
    if private and delta == 0:
        columns = ", ".join(plan.private_keys)
        raise PolicyViolation(f"GROUP BY {columns} releases keys by a DP threshold, which needs a delta > 0")
    threshold_delta, conversion_delta = delta_split(mode, delta, private)
    sensitivities = [mode.norm(plan.sensitivity(part)) for part in plan.parts]
    weights = tuple(weights) if weights is not None else (1.0,) * len(plan.parts)
    if len(weights) != len(plan.parts):
        raise InternalError("one weight per measured part is needed")
    target = mode.largest_loss(epsilon, conversion_delta)
    spread = [mode.spread(weight) for weight in weights]

    def attempt(multiplier: float) -> _Attempt | None:
        """The noise at ``multiplier``, or None when its composed loss does not fit the request."""
        tried = _attempt(plan, mode, multiplier, sensitivities, spread, threshold_delta, reserved)
        fits = tried.loss <= target and mode.epsilon_of(tried.loss, conversion_delta) <= epsilon
        return tried if fits and (tried.threshold is None or tried.threshold.delta <= threshold_delta) else None

    if reserved and not 0 < reserved < target:
        raise InternalError("the reserved loss must leave part of the request to the query's parts")
    multiplier = mode.multiplier(math.fsum(weights), target - reserved)
    for _ in range(_ATTEMPTS):
        fitted = attempt(multiplier)
        if fitted is not None:
            break
        multiplier = math.nextafter(multiplier * (1 + 1e-12), math.inf)
    else:
        raise InternalError("could not calibrate noise within the requested budget")
    fitted = _tightened(attempt, multiplier, fitted, target)
    scales, losses, threshold, loss = fitted.scales, fitted.losses, fitted.threshold, fitted.loss
    parts = tuple(
        PartNoise(part, s, scale, part.value.scale if part.value else 1, part_loss)
        for part, s, scale, part_loss in zip(plan.parts, sensitivities, scales, losses, strict=True)
    )
    cost = Cost(request.epsilon, request.delta if mode.spends_delta or private else Decimal(0))
    return NoisePlan(request.accounting, parts, cost, loss, threshold)


@dataclass(frozen=True)
class _Attempt:
    """The noise of every part at one multiplier, and the loss OpenDP's maps compose for it."""

    scales: list[float]
    losses: list[float]
    threshold: Threshold | None
    loss: float


def _attempt(
    plan: QueryPlan,
    mode: Mode,
    multiplier: float,
    sensitivities: Sequence[int],
    spread: Sequence[float],
    threshold_delta: float,
    reserved: float,
) -> _Attempt:
    pairs = list(zip(plan.parts, sensitivities, spread, strict=True))
    scales = [_scale(plan, part, mode, multiplier * f, s) for part, s, f in pairs]
    if not all(math.isfinite(scale) for scale in scales):
        raise PolicyViolation("epsilon and delta are too small: no finite noise scale fits them")
    losses = [_loss(plan, part, mode, scale, s) for (part, s, _), scale in zip(pairs, scales, strict=True)]
    threshold = None
    if plan.threshold_part is not None:
        threshold, losses[plan.threshold_part] = _threshold(
            plan, mode, multiplier * spread[plan.threshold_part], threshold_delta
        )
    return _Attempt(scales, losses, threshold, compose([*losses, reserved] if reserved else losses))


_TIGHTENING_STEPS = 16
"""Bisection steps that bring a fitting multiplier down to within 2^-16 of the smallest that fits."""


def _tightened(
    attempt: Callable[[float], _Attempt | None], multiplier: float, fitted: _Attempt, target: float
) -> _Attempt:
    """The least noise that still fits, when the first fitting multiplier leaves part of the loss unspent.

    The first guess gives every part its share as the Laplace or Gaussian map
    would; a threshold's or a quantile's map spends less at that scale, and the
    rest of the request would be wasted as extra noise. Bisect between half the
    multiplier (a lower bound on what could fit) and the one that fits.
    """
    if fitted.loss >= target * (1 - 1e-9):
        return fitted
    low, high = multiplier / 2, multiplier
    for _ in range(_TIGHTENING_STEPS):
        middle = (low + high) / 2
        tried = attempt(middle)
        if tried is None:
            low = middle
        else:
            high, fitted = middle, tried
    return fitted


def request_loss(plan: QueryPlan, request: PrivacyRequest) -> float:
    """The largest loss (ε, or ρ under zCDP) the request allows the query's measurements together."""
    mode = MODES[request.accounting]
    _, conversion_delta = delta_split(mode, float(request.delta), plan.threshold_part is not None)
    return mode.largest_loss(float(request.epsilon), conversion_delta)


def delta_split(mode: Mode, delta: float, private_keys: bool) -> tuple[float, float]:
    """How a query's δ divides: (the private-key threshold's, the ρ → ε conversion's).

    Pure DP spends δ only on the threshold; zCDP without private keys only on the conversion; with both, half each.
    """
    threshold = delta * mode.threshold_delta_share if private_keys else 0.0
    return threshold, (delta - threshold if mode.spends_delta else 0.0)


def _scale(plan: QueryPlan, part: Part, mode: Mode, multiplier: float, sensitivity: int) -> float:
    """The part's noise scale for an equal share of the loss (1/multiplier ε, or 1/(2·multiplier²) ρ)."""
    if part.kind is not PartKind.QUANTILE:
        return multiplier * sensitivity
    at_unit_scale = _loss(plan, part, mode, 1.0, sensitivity)  # the loss shrinks as 1/scale (ρ: 1/scale²)
    return multiplier * mode.quantile_scale(at_unit_scale)


def _loss(plan: QueryPlan, part: Part, mode: Mode, scale: float, sensitivity: int) -> float:
    """The part's privacy loss by OpenDP's map; a quantile pays once in each group a unit can touch."""
    if part.kind is not PartKind.QUANTILE:
        return float(_measurement(mode, scale).map(sensitivity))
    bound = plan.sensitivity(part)
    return bound.groups * float(_quantile_measurement(part, mode, scale).map(bound.per_group))


def _quantile_measurement(part: Part, mode: Mode, scale: float) -> dp.Measurement:
    """The OpenDP measurement whose map a quantile part pays (engine/quantiles.py): its scores, then noisy max."""
    return quantiles.measurement(part, mode.quantile_measure, scale)


def _threshold_measurement(mode: Mode, scale: float, value: int) -> dp.Measurement:
    domain = dp.map_domain(dp.atom_domain(T=str), dp.atom_domain(T="i64"))
    return mode.make_threshold(domain, mode.threshold_metric, scale=scale, threshold=value)


def _threshold(plan: QueryPlan, mode: Mode, multiplier: float, delta: float) -> tuple[Threshold, float]:
    """The smallest threshold whose δ (by OpenDP's map) fits ``delta``, and its ε or ρ."""
    assert plan.threshold_part is not None
    sensitivity = plan.sensitivity(plan.parts[plan.threshold_part])
    middle = mode.norm(sensitivity)
    distance = (sensitivity.groups, middle, sensitivity.per_group)
    scale = multiplier * middle

    def spent(value: int) -> tuple[float, float]:
        loss, spent_delta = _threshold_measurement(mode, scale, value).map(distance)
        return float(loss), float(spent_delta)

    high = 1
    while spent(high)[1] > delta:
        if high > 2**60:
            raise PolicyViolation("delta is too small for any threshold on private keys")
        high *= 2
    low = high // 2
    while high - low > 1:
        middle_value = (low + high) // 2
        low, high = (low, middle_value) if spent(middle_value)[1] <= delta else (middle_value, high)
    loss, spent_delta = spent(high)
    return Threshold(plan.threshold_part, high, spent_delta), loss


def add_noise(noise: NoisePlan, exact: Sequence[Sequence[Any]], receipt: ChargeReceipt) -> list[list[int]]:
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
        if part_noise.part.kind is PartKind.QUANTILE:
            noisy.append(_noisy_quantiles(noise.mode, part_noise, values))
            continue
        noisy.append(add_vector_noise(noise.mode, part_noise.scale, values))
    return noisy


def _noisy_quantiles(mode: Mode, part_noise: PartNoise, groups: Sequence[Sequence[int]]) -> list[int]:
    """One released quantile per group, as fixed-point integers (like every other part)."""
    return quantiles.release(mode.quantile_measure, part_noise.part, part_noise.scale, groups)


@dataclass(frozen=True)
class NoisyAggregates:
    """What may be released: the groups' keys (public, or past the threshold) and their noisy parts."""

    keys: list[tuple[object, ...]]
    parts: list[list[int]]


def release(noise: NoisePlan, exact: ExactAggregates, receipt: ChargeReceipt) -> NoisyAggregates:
    """Noise every part and, with private keys, keep only the groups whose noisy unit count passes the threshold."""
    if noise.threshold is None:
        return NoisyAggregates(list(exact.keys), add_noise(noise, exact.parts, receipt))
    threshold = noise.threshold
    part_noise = noise.parts[threshold.part_index]
    measurement = _threshold_measurement(noise.mode, part_noise.scale, threshold.value)
    encoded = [json.dumps(list(key), default=str) for key in exact.keys]  # dates (public keys beside) as ISO text
    others = [values for index, values in enumerate(exact.parts) if index != threshold.part_index]
    noisy_others = add_noise(_without(noise, threshold.part_index), others, receipt)
    passed = measurement(dict(zip(encoded, (int(v) for v in exact.parts[threshold.part_index]), strict=True)))
    kept = [index for index, key in enumerate(encoded) if key in passed]
    parts: list[list[int]] = []
    remaining = iter(noisy_others)
    for index in range(len(noise.parts)):
        if index == threshold.part_index:
            parts.append([int(passed[encoded[group]]) for group in kept])
        else:
            values = next(remaining)
            parts.append([values[group] for group in kept])
    return NoisyAggregates([exact.keys[group] for group in kept], parts)


def _without(noise: NoisePlan, index: int) -> NoisePlan:
    """The plan's vector parts, minus the one the threshold measurement noises itself."""
    return NoisePlan(noise.accounting, noise.parts[:index] + noise.parts[index + 1 :], noise.cost, noise.loss)
