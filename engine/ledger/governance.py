"""The cooperative's governance records: buyers, API keys, stored budgets and quotas, and the audit log.

Budgets and quotas set by stewards are stored here and override the policy's
defaults; a budget can never be set below what is already spent. Every change
is written to the audit log in the same transaction.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from engine.accounting import Cost, exact
from engine.errors import Conflict, NotFound, PolicyViolation
from engine.ledger.database import Database, Transaction
from engine.ledger.tables import TOTAL, create_tables, new_key_id, now, read_spent

KEY_USE_RESOLUTION_S = 60.0
"""``last_used`` is written at most once a minute per key and process, so authenticating stays a read."""


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


class Governance:
    """What stewards decide, on the ledger's database (SQLite or PostgreSQL)."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self._key_uses: dict[str, float] = {}
        self._key_uses_lock = threading.Lock()
        create_tables(database)

    # --- budgets and quotas ----------------------------------------------------------------

    def budget(self, dataset: str) -> Cost | None:
        """The steward's stored budget for ``dataset``, or None where the policy's stands."""
        with self.database.transaction(write=False) as tx:
            return stored_budget(tx, dataset)

    def set_budget(self, dataset: str, budget: Cost, actor: str) -> None:
        """Set a dataset's total budget; never below what is already spent."""
        with self.database.transaction() as tx:
            spent = read_spent(tx, dataset, TOTAL)
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
            return stored_quota(tx, dataset, buyer, default)

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

    # --- buyers --------------------------------------------------------------------------

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
                (name, purpose, now()),
            )
            _audit(tx, actor, "upsert_buyer", f"{name}: purpose {purpose or 'none'}")

    def revoke_buyer(self, name: str, actor: str) -> None:
        """Revoke a buyer and every key it holds."""
        with self.database.transaction() as tx:
            revoked_at = now()
            tx.execute("UPDATE buyers SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL", (revoked_at, name))
            tx.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE name = ? AND role = 'buyer' AND revoked_at IS NULL",
                (revoked_at, name),
            )
            _audit(tx, actor, "revoke_buyer", name)

    # --- API keys ------------------------------------------------------------------------

    def add_key(self, key_hash: str, name: str, role: str, actor: str) -> KeyRecord:
        """Store a new key's hash; a name belongs to one role (a buyer's name never holds a steward's key)."""
        key_id = new_key_id()
        with self.database.transaction() as tx:
            _check_name_free(tx, name, role)
            tx.execute(
                "INSERT INTO api_keys (key_hash, name, role, created_at, id) VALUES (?, ?, ?, ?, ?)",
                (key_hash, name, role, now(), key_id),
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
        used_at = time.monotonic()
        with self._key_uses_lock:
            if used_at - self._key_uses.get(key_id, -KEY_USE_RESOLUTION_S) < KEY_USE_RESOLUTION_S:
                return
            self._key_uses[key_id] = used_at
        with self.database.transaction() as tx:
            tx.execute("UPDATE api_keys SET last_used_at = ? WHERE id = ?", (now(), key_id))

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
            tx.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ?", (now(), key_id))
            _audit(tx, actor, "revoke_key", f"{key_id}: {key.name} ({key.role})")
            return _key_by_id(tx, key_id)

    # --- the audit log -------------------------------------------------------------------

    def audit(self) -> list[AuditEntry]:
        with self.database.transaction(write=False) as tx:
            rows = tx.execute("SELECT at, actor, action, detail FROM audit ORDER BY at, id")
        return [AuditEntry(*row) for row in rows]


def stored_budget(tx: Transaction, dataset: str) -> Cost | None:
    """The steward's budget for ``dataset`` inside a transaction (a charge checks it in its own)."""
    rows = tx.execute("SELECT epsilon, delta FROM budgets WHERE dataset = ?", (dataset,))
    return Cost(Decimal(rows[0][0]), Decimal(rows[0][1])) if rows else None


def stored_quota(tx: Transaction, dataset: str, buyer: str | None, default: Quota) -> Quota:
    """The steward's quota for ``buyer`` on ``dataset``, else ``default`` (the policy's); none for the operator."""
    if buyer is None:
        return UNLIMITED
    rows = tx.execute("SELECT epsilon, delta FROM quotas WHERE dataset = ? AND buyer = ?", (dataset, buyer))
    if not rows:
        return default
    return Quota(*(None if part is None else Decimal(part) for part in rows[0]))


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


def _text(amount: Decimal | None) -> str | None:
    return None if amount is None else str(amount)


_KEY_COLUMNS = "id, name, role, created_at, last_used_at, revoked_at"


def _key(row: Any) -> KeyRecord:
    return KeyRecord(row[0], row[1], row[2], row[3], row[4], row[5] is not None)


def _key_by_id(tx: Transaction, key_id: str) -> KeyRecord:
    return _key(tx.execute(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE id = ?", (key_id,))[0])


def _audit(tx: Transaction, actor: str, action: str, detail: str) -> None:
    tx.execute(
        "INSERT INTO audit (id, at, actor, action, detail) VALUES (?, ?, ?, ?, ?)",
        (secrets.token_hex(8), now(), actor, action, detail),
    )
