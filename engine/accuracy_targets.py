"""Ask for accuracy, not ε: the least ε whose noise gives each named column at most its 95% half-width.

A buyer names output columns and the half-width they need (``{"n": 50}``).
Only columns whose accuracy one part's noise fixes before release may be
named (COUNT, SUM): AVG's half-width divides by the noisy count, so it is
known only once released, and is refused by name rather than bounded by a
guess about the data. The split across parts comes from the targets
(:func:`target_weights`); the ε is then the least, on a grid of
``SIGNIFICANT_DIGITS`` significant digits, at which :func:`calibrate`'s noise
meets every target (found by bisection: for a fixed split, a larger ε never
gives more noise). It is an exact Decimal the ledger charges as it is.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

from engine.accounting import PrivacyRequest
from engine.errors import PolicyViolation, UnknownColumn
from engine.mechanisms import MODES, NoisePlan, calibrate
from engine.plan import QueryPlan
from engine.postprocess import measured_part

SIGNIFICANT_DIGITS = 6
"""The chosen ε is rounded up to this many significant digits, so the ledger charges a short exact number."""
_RELATIVE_PRECISION = 1e-7
"""The bisection stops when its bracket is this narrow: below one step of the six-digit grid."""
_SEARCH_FACTOR = 2.0**40
"""How far above (or below) the per-query cap the search looks before it gives up (or settles)."""


@dataclass(frozen=True)
class AccuracyChoice:
    """The request the targets chose, the split they gave, and the noise that meets them."""

    request: PrivacyRequest
    weights: tuple[float, ...]
    noise: NoisePlan


def part_targets(plan: QueryPlan, targets: Mapping[str, object]) -> dict[int, float]:
    """Per measured part, the smallest half-width (in its column's units) a named column asks of it.

    Unknown names are ``unknown_column``; a target that is not a positive
    finite number, or on a column whose accuracy is only known after release
    (AVG, quantiles, spreads, arithmetic), is a ``policy_violation``.
    """
    if not targets:
        raise PolicyViolation("accuracy names no column: give COLUMN=HALF_WIDTH for at least one output column")
    outputs = {column.name.lower(): column for column in plan.output}
    unknown = [name for name in targets if name.lower() not in outputs]
    if unknown:
        names = ", ".join(column.name for column in plan.output)
        unknowns = ", ".join(map(repr, unknown))
        raise UnknownColumn(f"accuracy names {unknowns}, not output columns of the query ({names})")
    result: dict[int, float] = {}
    for name, value in targets.items():
        target = _target(name, value)
        part = measured_part(plan, outputs[name.lower()])
        if part is None:
            raise PolicyViolation(
                f"accuracy of {name!r} is known only after release (AVG divides by a noisy count; quantiles, "
                "spreads and arithmetic have none): give targets on COUNT or SUM columns"
            )
        result[part] = min(result.get(part, math.inf), target)
    return result


def _target(name: str, value: object) -> float:
    number = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan
    if not (math.isfinite(number) and number > 0):
        raise PolicyViolation(f"the accuracy target of {name!r} must be a positive, finite number")
    return number


def target_weights(plan: QueryPlan, request: PrivacyRequest, targets: Mapping[int, float]) -> tuple[float, ...]:
    """Per part, the weight that makes its noise scale proportional to its target: the least total ε.

    Each part's half-width is (nearly) proportional to its noise scale, and its
    loss falls as the scale grows; so the cheapest noise that meets every
    target gives each named part the largest scale its target allows, that is
    scales in proportion to ``target × units / sensitivity``, and no split can
    meet all targets with less ε. The weights that make :func:`calibrate` pick
    those scales are the mode's inverse ``spread`` of that factor. A part no
    target names (another column, the private-key threshold) gets the least
    weight a named part gets: it is still released, at no more than the
    cheapest share any target needed.
    """
    mode = MODES[request.accounting]
    named = {
        index: mode.weight_of(target * _units(plan, index) / mode.norm(plan.sensitivity(plan.parts[index])))
        for index, target in targets.items()
    }
    least = min(named.values())
    weights = [named.get(index, least) for index in range(len(plan.parts))]
    largest = max(weights)
    return tuple(weight / largest for weight in weights)


def _units(plan: QueryPlan, index: int) -> int:
    value = plan.parts[index].value
    return value.scale if value else 1


def choose(
    plan: QueryPlan, request: PrivacyRequest, targets: Mapping[int, float], cap: Decimal, cap_name: str
) -> AccuracyChoice:
    """The least ε (δ as in ``request``) that meets ``targets``; refused, naming it, when it is above ``cap``.

    ``request`` carries the validated δ and accounting; its ε is ignored.
    """
    weights = target_weights(plan, request, targets)
    start = dataclasses.replace(request, epsilon=cap if cap > 0 else Decimal(1))
    calibrate(plan, start, weights)  # what no ε can cure (private keys without δ) is refused here, not searched

    def meeting(epsilon: Decimal) -> NoisePlan | None:
        try:
            noise = calibrate(plan, dataclasses.replace(request, epsilon=epsilon), weights)
        except PolicyViolation:
            return None  # an ε so small that no finite noise fits it meets nothing
        return noise if all(noise.accuracy(index) <= target for index, target in targets.items()) else None

    epsilon, noise = _least(meeting, float(start.epsilon))
    if epsilon > cap:
        raise PolicyViolation(f"the accuracy asked needs epsilon {epsilon}, above {cap_name} ({cap})")
    return AccuracyChoice(dataclasses.replace(request, epsilon=epsilon), weights, noise)


def _least(meeting: Callable[[Decimal], NoisePlan | None], start: float) -> tuple[Decimal, NoisePlan]:
    """The least ε on the grid at which ``meeting`` gives noise: bracketed from ``start`` by doubling, then bisected."""
    low = high = start
    noise = meeting(_round_up(start))
    while noise is None:
        low, high = high, high * 2
        if high > start * _SEARCH_FACTOR:
            raise PolicyViolation(f"the accuracy asked needs an epsilon above {_round_up(low)}")
        noise = meeting(_round_up(high))
    while low == high or meeting(_round_up(low)) is not None:
        if low < start / _SEARCH_FACTOR:
            return _round_up(high), noise  # even a vanishing ε meets the targets
        high, low = low, low / 2
    found = meeting(_round_up(high))
    assert found is not None
    noise = found
    while high > low * (1 + _RELATIVE_PRECISION):
        middle = (low + high) / 2
        found = meeting(_round_up(middle))
        if found is None:
            low = middle
        else:
            high, noise = middle, found
    return _round_up(high), noise


def _round_up(value: float) -> Decimal:
    """``value`` rounded up to ``SIGNIFICANT_DIGITS`` significant digits: an ε that costs at least as much."""
    exact = Decimal(value)
    step = Decimal(1).scaleb(exact.adjusted() - SIGNIFICANT_DIGITS + 1)
    return exact.quantize(step, rounding=ROUND_CEILING).normalize()
