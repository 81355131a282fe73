"""Samplers for the audit that run the engine's own path: plan, bound, noise, post-process.

The first release of a query goes through :meth:`Engine.query`, so the ledger
charges it for real and that charge is the ε the audit holds the engine to.
Repeating ``Engine.query`` would hand back the stored release (release reuse,
as it must), so the thousands of further draws call the same steps the engine
does after charging: the real backend bounds the pool (again every few draws,
so its random choice of a member's groups and rows varies), and the real
OpenDP measurements in :func:`engine.mechanisms.release` add the noise.

The audit's Clopper–Pearson intervals assume independent, identically
distributed draws, so an observable must not depend on the backend's random
choices (which of an over-the-bounds member's groups or rows are kept): the
audited pools are built so that only the worst member meets the bounds, and
the observables read what does not depend on that member's random choice.

A query with a member profile (``"auto"`` bounds, or ``explain_bias``) is
drawn whole by :class:`WholeRelease`: each draw runs the engine's own
``Engine._answer`` after the one real charge (the profile noised, the bounds
chosen from it, contribution and clamp bounds, or their bias estimated, the
plan calibrated at them, the answer noised), over a backend that reads each
exact result once per bounds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine import Engine
from engine.accounting import Cost, PrivacyRequest
from engine.backends.base import ExactAggregates, MemberProfile
from engine.bounds_choice import column_shares, contribution_bounds, value_bounds
from engine.engine import Ask
from engine.ledger import ChargeReceipt
from engine.mechanisms import calibrate, release
from engine.plan import Contribution, FixedPoint, QueryPlan
from engine.planner import plan_query
from engine.postprocess import Value, build_table
from engine.sql import parse

Observable = Callable[[Sequence[Sequence[Value]]], float]
"""Reduces a released table's rows to the one number the audit thresholds."""

ABSENT = -math.inf
"""What an observable reports for a group that was not released (a private key below the threshold)."""


def only_cell(rows: Sequence[Sequence[Value]]) -> float:
    """The single cell of an ungrouped, single-column answer."""
    ((value,),) = rows
    return float(value) if value is not None else ABSENT


def cell_of(key: object, column: int = 1) -> Observable:
    """The value in ``column`` of the row whose first cell is ``key``; ``ABSENT`` if that group was not released."""

    def observe(rows: Sequence[Sequence[Value]]) -> float:
        for row in rows:
            if row[0] == key:
                return float(row[column]) if row[column] is not None else ABSENT
        return ABSENT

    return observe


def column_total(column: int = 1) -> Observable:
    """The sum of ``column`` over every released row (for a member spread over many groups)."""

    def observe(rows: Sequence[Sequence[Value]]) -> float:
        return float(sum(float(row[column]) for row in rows if row[column] is not None))

    return observe


@dataclass(frozen=True)
class AuditQuery:
    sql: str
    epsilon: float
    delta: float | None
    observe: Observable
    dataset: str = "shifts"


class RepeatedRelease:
    """Draws of one query's released answer on one pool, each reduced by the query's observable."""

    def __init__(self, policies: Path, ledger_url: str, query: AuditQuery, rebound_every: int = 20) -> None:
        self.engine = Engine.from_policies(policies, ledger=ledger_url)
        self.query = query
        self.rebound_every = rebound_every
        first = self.engine.query(query.dataset, query.sql, epsilon=query.epsilon, delta=query.delta)
        self.charged: Cost = self.engine.ledger.spent(query.dataset).dataset
        policy = self.engine.policy(query.dataset)
        self.plan = plan_query(parse(query.sql), policy)
        self.noise = calibrate(self.plan, PrivacyRequest.validate(query.epsilon, query.delta, policy.budget))
        if self.noise.cost != self.charged or first.cost != self.charged:
            raise AssertionError(f"the ledger charged {self.charged}, the noise was calibrated for {self.noise.cost}")
        assert first.query_id is not None
        self.receipt = ChargeReceipt(first.query_id, self.noise.cost)
        self.backend = self.engine.backend(policy)

    def __call__(self, draws: int) -> np.ndarray:
        observed = np.empty(draws)
        exact = self.backend.execute(self.plan)
        for draw in range(draws):
            if draw and draw % self.rebound_every == 0:
                exact = self.backend.execute(self.plan)
            noisy = release(self.noise, exact, self.receipt)
            table = build_table(self.plan, self.noise, noisy.keys, noisy.parts)
            observed[draw] = self.query.observe(table.rows)
        return observed

    def close(self) -> None:
        self.engine.close()


@dataclass(frozen=True)
class Released:
    """What a whole release shows a buyer: the rows, and (bounds chosen by DP, or their bias disclosed) those too."""

    rows: Sequence[Sequence[Value]]
    bounds: dict[str, int]
    bias: dict[str, float]
    value_bounds: dict[str, list[float]] = field(default_factory=dict)
    """The clamp bounds chosen for ``"auto"`` columns."""


def rows_by(observe: Observable) -> Callable[[Released], float]:
    return lambda released: observe(released.rows)


def chosen_upper(column: str) -> Callable[[Released], float]:
    """The upper clamp bound chosen for an ``"auto"`` column."""
    return lambda released: released.value_bounds[column][1]


def disclosed_bias(released: Released) -> float:
    """The share of rows the (single aggregate) column's bounding removed, as disclosed."""
    (share,) = released.bias.values()
    return share


class _Cached:
    """The backend, reading each exact result once: the profile, and the bounded aggregates at each bound chosen
    (contribution bounds and clamp bounds).

    The audited pools are built so that neither depends on the backend's random choices (see the module's note).
    """

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self._profile: MemberProfile | None = None
        self._exact: dict[tuple[Contribution, tuple[FixedPoint | None, ...]], ExactAggregates] = {}

    def profile(self, plan: QueryPlan) -> MemberProfile:
        if self._profile is None:
            self._profile = self.backend.profile(plan)
        return self._profile

    def execute(self, plan: QueryPlan, seed: int | None = None) -> ExactAggregates:
        bounds = (plan.contribution, tuple(part.value for part in plan.parts))
        if bounds not in self._exact:
            self._exact[bounds] = self.backend.execute(plan, seed)
        return self._exact[bounds]

    def check_schema(self, plan: QueryPlan) -> None:
        self.backend.check_schema(plan)


class WholeRelease:
    """Draws of a whole query with a member profile: the profile's noise, the bounds chosen from it (or the bias
    estimated), the answer at those bounds; each by the engine's own ``Engine._answer`` after one real charge."""

    def __init__(
        self,
        policies: Path,
        ledger_url: str,
        query: AuditQuery,
        observe: Callable[[Released], float],
        explain_bias: bool = False,
    ) -> None:
        self.engine = Engine.from_policies(policies, ledger=ledger_url)
        self.observe = observe
        dataset = query.dataset
        first = self.engine.query(
            dataset, query.sql, epsilon=query.epsilon, delta=query.delta, explain_bias=explain_bias
        )
        self.charged: Cost = self.engine.ledger.spent(dataset).dataset
        ask = Ask(query.epsilon, query.delta, None, None, explain_bias)
        self.planned = self.engine._plan(dataset, query.sql, ask, None)
        if self.planned.profile is None or self.planned.noise.cost != self.charged or first.cost != self.charged:
            raise AssertionError(
                f"the ledger charged {self.charged}, the query was planned for {self.planned.noise.cost}"
            )
        assert first.query_id is not None and first.bounds
        self.receipt = ChargeReceipt(first.query_id, self.charged)
        self.backend = _Cached(self.engine.backend(self.planned.policy))
        self.engine.ledger.record_bounds = lambda query_id, bounds: None  # type: ignore[method-assign]
        """Each draw would log its bounds again: the first release logged its own."""

    def __call__(self, draws: int) -> np.ndarray:
        observed = np.empty(draws)
        for draw in range(draws):
            answer = self.engine._answer(self.backend, self.planned, self.receipt)  # type: ignore[arg-type]
            assert answer.choice is not None
            released = Released(
                answer.table.rows,
                contribution_bounds(answer.plan.contribution),
                column_shares(answer.plan, answer.choice),
                value_bounds(answer.plan, answer.choice.uppers),
            )
            observed[draw] = self.observe(released)
        return observed

    def close(self) -> None:
        self.engine.close()
