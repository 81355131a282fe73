"""The durable budget ledger and release log.

Charging is one transaction that checks the dataset budget and the buyer's
quota and records the release, so concurrent processes can never overspend
and a crash never loses a charge. Amounts are stored as exact decimal text.
SQLite runs in WAL mode with full synchronous commits.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Protocol

from engine.accounting import ZERO, Cost
from engine.errors import BudgetExhausted, LedgerError, QuotaExhausted

_TOTAL = ""
"""The ``buyer`` value of a dataset's total spend row."""


@dataclass(frozen=True)
class ChargeRequest:
    dataset: str
    buyer: str | None
    sql: str
    cost: Cost
    budget: Cost
    quota: Decimal | None
    """The buyer's ε quota on this dataset, if any."""


@dataclass(frozen=True)
class ChargeReceipt:
    """Proof that ``cost`` was durably charged for ``query_id``."""

    query_id: str
    cost: Cost


@dataclass(frozen=True)
class Spent:
    dataset: Cost
    buyer: Cost


@dataclass(frozen=True)
class ReleaseRecord:
    query_id: str
    dataset: str
    buyer: str | None
    sql: str
    cost: Cost
    created_at: str
    released: bool


class Ledger(Protocol):
    def charge(self, request: ChargeRequest) -> ChargeReceipt: ...
    def spent(self, dataset: str, buyer: str | None = None) -> Spent: ...
    def record_result(self, query_id: str, result_json: str) -> None: ...
    def releases(self, dataset: str | None = None) -> list[ReleaseRecord]: ...
    def close(self) -> None: ...


def open_ledger(url: str) -> Ledger:
    """A ledger from its URL: ``sqlite:///relative.db`` or ``sqlite:////absolute.db``."""
    if url.startswith("sqlite:///"):
        return SQLiteLedger(Path(url.removeprefix("sqlite:///")))
    raise LedgerError(f"unsupported ledger URL {url!r}: use sqlite:///path/to/file.db")


_SCHEMA = """
CREATE TABLE IF NOT EXISTS spent (
    dataset TEXT NOT NULL,
    buyer TEXT NOT NULL,
    epsilon TEXT NOT NULL,
    delta TEXT NOT NULL,
    PRIMARY KEY (dataset, buyer)
);
CREATE TABLE IF NOT EXISTS releases (
    query_id TEXT PRIMARY KEY,
    dataset TEXT NOT NULL,
    buyer TEXT,
    sql TEXT NOT NULL,
    epsilon TEXT NOT NULL,
    delta TEXT NOT NULL,
    created_at TEXT NOT NULL,
    result TEXT
);
"""


class SQLiteLedger:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._connection = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
            self._connection.execute("PRAGMA journal_mode=WAL")
            self._connection.execute("PRAGMA synchronous=FULL")
            self._connection.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as error:
            raise LedgerError(f"cannot open the ledger at {path}: {error}") from error

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """An immediate (write-locked) transaction: readers of the budget see it whole or not at all."""
        with self._lock:
            connection = self._connection
            try:
                connection.execute("BEGIN IMMEDIATE")
                try:
                    yield connection
                except BaseException:
                    connection.execute("ROLLBACK")
                    raise
                connection.execute("COMMIT")
            except sqlite3.Error as error:
                raise LedgerError(f"the ledger could not be written: {error}") from error

    def charge(self, request: ChargeRequest) -> ChargeReceipt:
        query_id = "q_" + secrets.token_hex(8)
        buyer = request.buyer or _TOTAL
        with self._transaction() as connection:
            total = _read_spent(connection, request.dataset, _TOTAL)
            if not (total + request.cost).within(request.budget):
                left = request.budget - total
                raise BudgetExhausted(
                    f"dataset {request.dataset} has epsilon {left.epsilon} and delta {left.delta} left; "
                    f"this query needs epsilon {request.cost.epsilon} and delta {request.cost.delta}"
                )
            buyer_spent = _read_spent(connection, request.dataset, buyer) if request.buyer else ZERO
            if request.quota is not None and buyer_spent.epsilon + request.cost.epsilon > request.quota:
                raise QuotaExhausted(
                    f"buyer {request.buyer} has epsilon {request.quota - buyer_spent.epsilon} of its quota left "
                    f"on {request.dataset}; this query needs {request.cost.epsilon}"
                )
            _write_spent(connection, request.dataset, _TOTAL, total + request.cost)
            if request.buyer:
                _write_spent(connection, request.dataset, buyer, buyer_spent + request.cost)
            connection.execute(
                "INSERT INTO releases (query_id, dataset, buyer, sql, epsilon, delta, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    query_id,
                    request.dataset,
                    request.buyer,
                    request.sql,
                    str(request.cost.epsilon),
                    str(request.cost.delta),
                    datetime.now(UTC).isoformat(timespec="milliseconds"),
                ),
            )
        return ChargeReceipt(query_id, request.cost)

    def spent(self, dataset: str, buyer: str | None = None) -> Spent:
        with self._transaction() as connection:
            total = _read_spent(connection, dataset, _TOTAL)
            by_buyer = _read_spent(connection, dataset, buyer) if buyer else ZERO
        return Spent(total, by_buyer)

    def record_result(self, query_id: str, result_json: str) -> None:
        with self._transaction() as connection:
            connection.execute("UPDATE releases SET result = ? WHERE query_id = ?", (result_json, query_id))

    def releases(self, dataset: str | None = None) -> list[ReleaseRecord]:
        with self._transaction() as connection:
            rows = connection.execute(
                "SELECT query_id, dataset, buyer, sql, epsilon, delta, created_at, result IS NOT NULL "
                "FROM releases WHERE ? IS NULL OR dataset = ? ORDER BY created_at, rowid",
                (dataset, dataset),
            ).fetchall()
        return [
            ReleaseRecord(row[0], row[1], row[2], row[3], Cost(Decimal(row[4]), Decimal(row[5])), row[6], bool(row[7]))
            for row in rows
        ]

    def close(self) -> None:
        with self._lock:
            self._connection.close()


def _read_spent(connection: sqlite3.Connection, dataset: str, buyer: str) -> Cost:
    row = connection.execute("SELECT epsilon, delta FROM spent WHERE dataset = ? AND buyer = ?", (dataset, buyer)).fetchone()
    return Cost(Decimal(row[0]), Decimal(row[1])) if row else ZERO


def _write_spent(connection: sqlite3.Connection, dataset: str, buyer: str, spent: Cost) -> None:
    connection.execute(
        "INSERT INTO spent (dataset, buyer, epsilon, delta) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (dataset, buyer) DO UPDATE SET epsilon = excluded.epsilon, delta = excluded.delta",
        (dataset, buyer, str(spent.epsilon), str(spent.delta)),
    )
