"""The ledger's tables, created and brought up to date in one place, and the reads both halves share.

Charging (``charges``) and governance (``governance``) keep their records in
one database: a charge reads the budget and quota stewards set, and a steward
may never set a budget below what charges have spent.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from decimal import Decimal

from engine.accounting import ZERO, Cost
from engine.ledger.database import Database, Transaction

TOTAL = ""
"""The ``buyer`` value of a dataset's total spend row."""

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS spent (
        dataset TEXT NOT NULL, buyer TEXT NOT NULL, epsilon TEXT NOT NULL, delta TEXT NOT NULL,
        PRIMARY KEY (dataset, buyer))""",
    """CREATE TABLE IF NOT EXISTS releases (
        query_id TEXT PRIMARY KEY, dataset TEXT NOT NULL, buyer TEXT, purpose TEXT, sql TEXT NOT NULL,
        epsilon TEXT NOT NULL, delta TEXT NOT NULL, created_at TEXT NOT NULL,
        reuse_key TEXT, idempotency_key TEXT, fingerprint TEXT NOT NULL, result TEXT, failed_at TEXT,
        bounds TEXT)""",
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
_ADDED_COLUMNS = (
    ("releases", "failed_at"),
    ("releases", "bounds"),
    ("quotas", "delta"),
    ("api_keys", "id"),
    ("api_keys", "last_used_at"),
)
"""Text columns added since the first schema: added to a ledger that lacks them when it is opened."""


def create_tables(database: Database) -> None:
    """Create the tables a fresh ledger lacks and add the columns an older one lacks (idempotent)."""
    with database.transaction() as tx:
        for statement in _SCHEMA:
            tx.execute(statement)
        for table, column in _ADDED_COLUMNS:
            if column not in tx.columns(table):
                tx.execute(f"ALTER TABLE {table} ADD COLUMN {column} TEXT")
        for (key_hash,) in tx.execute("SELECT key_hash FROM api_keys WHERE id IS NULL"):
            tx.execute("UPDATE api_keys SET id = ? WHERE key_hash = ?", (new_key_id(), key_hash))


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def new_key_id() -> str:
    """A key's public handle, random (never derived from the key or its hash)."""
    return "k_" + secrets.token_hex(8)


def read_spent(tx: Transaction, dataset: str, buyer: str) -> Cost:
    """What ``buyer`` has spent on ``dataset`` (``TOTAL``: everyone together)."""
    rows = tx.execute("SELECT epsilon, delta FROM spent WHERE dataset = ? AND buyer = ?", (dataset, buyer))
    return Cost(Decimal(rows[0][0]), Decimal(rows[0][1])) if rows else ZERO
