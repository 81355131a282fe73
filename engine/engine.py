"""``Engine``: the one entry point, reading like the architecture.

parse → plan → calibrate → (dry run stops here) → check schema → charge →
execute → noise → post-process → record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from engine.accounting import Cost, PrivacyRequest, budget_of, exact
from engine.backends import BACKENDS, Backend
from engine.errors import Forbidden, UnknownTable
from engine.ledger import ChargeRequest, Ledger, open_ledger
from engine.mechanisms import add_noise, calibrate
from engine.planner import plan_query
from engine.policy import Policy, load_policies
from engine.postprocess import accuracy, build_table
from engine.result import Result
from engine.sql import parse

DEFAULT_LEDGER_NAME = "coopdp.db"


def default_ledger_url(policies: Path) -> str:
    """``sqlite:///`` beside the policies directory."""
    return f"sqlite:///{(policies.resolve().parent / DEFAULT_LEDGER_NAME)}"


@dataclass(frozen=True)
class BudgetStatus:
    dataset: str
    accounting: str
    budget: Cost
    spent: Cost

    @property
    def remaining(self) -> Cost:
        return self.budget - self.spent


class Engine:
    """Answers SQL over the datasets of a policies directory, charging a ledger.

    >>> engine = Engine.from_policies("policies", ledger="sqlite:///coopdp.db")  # doctest: +SKIP
    >>> engine.query("gig_work", "SELECT COUNT(*) FROM gig_work", epsilon=0.1).rows  # doctest: +SKIP
    [[301877]]
    """

    def __init__(self, policies: dict[str, Policy], ledger: Ledger, backend: Backend | None = None) -> None:
        self.policies = policies
        self.ledger = ledger
        self.backend = backend or BACKENDS["polars"]()

    @classmethod
    def from_policies(cls, directory: str | Path, ledger: str | None = None) -> Engine:
        directory = Path(directory)
        return cls(load_policies(directory), open_ledger(ledger or default_ledger_url(directory)))

    def policy(self, dataset: str) -> Policy:
        try:
            return self.policies[dataset]
        except KeyError:
            known = ", ".join(sorted(self.policies)) or "none"
            raise UnknownTable(f"unknown dataset {dataset!r} (datasets: {known})") from None

    def query(
        self,
        dataset: str,
        sql: str,
        *,
        epsilon: float,
        delta: float | None = None,
        buyer: str | None = None,
        dry_run: bool = False,
    ) -> Result:
        """Answer ``sql`` with differential privacy, charging ``(epsilon, delta)`` first."""
        policy = self.policy(dataset)
        request = PrivacyRequest.validate(epsilon, delta, policy.budget)
        quota = self._quota(policy, buyer)
        statement = parse(sql)
        plan = plan_query(statement, policy)
        noise = calibrate(plan, request)
        if dry_run:
            return Result(None, dataset, buyer, [c.name for c in plan.output], [], accuracy(plan, noise),
                          noise.cost, self.remaining(policy, buyer, quota), dry_run=True)
        self.backend.check_schema(plan)
        receipt = self.ledger.charge(
            ChargeRequest(dataset, buyer, statement.sql(), noise.cost, budget_of(policy.budget), quota)
        )
        exact_aggregates = self.backend.execute(plan)
        noisy = add_noise(noise, exact_aggregates.parts, receipt)
        table = build_table(plan, noise, exact_aggregates.keys, noisy)
        result = Result(receipt.query_id, dataset, buyer, table.columns, table.rows, table.accuracy,
                        noise.cost, self.remaining(policy, buyer, quota))
        self.ledger.record_result(receipt.query_id, json.dumps(result.to_dict()))
        return result

    def remaining(self, policy: Policy, buyer: str | None, quota: Decimal | None) -> Cost:
        """What this caller may still spend: the dataset's budget left, capped by the buyer's quota."""
        spent = self.ledger.spent(policy.name, buyer)
        left = budget_of(policy.budget) - spent.dataset
        if quota is not None:
            return Cost(min(left.epsilon, quota - spent.buyer.epsilon), left.delta)
        return left

    def budgets(self, dataset: str | None = None) -> list[BudgetStatus]:
        names = [self.policy(dataset).name] if dataset else sorted(self.policies)
        return [
            BudgetStatus(name, self.policies[name].budget.accounting, budget_of(self.policies[name].budget),
                         self.ledger.spent(name).dataset)
            for name in names
        ]

    def _quota(self, policy: Policy, buyer: str | None) -> Decimal | None:
        if buyer is None:
            return None
        declared = policy.buyers.get(buyer)
        if declared is None:
            if policy.buyers:
                raise Forbidden(f"buyer {buyer!r} is not declared in the policy of {policy.name}")
            return None
        return exact(declared.epsilon) if declared.epsilon is not None else None

    def close(self) -> None:
        self.ledger.close()
