"""``Engine``: the one entry point, reading like the architecture.

parse → plan → calibrate → (dry run stops here) → check schema → charge →
execute → noise → post-process → record.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from engine.accounting import EXACT, Cost, PrivacyRequest, budget_of
from engine.backends import BACKENDS, Backend
from engine.errors import Conflict, CoopdpError, Forbidden, NotFound, UnknownTable, failed_after_charge
from engine.ledger import UNLIMITED, ChargeRequest, Ledger, Quota, StoredRelease, open_ledger
from engine.mechanisms import calibrate, part_weights, release
from engine.planner import plan_query
from engine.policy import Policy, load_policies
from engine.postprocess import accuracy, build_table, rank_accuracy
from engine.result import Result
from engine.sql import normalised, parse

DEFAULT_LEDGER_NAME = "coopdp.db"
IN_FLIGHT_WAIT_S = 60.0
"""How long a query waits for the identical query in flight before it (to share its release, never charged)."""


def default_ledger_url(policies: Path) -> str:
    """``sqlite:///`` beside the policies directory."""
    return f"sqlite:///{(policies.resolve().parent / DEFAULT_LEDGER_NAME)}"


@dataclass(frozen=True)
class Caller:
    """Who asks: a buyer (None for the operator), their purpose, and the policy's quota for them."""

    name: str | None
    purpose: str | None
    quota: Quota


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

    def __init__(self, policies: dict[str, Policy], ledger: Ledger, backends: dict[str, Backend] | None = None) -> None:
        self.policies = policies
        self.ledger = ledger
        self.backends: dict[str, Backend] = dict(backends or {})
        """Built on first use, one per name, shared by every dataset that names it (a Spark session is costly)."""

    @classmethod
    def from_policies(
        cls, directory: str | Path, ledger: str | None = None, backends: dict[str, Backend] | None = None
    ) -> Engine:
        directory = Path(directory)
        return cls(load_policies(directory), open_ledger(ledger or default_ledger_url(directory)), backends)

    def backend(self, policy: Policy) -> Backend:
        """The backend the dataset's policy names (``[dataset] backend``), built the first time it is needed."""
        name = policy.dataset.backend
        if name not in self.backends:
            self.backends[name] = BACKENDS[name]()
        return self.backends[name]

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
        idempotency_key: str | None = None,
        weights: Mapping[str, float] | None = None,
    ) -> Result:
        """Answer ``sql`` with differential privacy, charging ``(epsilon, delta)`` first.

        ``weights`` (output column → weight) split the budget unevenly: a column
        weighted 3 gets three times the ε (ρ under zCDP) of a column weighted 1.
        A repeat (the same idempotency key, or a query whose stored release may
        be reused) returns the stored release, ``cached``, at no cost.
        """
        policy = self.policy(dataset)
        request = PrivacyRequest.validate(epsilon, delta, policy.budget)
        caller = self.caller(policy, buyer)
        statement = parse(sql)
        consent_column = policy.consent_column(caller.purpose)
        plan = plan_query(statement, policy, consent_column=consent_column)
        noise = calibrate(plan, request, part_weights(plan, weights) if weights else None)
        if dry_run:
            return Result(
                None,
                dataset,
                caller.name,
                [c.name for c in plan.output],
                [],
                accuracy(plan, noise),
                noise.cost,
                self.remaining(policy, caller),
                dry_run=True,
                private_keys=list(plan.private_keys),
                notes=list(plan.notes),
                rank_accuracy=rank_accuracy(plan, noise),
            )
        backend = self.backend(policy)
        backend.check_schema(plan)
        normalised_sql = normalised(statement) + (_weights_comment(weights) if weights else "")
        charge = self.ledger.charge(
            ChargeRequest(
                dataset,
                caller.name,
                normalised_sql,
                noise.cost,
                budget_of(policy.budget),
                caller.quota,
                purpose=caller.purpose,
                reuse_key=_reuse_key(policy, caller, normalised_sql, noise.cost, consent_column),
                idempotency_key=idempotency_key,
            )
        )
        if isinstance(charge, StoredRelease):
            return self._stored(charge, policy, caller)
        try:
            exact_aggregates = backend.execute(plan)
            noisy = release(noise, exact_aggregates, charge)
            table = build_table(plan, noise, noisy.keys, noisy.parts)
        except BaseException as error:
            self.ledger.record_failure(charge.query_id)  # identical queries waiting for it stop, uncharged
            if isinstance(error, CoopdpError) or not isinstance(error, Exception):
                raise
            # a bug: planning should have refused what fails; its text may hold data
            raise failed_after_charge(charge.query_id, error) from None
        result = Result(
            charge.query_id,
            dataset,
            caller.name,
            table.columns,
            table.rows,
            table.accuracy,
            noise.cost,
            self.remaining(policy, caller),
            private_keys=list(plan.private_keys),
            notes=[*plan.notes, *table.notes],
            rank_accuracy=rank_accuracy(plan, noise),
        )
        self.ledger.record_result(charge.query_id, json.dumps(result.to_dict()))
        return result

    def stored_release(self, query_id: str, buyer: str | None) -> Result:
        """A past release of ``buyer``'s, again, at no cost; another buyer's is as missing as one never made."""
        record = self.ledger.release(query_id)
        if record is None or record.result is None or record.buyer != buyer:
            raise NotFound(f"no release {query_id!r}")
        policy = self.policy(record.dataset)
        return self._stored(StoredRelease(record.query_id, record.result), policy, self.caller(policy, buyer))

    def _stored(self, stored: StoredRelease, policy: Policy, caller: Caller) -> Result:
        """The stored release, waiting for it while the identical query that was charged for it is answered."""
        if stored.failed:
            raise Conflict(
                f"query {stored.query_id} with this Idempotency-Key was charged but failed before its answer: "
                "its charge stands; ask again with a new key"
            )
        answer = stored.result or self.ledger.wait_for_result(stored.query_id, IN_FLIGHT_WAIT_S)
        document = json.loads(answer)
        return Result.from_dict(document, buyer=caller.name, remaining=self.remaining(policy, caller), cached=True)

    def caller(self, policy: Policy, buyer: str | None) -> Caller:
        """Who is asking: the buyer's purpose and quota default, from the ledger or the policy."""
        if buyer is None:
            return Caller(None, None, UNLIMITED)
        declared = policy.buyers.get(buyer)
        default_quota = Quota.of(declared.epsilon, declared.delta) if declared else UNLIMITED
        record = self.ledger.buyer(buyer)
        if record is not None and record.revoked:
            raise Forbidden(f"buyer {buyer!r} has been revoked")
        if declared is None and policy.buyers:
            raise Forbidden(f"buyer {buyer!r} is not among the buyers the policy of {policy.name} declares")
        purpose = (record.purpose if record else None) or (declared.purpose if declared else None)
        return Caller(buyer, purpose, default_quota)

    def budget(self, policy: Policy) -> Cost:
        """The dataset's total budget: a steward's stored one, else the policy's."""
        return self.ledger.budget(policy.name) or budget_of(policy.budget)

    def remaining(self, policy: Policy, caller: Caller) -> Cost:
        """What this caller may still spend: the dataset's budget left, capped by the buyer's quota."""
        spent = self.ledger.spent(policy.name, caller.name)
        left = self.budget(policy) - spent.dataset
        if caller.name is None:
            return left
        quota = self.ledger.quota(policy.name, caller.name, caller.quota)
        return Cost(
            _capped(left.epsilon, quota.epsilon, spent.buyer.epsilon),
            _capped(left.delta, quota.delta, spent.buyer.delta),
        )

    def budgets(self, dataset: str | None = None) -> list[BudgetStatus]:
        policies = [self.policy(dataset)] if dataset else [self.policies[name] for name in sorted(self.policies)]
        return [
            BudgetStatus(
                policy.name, policy.budget.accounting, self.budget(policy), self.ledger.spent(policy.name).dataset
            )
            for policy in policies
        ]

    def close(self) -> None:
        self.ledger.close()


def _capped(left: Decimal, quota: Decimal | None, spent_by_buyer: Decimal) -> Decimal:
    return left if quota is None else min(left, EXACT.subtract(quota, spent_by_buyer))


def _weights_comment(weights: Mapping[str, float]) -> str:
    """The split, recorded with the query (in the transparency log, the reuse key and the idempotency check)."""
    pairs = sorted((name.lower(), float(weight)) for name, weight in weights.items())
    return " /* weights: " + ", ".join(f"{name}={weight!r}" for name, weight in pairs) + " */"


def _reuse_key(policy: Policy, caller: Caller, sql: str, cost: Cost, consent_column: str | None) -> str:
    """Equal keys share one release: same dataset, SQL, cost and consent filter (and buyer, unless shared)."""
    owner = "*" if policy.releases.shared else (caller.name or "")
    material = json.dumps([policy.name, sql, str(cost.epsilon), str(cost.delta), consent_column, owner])
    return hashlib.sha256(material.encode()).hexdigest()
