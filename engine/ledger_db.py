"""The ledger's databases: SQLite (one file) and PostgreSQL, behind one small interface.

The ledger writes its SQL once, with ``?`` placeholders; each database runs
it in transactions that serialise every charge (SQLite: ``BEGIN IMMEDIATE``;
PostgreSQL: a transaction-scoped advisory lock), so concurrent processes can
never interleave a budget check with another's charge. Any database failure
becomes a :class:`LedgerError`: the engine fails closed.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from engine.errors import LedgerError

Row = tuple[Any, ...]

_SQLITE_TIMEOUT = 60.0
"""Seconds a SQLite writer waits for the lock before the ledger reports itself unavailable."""
_CHARGE_LOCK = 0x636F6F70  # "coop": the advisory lock every PostgreSQL write transaction takes


class Transaction(Protocol):
    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> list[Row]: ...

    def columns(self, table: str) -> list[str]:
        """The names of ``table``'s columns (to add those a newer schema has)."""


class Database(Protocol):
    url: str

    def transaction(self, write: bool = True) -> Any:
        """A context manager yielding a :class:`Transaction`; commits on success, rolls back on error.

        Write transactions are serialised with every other writer; reads see a consistent snapshot.
        """

    def close(self) -> None: ...


class SQLiteDatabase:
    """One file, WAL mode, full synchronous commits; one connection shared by threads under a lock."""

    def __init__(self, path: Path) -> None:
        self.url = f"sqlite:///{path}"
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._connection = sqlite3.connect(
                path, timeout=_SQLITE_TIMEOUT, isolation_level=None, check_same_thread=False
            )
            _switch_to_wal(self._connection)
            self._connection.execute("PRAGMA synchronous=FULL")
        except (sqlite3.Error, OSError) as error:
            raise LedgerError(f"cannot open the ledger at {path}: {error}") from error

    @contextmanager
    def transaction(self, write: bool = True) -> Iterator[Transaction]:
        with self._lock:
            try:
                self._connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield _SQLiteTransaction(self._connection)
                except BaseException:
                    self._connection.execute("ROLLBACK")
                    raise
                self._connection.execute("COMMIT")
            except sqlite3.Error as error:
                raise LedgerError(f"the ledger could not be written: {error}") from error

    def close(self) -> None:
        with self._lock:
            self._connection.close()


def _switch_to_wal(connection: sqlite3.Connection) -> None:
    """Set WAL mode, waiting while another process holds a fresh file (no busy timeout applies here)."""
    deadline = time.monotonic() + _SQLITE_TIMEOUT
    delay = 0.01
    while True:
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


class _SQLiteTransaction:
    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> list[Row]:
        return self._connection.execute(sql, tuple(parameters)).fetchall()

    def columns(self, table: str) -> list[str]:
        return [column[0] for column in self._connection.execute(f"SELECT * FROM {table} LIMIT 0").description]


class PostgresDatabase:
    """A PostgreSQL server; one connection shared by threads under a lock."""

    def __init__(self, url: str) -> None:
        import psycopg

        self.url = url
        self._psycopg = psycopg
        self._lock = threading.Lock()
        self._closed = False
        self._connection = self._connect()

    def _connect(self) -> Any:
        try:
            return self._psycopg.connect(self.url, autocommit=False, connect_timeout=10)
        except self._psycopg.Error as error:
            raise LedgerError(f"cannot connect to the PostgreSQL ledger: {error.__class__.__name__}") from error

    @contextmanager
    def transaction(self, write: bool = True) -> Iterator[Transaction]:
        with self._lock:
            if self._closed:
                raise LedgerError("the ledger is closed")
            if self._connection.closed or self._connection.broken:
                self._connection.close()
                self._connection = self._connect()  # a lost connection is replaced; the failed call already failed
            connection = self._connection
            try:
                with connection.transaction():
                    cursor = connection.cursor()
                    if write:
                        cursor.execute("SELECT pg_advisory_xact_lock(%s)", (_CHARGE_LOCK,))
                    yield _PostgresTransaction(cursor)
            except self._psycopg.Error as error:
                raise LedgerError(f"the ledger could not be written: {error.__class__.__name__}") from error

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._connection.close()


class _PostgresTransaction:
    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> list[Row]:
        self._cursor.execute(sql.replace("?", "%s"), tuple(parameters))
        return self._cursor.fetchall() if self._cursor.description else []

    def columns(self, table: str) -> list[str]:
        self._cursor.execute(f"SELECT * FROM {table} LIMIT 0")
        return [column.name for column in self._cursor.description]


def open_database(url: str) -> Database:
    """``sqlite:///relative.db``, ``sqlite:////absolute.db`` or ``postgresql://user@host:port/db``."""
    if url.startswith("sqlite:///"):
        return SQLiteDatabase(Path(url.removeprefix("sqlite:///")))
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresDatabase(url)
    raise LedgerError(f"unsupported ledger URL {url!r}: use sqlite:///path/to/file.db or postgresql://…")
