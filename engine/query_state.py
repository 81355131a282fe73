"""What a query carries through ``Engine``: who asks, what it asks to spend, its plan, and what it released."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlglot import exp

from engine.accounting import Cost, PrivacyRequest
from engine.bounds_choice import Choice
from engine.ledger import Quota
from engine.mechanisms import NoisePlan
from engine.member_profile import ProfileNoise
from engine.plan import QueryPlan
from engine.policy import Policy
from engine.postprocess import Table


@dataclass(frozen=True)
class Caller:
    """Who asks: a buyer (None for the operator), their purpose, and the policy's quota for them."""

    name: str | None
    purpose: str | None
    quota: Quota


@dataclass(frozen=True)
class PlannedQuery:
    """A query as far as it goes before any data is read: checked, planned and calibrated, nothing charged.

    With a ``profile`` (bounds chosen per query, or their bias disclosed) the
    plan's noise is calibrated at the largest bounds the choice may make, and
    again at the chosen ones once the profile is released.
    """

    policy: Policy
    caller: Caller
    statement: exp.Select
    plan: QueryPlan
    noise: NoisePlan
    request: PrivacyRequest
    weights: tuple[float, ...] | None = None
    profile: ProfileNoise | None = None


@dataclass(frozen=True)
class Answer:
    """What a charged query released: its table, and the plan and noise it ran with (bounds chosen or not)."""

    table: Table
    plan: QueryPlan
    noise: NoisePlan
    choice: Choice | None


@dataclass(frozen=True)
class Ask:
    """What a query asks to spend: an ε (split evenly or by ``weights``), or ``accuracy`` targets that choose it."""

    epsilon: float | None
    delta: float | None
    weights: Mapping[str, float] | None
    accuracy: Mapping[str, float] | None
    explain_bias: bool = False
    """Release an estimate of what bounding removes (a share of the query's ε; always so with ``"auto"`` bounds)."""


@dataclass(frozen=True)
class BudgetStatus:
    dataset: str
    accounting: str
    budget: Cost
    spent: Cost

    @property
    def remaining(self) -> Cost:
        return self.budget - self.spent
