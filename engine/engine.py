"""``Engine``: the one entry point, reading like the architecture.

parse → plan → calibrate → (dry run stops here) → check schema → charge →
execute → noise → post-process → record.

It also offers the governance the API and the CLI need (buyers, keys, budgets,
quotas, releases, the audit log), so neither reaches into the ledger.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

from engine.accounting import EXACT, ChargeReceipt, Cost, PrivacyRequest, budget_of, exact
from engine.accuracy_targets import choose, part_targets
from engine.backends import BACKENDS, Backend
from engine.bounds_choice import (
    choose_bounds,
    column_shares,
    contribution_bounds,
    disclosed,
    value_bounds,
    with_value_bounds,
)
from engine.errors import (
    Conflict,
    CoopdpError,
    Forbidden,
    NotFound,
    PolicyViolation,
    Unauthorized,
    UnknownTable,
    failed_after_charge,
)
from engine.explain import Explanation, explain
from engine.keys import IssuedKey, Role, hash_key, new_key
from engine.ledger import (
    UNLIMITED,
    AuditEntry,
    BuyerRecord,
    ChargeRequest,
    Governance,
    KeyRecord,
    Ledger,
    Quota,
    ReleaseRecord,
    StoredRelease,
    open_ledger,
)
from engine.mechanisms import NoisePlan, calibrate, part_weights, release
from engine.member_profile import release as release_profile
from engine.plan import QueryPlan
from engine.planner import plan_query
from engine.policy import Policy, load_policies
from engine.postprocess import accuracy as column_accuracy
from engine.postprocess import build_table, rank_accuracy
from engine.profiling import AUTO_DRY_RUN_NOTE, calibrated_at_every_limit, profile_noise
from engine.query_state import Answer, Ask, BudgetStatus, Caller, PlannedQuery
from engine.result import Result
from engine.sql import normalised, parse

DEFAULT_LEDGER_NAME = "coopdp.db"
IN_FLIGHT_WAIT_S = 60.0
"""How long a query waits for the identical query in flight before it (to share its release, never charged)."""


def default_ledger_url(policies: Path) -> str:
    """``sqlite:///`` beside the policies directory."""
    return f"sqlite:///{(policies.resolve().parent / DEFAULT_LEDGER_NAME)}"


class Engine:
    """Answers SQL over the datasets of a policies directory, charging a ledger.

    >>> engine = Engine.from_policies("policies", ledger="sqlite:///coopdp.db")  # doctest: +SKIP
    >>> engine.query("gig_work", "SELECT COUNT(*) FROM gig_work", epsilon=0.1).rows  # doctest: +SKIP
    [[301877]]
    """

    def __init__(self, policies: dict[str, Policy], ledger: Ledger, backends: dict[str, Backend] | None = None) -> None:
        self.policies = policies
        self.ledger = ledger
        self.governance = Governance(ledger.database)
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
        epsilon: float | None = None,
        delta: float | None = None,
        buyer: str | None = None,
        dry_run: bool = False,
        idempotency_key: str | None = None,
        weights: Mapping[str, float] | None = None,
        accuracy: Mapping[str, float] | None = None,
        explain_bias: bool = False,
    ) -> Result:
        """Answer ``sql`` with differential privacy, charging ``(epsilon, delta)`` first.

        ``weights`` (output column → weight) split the budget unevenly: a column
        weighted 3 gets three times the ε (ρ under zCDP) of a column weighted 1.
        ``accuracy`` (output column → 95% half-width), instead of ``epsilon``,
        charges the least ε that meets every target (engine/accuracy_targets.py).
        ``explain_bias`` spends the policy's ``auto_share`` of it estimating what
        bounding removes (``bias`` in the result; always there with ``"auto"`` bounds).
        A repeat (the same idempotency key, or a query whose stored release may
        be reused) returns the stored release, ``cached``, at no cost.
        """
        ask = Ask(epsilon, delta, weights, accuracy, explain_bias)
        planned = self._plan(dataset, sql, ask, buyer)
        if dry_run:
            return self._result(planned, ask, None, dry_run=True)
        backend = self.backend(planned.policy)
        backend.check_schema(planned.plan)
        charge = self._charge(planned, ask, idempotency_key)
        if isinstance(charge, StoredRelease):
            return self._stored(charge, planned.policy, planned.caller)
        answer = self._answer(backend, planned, charge)
        result = self._result(planned, ask, charge.query_id, answer=answer)
        self.ledger.record_result(charge.query_id, json.dumps(result.to_dict()))
        return result

    def _charge(self, planned: PlannedQuery, ask: Ask, idempotency_key: str | None) -> ChargeReceipt | StoredRelease:
        """Charge the ledger for the query (or find the stored release it may reuse), before any data is read."""
        policy, caller, cost = planned.policy, planned.caller, planned.noise.cost
        logged_sql = (
            normalised(planned.statement)
            + _split_comment("weights", ask.weights)
            + _split_comment("accuracy", ask.accuracy)
            + (" /* explain_bias */" if ask.explain_bias else "")
        )
        consent_column = policy.consent_column(caller.purpose)
        return self.ledger.charge(
            ChargeRequest(
                policy.name,
                caller.name,
                logged_sql,
                cost,
                budget_of(policy.budget),
                caller.quota,
                purpose=caller.purpose,
                reuse_key=_reuse_key(policy, caller, logged_sql, cost, consent_column),
                idempotency_key=idempotency_key,
            )
        )

    def _answer(self, backend: Backend, planned: PlannedQuery, charge: ChargeReceipt) -> Answer:
        """Read, bound, noise and post-process: everything after the charge, which must not fail on any data.

        With a profile, it is released first: the bounds are chosen from it (or
        their bias estimated), recorded in the ledger, and the noise calibrated
        at the chosen bounds (within what was checked before the charge).
        """
        try:
            plan, noise, choice = planned.plan, planned.noise, None
            if planned.profile is not None:
                profile = release_profile(planned.profile, backend.profile(plan), charge, noise.cost)
                if plan.auto_bounds is None:
                    choice = disclosed(plan, profile, noise)
                else:
                    choice = choose_bounds(plan, profile, noise, planned.weights)
                    plan = with_value_bounds(replace(plan, contribution=choice.contribution), choice.uppers)
                    noise = calibrate(plan, planned.request, planned.weights, planned.profile.loss)
                self.ledger.record_bounds(charge.query_id, json.dumps(choice.bounds(planned.plan)))
            exact_aggregates = backend.execute(plan)
            noisy = release(noise, exact_aggregates, charge)
            return Answer(build_table(plan, noise, noisy.keys, noisy.parts), plan, noise, choice)
        except BaseException as error:
            self.ledger.record_failure(charge.query_id)  # identical queries waiting for it stop, uncharged
            if isinstance(error, CoopdpError) or not isinstance(error, Exception):
                raise
            # a bug: planning should have refused what fails; its text may hold data
            raise failed_after_charge(charge.query_id, error) from None

    def _result(
        self,
        planned: PlannedQuery,
        ask: Ask,
        query_id: str | None,
        *,
        answer: Answer | None = None,
        dry_run: bool = False,
    ) -> Result:
        """The result document of a release (its ``answer``), or of a dry run (the columns alone, no rows)."""
        plan, noise = (answer.plan, answer.noise) if answer else (planned.plan, planned.noise)
        table = answer.table if answer else None
        notes = [*plan.notes, *(table.notes if table else [])]
        if dry_run and plan.auto_bounds is not None:
            notes.append(AUTO_DRY_RUN_NOTE)
        return Result(
            query_id=query_id,
            dataset=planned.policy.name,
            buyer=planned.caller.name,
            columns=table.columns if table else [column.name for column in plan.output],
            rows=table.rows if table else [],
            accuracy=table.accuracy if table else column_accuracy(plan, noise),
            cost=noise.cost,
            remaining=self.remaining(planned.policy, planned.caller),
            cached=False,
            dry_run=dry_run,
            private_keys=list(plan.private_keys),
            notes=notes,
            rank_accuracy=rank_accuracy(plan, noise),
            accuracy_target=_echo(ask.accuracy),
            bounds={} if dry_run else contribution_bounds(plan.contribution),
            value_bounds=value_bounds(plan, answer.choice.uppers) if answer and answer.choice else {},
            bias=column_shares(plan, answer.choice) if answer and answer.choice else {},
        )

    def explain(
        self,
        dataset: str,
        sql: str,
        *,
        epsilon: float | None = None,
        delta: float | None = None,
        buyer: str | None = None,
        weights: Mapping[str, float] | None = None,
        accuracy: Mapping[str, float] | None = None,
    ) -> Explanation:
        """How ``sql`` would be answered (bounds, sensitivity, noise, cost), refused as a query would be.

        Reads no data and charges nothing: like a dry run, it reads the ledger only for the caller and what remains.
        """
        planned = self._plan(dataset, sql, Ask(epsilon, delta, weights, accuracy), buyer)
        caller = planned.caller
        return explain(
            planned.plan,
            planned.noise,
            planned.policy,
            sql=normalised(planned.statement),
            buyer=caller.name,
            purpose=caller.purpose,
            remaining=self.remaining(planned.policy, caller),
        )

    def _plan(self, dataset: str, sql: str, ask: Ask, buyer: str | None) -> PlannedQuery:
        """Everything decided before data is read: the request checked, the caller, the plan and its noise."""
        policy = self.policy(dataset)
        if (ask.epsilon is None) == (ask.accuracy is None):
            raise PolicyViolation("give exactly one of epsilon or accuracy (targets per output column)")
        if ask.accuracy is not None and ask.weights:
            raise PolicyViolation("accuracy targets choose the split across columns: give weights or accuracy")
        budget = policy.budget
        request = PrivacyRequest.validate(
            budget.max_epsilon_per_query if ask.epsilon is None else ask.epsilon, ask.delta, budget
        )
        caller = self.caller(policy, buyer)
        statement = parse(sql)
        plan = plan_query(statement, policy, consent_column=policy.consent_column(caller.purpose))
        weights = part_weights(plan, ask.weights) if ask.weights else None
        profile = profile_noise(
            policy, plan, request, explain_bias=ask.explain_bias, accuracy_targets=ask.accuracy is not None
        )
        if profile is not None:
            noise = calibrated_at_every_limit(plan, request, weights, profile.loss)
        elif ask.accuracy is None:
            noise = calibrate(plan, request, weights)
        else:
            noise = self._meet(policy, caller, plan, request, ask.accuracy)
        return PlannedQuery(policy, caller, statement, plan, noise, request, weights, profile)

    def _meet(
        self, policy: Policy, caller: Caller, plan: QueryPlan, request: PrivacyRequest, accuracy: Mapping[str, float]
    ) -> NoisePlan:
        """The noise of the least ε that meets the accuracy targets, within the per-query cap and what is left."""
        targets = part_targets(plan, accuracy)
        per_query, left = exact(policy.budget.max_epsilon_per_query), self.remaining(policy, caller).epsilon
        if per_query <= left:
            cap, name = per_query, "this dataset's max_epsilon_per_query"
        else:
            cap, name = left, "the epsilon left to this caller"
        return choose(plan, request, targets, cap, name).noise

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
        record = self.governance.buyer(buyer)
        if record is not None and record.revoked:
            raise Forbidden(f"buyer {buyer!r} has been revoked")
        if declared is None and policy.buyers:
            raise Forbidden(f"buyer {buyer!r} is not among the buyers the policy of {policy.name} declares")
        purpose = (record.purpose if record else None) or (declared.purpose if declared else None)
        return Caller(buyer, purpose, default_quota)

    def budget(self, policy: Policy) -> Cost:
        """The dataset's total budget: a steward's stored one, else the policy's."""
        return self.governance.budget(policy.name) or budget_of(policy.budget)

    def remaining(self, policy: Policy, caller: Caller) -> Cost:
        """What this caller may still spend: the dataset's budget left, capped by the buyer's quota."""
        spent = self.ledger.spent(policy.name, caller.name)
        left = self.budget(policy) - spent.dataset
        if caller.name is None:
            return left
        quota = self.governance.quota(policy.name, caller.name, caller.quota)
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

    # --- governance: what the API and the CLI offer stewards, buyers and members ------------

    def set_budget(self, dataset: str, *, epsilon: float, delta: float, actor: str) -> BudgetStatus:
        """Set a dataset's total budget; refused (PolicyViolation) below what is already spent."""
        policy = self.policy(dataset)
        self.governance.set_budget(policy.name, Cost(exact(epsilon), exact(delta)), actor)
        (status,) = self.budgets(policy.name)
        return status

    def set_quota(self, dataset: str, buyer: str, *, epsilon: float | None, delta: float | None, actor: str) -> None:
        """Set a registered buyer's ε and δ quotas on a dataset; they replace the policy's (None: no quota)."""
        policy = self.policy(dataset)
        self.buyer(buyer)
        self.governance.set_quota(policy.name, buyer, Quota.of(epsilon, delta), actor)

    def buyer(self, name: str) -> BuyerRecord:
        record = self.governance.buyer(name)
        if record is None:
            raise NotFound(f"no buyer {name!r}")
        return record

    def buyers(self) -> list[BuyerRecord]:
        return self.governance.buyers()

    def upsert_buyer(self, name: str, purpose: str | None, actor: str) -> BuyerRecord:
        """Create a buyer (or set its purpose; a revoked buyer is restored, its old keys stay revoked)."""
        self.governance.upsert_buyer(name, purpose, actor)
        return self.buyer(name)

    def revoke_buyer(self, name: str, actor: str) -> BuyerRecord:
        """Revoke a registered buyer and every buyer key of that name."""
        self.buyer(name)
        self.governance.revoke_buyer(name, actor)
        return self.buyer(name)

    def create_key(self, name: str, role: Role, actor: str) -> IssuedKey:
        """Make a key for ``name`` (a buyer is registered too); return it: the only time it is seen.

        Buyers and stewards are separate principals: a name held by one role is refused for the other (409).
        """
        buyer = self.governance.buyer(name) if role is Role.BUYER else None
        if role is Role.BUYER and buyer is None:
            self.governance.upsert_buyer(name, None, actor)
        if buyer is not None and buyer.revoked:
            raise Forbidden(f"buyer {name!r} is revoked; restore it (POST /v1/buyers) before giving it a key")
        key = new_key()
        return IssuedKey(self.governance.add_key(hash_key(key), name, role.value, actor), key)

    def authenticate(self, key: str) -> KeyRecord:
        """The live key ``key`` is, its use recorded; Unauthorized when unknown or revoked."""
        record = self.governance.key(hash_key(key))
        if record is None:
            raise Unauthorized("unknown or revoked API key")
        self.governance.key_used(record.id)
        return record

    def keys(self) -> list[KeyRecord]:
        """Every key, live and revoked: never a secret nor a hash."""
        return self.governance.keys()

    def revoke_key(self, key_id: str, actor: str) -> KeyRecord:
        """Revoke one key of either role; the last live steward key is refused (Conflict)."""
        return self.governance.revoke_key(key_id, actor)

    def audit(self) -> list[AuditEntry]:
        return self.governance.audit()

    def releases(self, dataset: str | None = None, buyer: str | None = None) -> list[ReleaseRecord]:
        """The release log (the transparency log of a dataset, or a buyer's own releases): never a result."""
        return self.ledger.releases(dataset, buyer)

    def close(self) -> None:
        self.ledger.close()


def _capped(left: Decimal, quota: Decimal | None, spent_by_buyer: Decimal) -> Decimal:
    return left if quota is None else min(left, EXACT.subtract(quota, spent_by_buyer))


def _split_comment(label: str, split: Mapping[str, float] | None) -> str:
    """Weights or accuracy targets (both fix the split), recorded with the query.

    They are part of the transparency log, the reuse key and the idempotency check: the same SQL and ε under
    another split is another release.
    """
    if not split:
        return ""
    pairs = sorted((name.lower(), float(value)) for name, value in split.items())
    return f" /* {label}: " + ", ".join(f"{name}={value!r}" for name, value in pairs) + " */"


def _echo(accuracy: Mapping[str, float] | None) -> dict[str, float]:
    """The targets as the result echoes them (``accuracy_target``): the buyer's names, as numbers."""
    return {name: float(value) for name, value in (accuracy or {}).items()}


def _reuse_key(policy: Policy, caller: Caller, sql: str, cost: Cost, consent_column: str | None) -> str:
    """Equal keys share one release: same dataset, SQL, cost and consent filter (and buyer, unless shared)."""
    owner = "*" if policy.releases.shared else (caller.name or "")
    material = json.dumps([policy.name, sql, str(cost.epsilon), str(cost.delta), consent_column, owner])
    return hashlib.sha256(material.encode()).hexdigest()
