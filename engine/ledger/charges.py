"""The durable budget ledger: charges, spend, and the release log.

Charging is one serialised transaction that checks the dataset budget and the
buyer's quota and records the release, so concurrent processes can never
overspend and a crash never loses a charge. Amounts are exact decimal text.
The same transaction answers repeats for free: a retry with the same
idempotency key, or a query whose reuse key matches a stored release, gets the
stored release back (so noise can never be averaged away). A release still
being answered is returned too, pending: its waiters poll the ledger for its
result, so identical queries in flight on any worker process are charged once.

A charge checks the budget and quota stewards set (``governance``) in its own
transaction; both halves share one database (``tables``).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from engine.accounting import ZERO, ChargeReceipt, Cost
from engine.errors import BudgetExhausted, Conflict, QuotaExhausted
from engine.ledger.database import Database, Transaction, open_database
from engine.ledger.governance import Quota, stored_budget, stored_quota
from engine.ledger.tables import TOTAL, create_tables, now, read_spent

PENDING_STALE_AFTER = timedelta(minutes=15)
"""A release still unanswered this long after its charge was abandoned (its process died): it is not waited for."""


@dataclass(frozen=True)
class ChargeRequest:
    dataset: str
    buyer: str | None
    sql: str
    cost: Cost
    budget: Cost
    """The policy's budget; a steward's stored budget overrides it."""
    quota: Quota
    """The policy's quota for the buyer; a steward's stored quota overrides it."""
    purpose: str | None = None
    reuse_key: str | None = None
    """Equal for queries whose answers may be shared; None disables reuse."""
    idempotency_key: str | None = None

    @property
    def fingerprint(self) -> str:
        """What an idempotent retry must repeat: the same dataset, SQL and cost."""
        material = json.dumps([self.dataset, self.sql, str(self.cost.epsilon), str(self.cost.delta)])
        return hashlib.sha256(material.encode()).hexdigest()


@dataclass(frozen=True)
class StoredRelease:
    """A release already made; ``result`` is its JSON, None while it is still being computed."""

    query_id: str
    result: str | None
    failed: bool = False
    """Charged, then failed before its answer: there is no answer to share."""


@dataclass(frozen=True)
class Spent:
    dataset: Cost
    buyer: Cost


@dataclass(frozen=True)
class ReleaseRecord:
    query_id: str
    dataset: str
    buyer: str | None
    purpose: str | None
    sql: str
    cost: Cost
    created_at: str
    result: str | None
    bounds: str | None = None
    """The contribution bounds a query chose by DP (JSON), recorded once chosen, before its answer."""


_RELEASE_COLUMNS = "query_id, dataset, buyer, purpose, sql, epsilon, delta, created_at, result, bounds"


class Ledger:
    """Charges and releases, on SQLite or PostgreSQL."""

    def __init__(self, database: Database) -> None:
        self.database = database
        create_tables(database)

    @property
    def url(self) -> str:
        return self.database.url

    # --- charging --------------------------------------------------------------------

    def charge(self, request: ChargeRequest) -> ChargeReceipt | StoredRelease:
        """Charge ``request.cost`` and log the release, or return the stored release it repeats."""
        query_id = "q_" + secrets.token_hex(8)
        with self.database.transaction() as tx:
            repeated = _repeated(tx, request)
            if repeated is not None:
                return repeated
            budget = stored_budget(tx, request.dataset) or request.budget
            total = read_spent(tx, request.dataset, TOTAL)
            if not (total + request.cost).within(budget):
                left = budget - total
                raise BudgetExhausted(
                    f"dataset {request.dataset} has epsilon {_shown(left.epsilon)} "
                    f"and delta {_shown(left.delta)} left; "
                    f"this query needs epsilon {request.cost.epsilon} and delta {request.cost.delta}"
                )
            buyer_spent = read_spent(tx, request.dataset, request.buyer) if request.buyer else ZERO
            quota = stored_quota(tx, request.dataset, request.buyer, request.quota)
            _check_quota(request, quota, buyer_spent)
            _write_spent(tx, request.dataset, TOTAL, total + request.cost)
            if request.buyer:
                _write_spent(tx, request.dataset, request.buyer, buyer_spent + request.cost)
            tx.execute(
                "INSERT INTO releases (query_id, dataset, buyer, purpose, sql, epsilon, delta, created_at, "
                "reuse_key, idempotency_key, fingerprint) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    query_id,
                    request.dataset,
                    request.buyer,
                    request.purpose,
                    request.sql,
                    str(request.cost.epsilon),
                    str(request.cost.delta),
                    now(),
                    request.reuse_key,
                    request.idempotency_key,
                    request.fingerprint,
                ),
            )
        return ChargeReceipt(query_id, request.cost)

    def record_result(self, query_id: str, result_json: str) -> None:
        with self.database.transaction() as tx:
            tx.execute("UPDATE releases SET result = ? WHERE query_id = ?", (result_json, query_id))

    def record_bounds(self, query_id: str, bounds_json: str) -> None:
        """The bounds a charged query chose (or ran with, its bias disclosed): part of the transparency log."""
        with self.database.transaction() as tx:
            tx.execute("UPDATE releases SET bounds = ? WHERE query_id = ?", (bounds_json, query_id))

    def record_failure(self, query_id: str) -> None:
        """The charged query failed before its answer: its charge stands; waiters stop waiting; no reuse."""
        with self.database.transaction() as tx:
            tx.execute("UPDATE releases SET failed_at = ? WHERE query_id = ? AND result IS NULL", (now(), query_id))

    def wait_for_result(self, query_id: str, timeout_s: float) -> str:
        """The answer of a release still being computed, once it is recorded (polled, so any process may wait).

        Raises :class:`Conflict` if it failed or is not answered within ``timeout_s``; the waiter is never charged.
        """
        deadline = time.monotonic() + timeout_s
        delay = 0.02
        while True:
            with self.database.transaction(write=False) as tx:
                rows = tx.execute("SELECT result, failed_at FROM releases WHERE query_id = ?", (query_id,))
            result, failed_at = rows[0] if rows else (None, "missing")
            if result is not None:
                return str(result)
            if failed_at is not None:
                raise Conflict(
                    f"the identical query {query_id} this one waited for failed after its charge; nothing was "
                    "charged to this request: ask again"
                )
            if time.monotonic() >= deadline:
                raise Conflict(
                    f"the identical query {query_id} is still being answered; nothing was charged to this "
                    "request: retry shortly to receive its release"
                )
            time.sleep(min(delay, max(deadline - time.monotonic(), 0.0)))
            delay = min(delay * 2, 0.5)

    def spent(self, dataset: str, buyer: str | None = None) -> Spent:
        with self.database.transaction(write=False) as tx:
            total = read_spent(tx, dataset, TOTAL)
            by_buyer = read_spent(tx, dataset, buyer) if buyer else ZERO
        return Spent(total, by_buyer)

    # --- the release log ---------------------------------------------------------------

    def releases(self, dataset: str | None = None, buyer: str | None = None) -> list[ReleaseRecord]:
        with self.database.transaction(write=False) as tx:
            rows = tx.execute(
                f"SELECT {_RELEASE_COLUMNS} FROM releases WHERE (CAST(? AS TEXT) IS NULL OR dataset = ?) "
                "AND (CAST(? AS TEXT) IS NULL OR buyer = ?) ORDER BY created_at, query_id",
                (dataset, dataset, buyer, buyer),
            )
        return [_release(row) for row in rows]

    def release(self, query_id: str) -> ReleaseRecord | None:
        with self.database.transaction(write=False) as tx:
            rows = tx.execute(f"SELECT {_RELEASE_COLUMNS} FROM releases WHERE query_id = ?", (query_id,))
        return _release(rows[0]) if rows else None

    def close(self) -> None:
        self.database.close()


def open_ledger(url: str) -> Ledger:
    """A ledger from its URL: ``sqlite:///file.db`` or ``postgresql://…``."""
    return Ledger(open_database(url))


def _repeated(tx: Transaction, request: ChargeRequest) -> StoredRelease | None:
    if request.idempotency_key is not None:
        rows = tx.execute(
            "SELECT query_id, result, failed_at, fingerprint FROM releases WHERE idempotency_key = ? "
            "AND ((buyer IS NULL AND CAST(? AS TEXT) IS NULL) OR buyer = ?)",
            (request.idempotency_key, request.buyer, request.buyer),
        )
        if rows:
            if rows[0][3] != request.fingerprint:
                raise Conflict("this Idempotency-Key was already used for a different query")
            return StoredRelease(rows[0][0], rows[0][1], rows[0][2] is not None)
    if request.reuse_key is not None:
        # A finished release first; else one still being answered (not failed, not abandoned), to wait for.
        stale = (datetime.now(UTC) - PENDING_STALE_AFTER).isoformat(timespec="microseconds")
        rows = tx.execute(
            "SELECT query_id, result FROM releases WHERE reuse_key = ? AND failed_at IS NULL "
            "AND (result IS NOT NULL OR created_at > ?) ORDER BY result IS NULL, created_at LIMIT 1",
            (request.reuse_key, stale),
        )
        if rows:
            return StoredRelease(rows[0][0], rows[0][1])
    return None


def _check_quota(request: ChargeRequest, quota: Quota, buyer_spent: Cost) -> None:
    after = buyer_spent + request.cost
    if quota.epsilon is not None and after.epsilon > quota.epsilon:
        left = Cost(quota.epsilon, Decimal(0)) - buyer_spent
        raise QuotaExhausted(
            f"buyer {request.buyer} has epsilon {_shown(left.epsilon)} of its quota left "
            f"on {request.dataset}; this query needs {request.cost.epsilon}"
        )
    if quota.delta is not None and after.delta > quota.delta:
        left = Cost(Decimal(0), quota.delta) - buyer_spent
        raise QuotaExhausted(
            f"buyer {request.buyer} has delta {_shown(left.delta)} of its quota left "
            f"on {request.dataset}; this query needs {request.cost.delta}"
        )


def _shown(amount: Decimal) -> str:
    """An amount in a message: ``0`` rather than ``0E-7``."""
    return "0" if amount == 0 else str(amount)


def _write_spent(tx: Transaction, dataset: str, buyer: str, spent: Cost) -> None:
    tx.execute(
        "INSERT INTO spent (dataset, buyer, epsilon, delta) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (dataset, buyer) DO UPDATE SET epsilon = excluded.epsilon, delta = excluded.delta",
        (dataset, buyer, str(spent.epsilon), str(spent.delta)),
    )


def _release(row: Any) -> ReleaseRecord:
    cost = Cost(Decimal(row[5]), Decimal(row[6]))
    return ReleaseRecord(row[0], row[1], row[2], row[3], row[4], cost, row[7], row[8], row[9])
