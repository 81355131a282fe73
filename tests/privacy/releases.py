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
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine import Engine
from engine.accounting import Cost, PrivacyRequest
from engine.ledger import ChargeReceipt
from engine.mechanisms import calibrate, release
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
