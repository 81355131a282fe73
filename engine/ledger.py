"""The durable budget ledger: spend, releases, and the cooperative's governance records.

Charging is one serialised transaction that checks the dataset budget and the
buyer's quota and records the release, so concurrent processes can never
overspend and a crash never loses a charge. Amounts are exact decimal text.
The same transaction answers repeats for free: a retry with the same
idempotency key, or a query whose reuse key matches a stored release, gets the
stored release back (so noise can never be averaged away). A release still
being answered is returned too, pending: its waiters poll the ledger for its
result, so identical queries in flight on any worker process are charged once.

Budgets and quotas set by stewards are stored here and override the policy's
defaults; a budget can never be set below what is already spent.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from engine.accounting import ZERO, ChargeReceipt, Cost, exact
from engine.errors import BudgetExhausted, Conflict, NotFound, PolicyViolation, QuotaExhausted
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
        reuse_key TEXT, idempotency_key TEXT, fingerprint TEXT NOT NULL, result TEXT, failed_at TEXT)""",
    "CREATE INDEX IF NOT EXISTS releases_by_reuse_key ON releases (reuse_key)",
    "CREATE UNIQUE INDEX IF NOT EXISTS releases_by_idempotency_key ON releases (buyer, idempotency_key)",
    """CREATE TABLE IF NOT EXISTS budgets (
        dataset TEXT PRIMARY KEY, epsilon TEXT NOT NULL, delta TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS quotas (
        dataset TEXT NOT NULL, buyer TEXT NOT NULL, epsilon TEXT, delta TEXT, PRIMARY KEY (dataset, buyer))""",
    """CREATE TABLE IF NOT EXISTS buyers (
        name TEXT PRIMARY KEY, purpose TEXT, created_at TEXT NOT NULL, revoked_at TEXT)""",
    """CREATE TABLE IF NOT EXISTS api_keys (
        key_hash TEXT PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL,
        created_at TEXT NOT NULL, revoked_at TEXT, id TEXT, last_used_at TEXT)""",
    """CREATE TABLE IF NOT EXISTS audit (
        id TEXT PRIMARY KEY, at TEXT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL, detail TEXT NOT NULL)""",
)
_ADDED_COLUMNS = (("releases", "failed_at"), ("quotas", "delta"), ("api_keys", "id"), ("api_keys", "last_used_at"))
"""Text columns added since the first schema: added to a ledger that lacks them when it is opened."""

PENDING_STALE_AFTER = timedelta(minutes=15)
"""A release still unanswered this long after its charge was abandoned (its process died): it is not waited for."""
KEY_USE_RESOLUTION_S = 60.0
"""``last_used`` is written at most once a minute per key and process, so authenticating stays a read."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class Quota:
    """A buyer's cap on one dataset's spend; None is no cap beyond the dataset's budget."""

    epsilon: Decimal | None = None
    delta: Decimal | None = None

    def __post_init__(self) -> None:
        if self.epsilon is not None and not (self.epsilon.is_finite() and self.epsilon > 0):
            raise PolicyViolation("an epsilon quota must be a finite number above 0")
        if self.delta is not None and not (self.delta.is_finite() and 0 <= self.delta < 1):
            raise PolicyViolation("a delta quota must be at least 0 and below 1")

    @classmethod
    def of(cls, epsilon: float | None, delta: float | None) -> Quota:
        """From numbers as written (policy, HTTP, CLI): the exact decimals a person typed."""
        return cls(*(None if part is None else exact(part) for part in (epsilon, delta)))


UNLIMITED = Quota()


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


@dataclass(frozen=True)
class BuyerRecord:
    name: str
    purpose: str | None
    created_at: str
    revoked: bool


@dataclass(frozen=True)
class KeyRecord:
    """An API key as stewards see it: never its secret nor its hash."""

    id: str
    name: str
    role: str
    created_at: str
    last_used_at: str | None
    revoked: bool


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
        self._key_uses: dict[str, float] = {}
        self._key_uses_lock = threading.Lock()
        with database.transaction() as tx:
            for statement in _SCHEMA:
                tx.execute(statement)
            for table, column in _ADDED_COLUMNS:
                if column not in tx.columns(table):
                    tx.execute(f"ALTER TABLE {table} ADD COLUMN {column} TEXT")
            for (key_hash,) in tx.execute("SELECT key_hash FROM api_keys WHERE id IS NULL"):
                tx.execute("UPDATE api_keys SET id = ? WHERE key_hash = ?", (_key_id(), key_hash))

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
                    f"dataset {request.dataset} has epsilon {_shown(left.epsilon)} "
                    f"and delta {_shown(left.delta)} left; "
                    f"this query needs epsilon {request.cost.epsilon} and delta {request.cost.delta}"
                )
            buyer_spent = _read_spent(tx, request.dataset, request.buyer) if request.buyer else ZERO
            quota = _quota(tx, request.dataset, request.buyer, request.quota)
            _check_quota(request, quota, buyer_spent)
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

    def record_failure(self, query_id: str) -> None:
        """The charged query failed before its answer: its charge stands; waiters stop waiting; no reuse."""
        with self.database.transaction() as tx:
            tx.execute("UPDATE releases SET failed_at = ? WHERE query_id = ? AND result IS NULL", (_now(), query_id))

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

    def quota(self, dataset: str, buyer: str, default: Quota) -> Quota:
        with self.database.transaction(write=False) as tx:
            return _quota(tx, dataset, buyer, default)

    def set_quota(self, dataset: str, buyer: str, quota: Quota, actor: str) -> None:
        """Set a buyer's quota on a dataset, both parts at once (None lifts that part, whatever the policy says)."""
        with self.database.transaction() as tx:
            tx.execute(
                "INSERT INTO quotas (dataset, buyer, epsilon, delta) VALUES (?, ?, ?, ?) ON CONFLICT (dataset, buyer) "
                "DO UPDATE SET epsilon = excluded.epsilon, delta = excluded.delta",
                (dataset, buyer, _text(quota.epsilon), _text(quota.delta)),
            )
            detail = f"{dataset}/{buyer}: epsilon {quota.epsilon if quota.epsilon is not None else 'unlimited'}"
            if quota.delta is not None:
                detail += f", delta {quota.delta}"
            _audit(tx, actor, "set_quota", detail)

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
            _check_name_free(tx, name, "buyer")
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

    def add_key(self, key_hash: str, name: str, role: str, actor: str) -> KeyRecord:
        """Store a new key's hash; a name belongs to one role (a buyer's name never holds a steward's key)."""
        key_id = _key_id()
        with self.database.transaction() as tx:
            _check_name_free(tx, name, role)
            tx.execute(
                "INSERT INTO api_keys (key_hash, name, role, created_at, id) VALUES (?, ?, ?, ?, ?)",
                (key_hash, name, role, _now(), key_id),
            )
            _audit(tx, actor, "create_key", f"{key_id}: {name} ({role})")
            return _key_by_id(tx, key_id)

    def key(self, key_hash: str) -> KeyRecord | None:
        """The live key with this hash, or None (unknown or revoked)."""
        with self.database.transaction(write=False) as tx:
            rows = tx.execute(
                f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL", (key_hash,)
            )
        return _key(rows[0]) if rows else None

    def keys(self) -> list[KeyRecord]:
        with self.database.transaction(write=False) as tx:
            rows = tx.execute(f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY created_at, id")
        return [_key(row) for row in rows]

    def key_used(self, key_id: str) -> None:
        """Record that a key authenticated a request (at most once per ``KEY_USE_RESOLUTION_S`` per process)."""
        now = time.monotonic()
        with self._key_uses_lock:
            if now - self._key_uses.get(key_id, -KEY_USE_RESOLUTION_S) < KEY_USE_RESOLUTION_S:
                return
            self._key_uses[key_id] = now
        with self.database.transaction() as tx:
            tx.execute("UPDATE api_keys SET last_used_at = ? WHERE id = ?", (_now(), key_id))

    def revoke_key(self, key_id: str, actor: str) -> KeyRecord:
        """Revoke one key, of either role; never the last live steward key (no one could govern after it)."""
        with self.database.transaction() as tx:
            rows = tx.execute(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE id = ?", (key_id,))
            if not rows:
                raise NotFound(f"no key {key_id!r}")
            key = _key(rows[0])
            if key.revoked:
                return key
            if key.role == "steward":
                (live,) = tx.execute("SELECT COUNT(*) FROM api_keys WHERE role = 'steward' AND revoked_at IS NULL")[0]
                if live <= 1:
                    raise Conflict(f"key {key_id} is the last live steward key; create another before revoking it")
            tx.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ?", (_now(), key_id))
            _audit(tx, actor, "revoke_key", f"{key_id}: {key.name} ({key.role})")
            return _key_by_id(tx, key_id)

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


def _check_name_free(tx: Transaction, name: str, role: str) -> None:
    """One name, one role: the audit log and the release log name principals, so a name must mean one."""
    if role == "steward":
        taken = tx.execute(
            "SELECT 1 FROM buyers WHERE name = ? UNION ALL SELECT 1 FROM api_keys WHERE name = ? AND role <> ?",
            (name, name, role),
        )
    else:
        taken = tx.execute("SELECT 1 FROM api_keys WHERE name = ? AND role <> ?", (name, role))
    if taken:
        other = "a buyer" if role == "steward" else "a steward"
        raise Conflict(f"the name {name!r} is already {other}'s; buyers and stewards need different names")


def _budget(tx: Transaction, dataset: str) -> Cost | None:
    rows = tx.execute("SELECT epsilon, delta FROM budgets WHERE dataset = ?", (dataset,))
    return Cost(Decimal(rows[0][0]), Decimal(rows[0][1])) if rows else None


def _quota(tx: Transaction, dataset: str, buyer: str | None, default: Quota) -> Quota:
    if buyer is None:
        return UNLIMITED
    rows = tx.execute("SELECT epsilon, delta FROM quotas WHERE dataset = ? AND buyer = ?", (dataset, buyer))
    if not rows:
        return default
    return Quota(*(None if part is None else Decimal(part) for part in rows[0]))


def _shown(amount: Decimal) -> str:
    """An amount in a message: ``0`` rather than ``0E-7``."""
    return "0" if amount == 0 else str(amount)


def _text(amount: Decimal | None) -> str | None:
    return None if amount is None else str(amount)


_KEY_COLUMNS = "id, name, role, created_at, last_used_at, revoked_at"


def _key(row: Any) -> KeyRecord:
    return KeyRecord(row[0], row[1], row[2], row[3], row[4], row[5] is not None)


def _key_by_id(tx: Transaction, key_id: str) -> KeyRecord:
    return _key(tx.execute(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE id = ?", (key_id,))[0])


def _key_id() -> str:
    """A key's public handle, random (never derived from the key or its hash)."""
    return "k_" + secrets.token_hex(8)


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
