"""The durable budget ledger: spend, releases, and the cooperative's governance records.

Charging is one serialised transaction that checks the dataset budget and the
buyer's quota and records the release, so concurrent processes can never
overspend and a crash never loses a charge. Amounts are exact decimal text.
The same transaction answers repeats for free: a retry with the same
idempotency key, or a query whose reuse key matches a stored release, gets the
stored release back (so noise can never be averaged away).

Budgets and quotas set by stewards are stored here and override the policy's
defaults; a budget can never be set below what is already spent.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from engine.accounting import ZERO, ChargeReceipt, Cost
from engine.errors import BudgetExhausted, Conflict, PolicyViolation, QuotaExhausted
from engine.ledger_db import Database, Transaction, open_database

_TOTAL = ""
"""The ``buyer`` value of a dataset's total spend row."""

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS spent (
        dataset TEXT NOT NULL, buyer TEXT NOT NULL, epsilon TEXT NOT NULL, delta TEXT NOT NULL,
        PRIMARY KEY (dataset, buyer))""",
    """CREATE TABLE IF NOT EXISTS releases (
        query_id TEXT PRIMARY KEY, dataset TEXT NOT NULL, buyer TEXT, purpose TEXT, sql TEXT NOT NULL,
        epsilon TEXT NOT NULL, delta TEXT NOT NULL, created_at TEXT NOT NULL,
        reuse_key TEXT, idempotency_key TEXT, fingerprint TEXT NOT NULL, result TEXT)""",
    "CREATE INDEX IF NOT EXISTS releases_by_reuse_key ON releases (reuse_key)",
    "CREATE UNIQUE INDEX IF NOT EXISTS releases_by_idempotency_key ON releases (buyer, idempotency_key)",
    """CREATE TABLE IF NOT EXISTS budgets (
        dataset TEXT PRIMARY KEY, epsilon TEXT NOT NULL, delta TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS quotas (
        dataset TEXT NOT NULL, buyer TEXT NOT NULL, epsilon TEXT, PRIMARY KEY (dataset, buyer))""",
    """CREATE TABLE IF NOT EXISTS buyers (
        name TEXT PRIMARY KEY, purpose TEXT, created_at TEXT NOT NULL, revoked_at TEXT)""",
    """CREATE TABLE IF NOT EXISTS api_keys (
        key_hash TEXT PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL,
        created_at TEXT NOT NULL, revoked_at TEXT)""",
    """CREATE TABLE IF NOT EXISTS audit (
        id TEXT PRIMARY KEY, at TEXT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL, detail TEXT NOT NULL)""",
)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class ChargeRequest:
    dataset: str
    buyer: str | None
    sql: str
    cost: Cost
    budget: Cost
    """The policy's budget; a steward's stored budget overrides it."""
    quota: Decimal | None
    """The policy's ε quota for the buyer; a steward's stored quota overrides it."""
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


@dataclass(frozen=True)
class BuyerRecord:
    name: str
    purpose: str | None
    created_at: str
    revoked: bool


@dataclass(frozen=True)
class KeyRecord:
    name: str
    role: str


@dataclass(frozen=True)
class AuditEntry:
    at: str
    actor: str
    action: str
    detail: str


_RELEASE_COLUMNS = "query_id, dataset, buyer, purpose, sql, epsilon, delta, created_at, result"


class Ledger:
    """All durable state of the engine, on SQLite or PostgreSQL."""

    def __init__(self, database: Database) -> None:
        self.database = database
        with database.transaction() as tx:
            for statement in _SCHEMA:
                tx.execute(statement)

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
            budget = _budget(tx, request.dataset) or request.budget
            total = _read_spent(tx, request.dataset, _TOTAL)
            if not (total + request.cost).within(budget):
                left = budget - total
                raise BudgetExhausted(
                    f"dataset {request.dataset} has epsilon {left.epsilon} and delta {left.delta} left; "
                    f"this query needs epsilon {request.cost.epsilon} and delta {request.cost.delta}"
                )
            buyer_spent = _read_spent(tx, request.dataset, request.buyer) if request.buyer else ZERO
            quota = _quota(tx, request.dataset, request.buyer, request.quota)
            if quota is not None and buyer_spent.epsilon + request.cost.epsilon > quota:
                raise QuotaExhausted(
                    f"buyer {request.buyer} has epsilon {quota - buyer_spent.epsilon} of its quota left "
                    f"on {request.dataset}; this query needs {request.cost.epsilon}"
                )
            _write_spent(tx, request.dataset, _TOTAL, total + request.cost)
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
                    _now(),
                    request.reuse_key,
                    request.idempotency_key,
                    request.fingerprint,
                ),
            )
        return ChargeReceipt(query_id, request.cost)

    def record_result(self, query_id: str, result_json: str) -> None:
        with self.database.transaction() as tx:
            tx.execute("UPDATE releases SET result = ? WHERE query_id = ?", (result_json, query_id))

    def spent(self, dataset: str, buyer: str | None = None) -> Spent:
        with self.database.transaction(write=False) as tx:
            total = _read_spent(tx, dataset, _TOTAL)
            by_buyer = _read_spent(tx, dataset, buyer) if buyer else ZERO
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

    # --- governance ----------------------------------------------------------------------

    def budget(self, dataset: str) -> Cost | None:
        """The steward's stored budget for ``dataset``, or None where the policy's stands."""
        with self.database.transaction(write=False) as tx:
            return _budget(tx, dataset)

    def set_budget(self, dataset: str, budget: Cost, actor: str) -> None:
        """Set a dataset's total budget; never below what is already spent."""
        with self.database.transaction() as tx:
            spent = _read_spent(tx, dataset, _TOTAL)
            if not spent.within(budget):
                raise PolicyViolation(
                    f"dataset {dataset} has already spent epsilon {spent.epsilon} and delta {spent.delta}; "
                    "a budget cannot be set below that"
                )
            tx.execute(
                "INSERT INTO budgets (dataset, epsilon, delta) VALUES (?, ?, ?) ON CONFLICT (dataset) "
                "DO UPDATE SET epsilon = excluded.epsilon, delta = excluded.delta",
                (dataset, str(budget.epsilon), str(budget.delta)),
            )
            _audit(tx, actor, "set_budget", f"{dataset}: epsilon {budget.epsilon}, delta {budget.delta}")

    def quota(self, dataset: str, buyer: str, default: Decimal | None) -> Decimal | None:
        with self.database.transaction(write=False) as tx:
            return _quota(tx, dataset, buyer, default)

    def set_quota(self, dataset: str, buyer: str, epsilon: Decimal | None, actor: str) -> None:
        """Set (or, with None, lift) a buyer's ε quota on a dataset."""
        with self.database.transaction() as tx:
            tx.execute(
                "INSERT INTO quotas (dataset, buyer, epsilon) VALUES (?, ?, ?) ON CONFLICT (dataset, buyer) "
                "DO UPDATE SET epsilon = excluded.epsilon",
                (dataset, buyer, None if epsilon is None else str(epsilon)),
            )
            _audit(
                tx, actor, "set_quota", f"{dataset}/{buyer}: epsilon {epsilon if epsilon is not None else 'unlimited'}"
            )

    def buyer(self, name: str) -> BuyerRecord | None:
        with self.database.transaction(write=False) as tx:
            rows = tx.execute("SELECT name, purpose, created_at, revoked_at FROM buyers WHERE name = ?", (name,))
        return BuyerRecord(rows[0][0], rows[0][1], rows[0][2], rows[0][3] is not None) if rows else None

    def buyers(self) -> list[BuyerRecord]:
        with self.database.transaction(write=False) as tx:
            rows = tx.execute("SELECT name, purpose, created_at, revoked_at FROM buyers ORDER BY name")
        return [BuyerRecord(row[0], row[1], row[2], row[3] is not None) for row in rows]

    def upsert_buyer(self, name: str, purpose: str | None, actor: str) -> None:
        with self.database.transaction() as tx:
            tx.execute(
                "INSERT INTO buyers (name, purpose, created_at) VALUES (?, ?, ?) ON CONFLICT (name) "
                "DO UPDATE SET purpose = excluded.purpose, revoked_at = NULL",
                (name, purpose, _now()),
            )
            _audit(tx, actor, "upsert_buyer", f"{name}: purpose {purpose or 'none'}")

    def revoke_buyer(self, name: str, actor: str) -> None:
        """Revoke a buyer and every key it holds."""
        with self.database.transaction() as tx:
            now = _now()
            tx.execute("UPDATE buyers SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL", (now, name))
            tx.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE name = ? AND role = 'buyer' AND revoked_at IS NULL",
                (now, name),
            )
            _audit(tx, actor, "revoke_buyer", name)

    def add_key(self, key_hash: str, name: str, role: str, actor: str) -> None:
        with self.database.transaction() as tx:
            tx.execute(
                "INSERT INTO api_keys (key_hash, name, role, created_at) VALUES (?, ?, ?, ?)",
                (key_hash, name, role, _now()),
            )
            _audit(tx, actor, "create_key", f"{name} ({role})")

    def key(self, key_hash: str) -> KeyRecord | None:
        """The live key with this hash, or None (unknown or revoked)."""
        with self.database.transaction(write=False) as tx:
            rows = tx.execute("SELECT name, role FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL", (key_hash,))
        return KeyRecord(rows[0][0], rows[0][1]) if rows else None

    def audit(self) -> list[AuditEntry]:
        with self.database.transaction(write=False) as tx:
            rows = tx.execute("SELECT at, actor, action, detail FROM audit ORDER BY at, id")
        return [AuditEntry(*row) for row in rows]

    def close(self) -> None:
        self.database.close()


def open_ledger(url: str) -> Ledger:
    """A ledger from its URL: ``sqlite:///file.db`` or ``postgresql://…``."""
    return Ledger(open_database(url))


def _repeated(tx: Transaction, request: ChargeRequest) -> StoredRelease | None:
    if request.idempotency_key is not None:
        rows = tx.execute(
            "SELECT query_id, result, fingerprint FROM releases WHERE idempotency_key = ? "
            "AND ((buyer IS NULL AND CAST(? AS TEXT) IS NULL) OR buyer = ?)",
            (request.idempotency_key, request.buyer, request.buyer),
        )
        if rows:
            if rows[0][2] != request.fingerprint:
                raise Conflict("this Idempotency-Key was already used for a different query")
            return StoredRelease(rows[0][0], rows[0][1])
    if request.reuse_key is not None:
        rows = tx.execute(
            "SELECT query_id, result FROM releases WHERE reuse_key = ? AND result IS NOT NULL "
            "ORDER BY created_at LIMIT 1",
            (request.reuse_key,),
        )
        if rows:
            return StoredRelease(rows[0][0], rows[0][1])
    return None


def _budget(tx: Transaction, dataset: str) -> Cost | None:
    rows = tx.execute("SELECT epsilon, delta FROM budgets WHERE dataset = ?", (dataset,))
    return Cost(Decimal(rows[0][0]), Decimal(rows[0][1])) if rows else None


def _quota(tx: Transaction, dataset: str, buyer: str | None, default: Decimal | None) -> Decimal | None:
    if buyer is None:
        return None
    rows = tx.execute("SELECT epsilon FROM quotas WHERE dataset = ? AND buyer = ?", (dataset, buyer))
    if not rows:
        return default
    return None if rows[0][0] is None else Decimal(rows[0][0])


def _read_spent(tx: Transaction, dataset: str, buyer: str) -> Cost:
    rows = tx.execute("SELECT epsilon, delta FROM spent WHERE dataset = ? AND buyer = ?", (dataset, buyer))
    return Cost(Decimal(rows[0][0]), Decimal(rows[0][1])) if rows else ZERO


def _write_spent(tx: Transaction, dataset: str, buyer: str, spent: Cost) -> None:
    tx.execute(
        "INSERT INTO spent (dataset, buyer, epsilon, delta) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (dataset, buyer) DO UPDATE SET epsilon = excluded.epsilon, delta = excluded.delta",
        (dataset, buyer, str(spent.epsilon), str(spent.delta)),
    )


def _audit(tx: Transaction, actor: str, action: str, detail: str) -> None:
    tx.execute(
        "INSERT INTO audit (id, at, actor, action, detail) VALUES (?, ?, ?, ?, ?)",
        (secrets.token_hex(8), _now(), actor, action, detail),
    )


def _release(row: Any) -> ReleaseRecord:
    return ReleaseRecord(row[0], row[1], row[2], row[3], row[4], Cost(Decimal(row[5]), Decimal(row[6])), row[7], row[8])
