"""The ledger on both of its databases, SQLite and a real PostgreSQL server.

Every test here runs twice (``[sqlite]`` and ``[postgresql]``) through
``open_ledger(url)``: exact decimal sums, refusals that change nothing,
quotas, no overspending across processes, durability across reopening,
release reuse and idempotency keys, governance records, and failing closed.
"""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from engine.accounting import Cost
from engine.errors import (
    BudgetExhausted,
    Conflict,
    CoopdpError,
    LedgerError,
    NotFound,
    PolicyViolation,
    QuotaExhausted,
)
from engine.ledger import UNLIMITED, ChargeReceipt, ChargeRequest, Ledger, Quota, StoredRelease, open_ledger
from tests.pg_server import free_port

BUDGET = Cost(Decimal("5.0"), Decimal("1e-6"))


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    opened = open_ledger(ledger_url)
    yield opened
    opened.close()


def _request(
    epsilon: str = "0.5",
    *,
    delta: str = "0",
    buyer: str | None = None,
    quota: str | None = None,
    quota_of: Quota | None = None,
    dataset: str = "pool",
    sql: str = "SELECT COUNT(*) FROM pool",
    budget: Cost = BUDGET,
    reuse_key: str | None = None,
    idempotency_key: str | None = None,
) -> ChargeRequest:
    return ChargeRequest(
        dataset=dataset,
        buyer=buyer,
        sql=sql,
        cost=Cost(Decimal(epsilon), Decimal(delta)),
        budget=budget,
        quota=quota_of or (Quota(Decimal(quota)) if quota is not None else UNLIMITED),
        purpose="research" if buyer else None,
        reuse_key=reuse_key,
        idempotency_key=idempotency_key,
    )


_START: Any = None


def _set_start(barrier: Any) -> None:
    global _START
    _START = barrier


def _charge_many(url: str, attempts: int) -> int:
    """Run in a spawned process: try ``attempts`` charges of 0.1 against 5.0; return how many were granted."""
    ledger = open_ledger(url)
    _START.wait(timeout=120)
    granted = 0
    try:
        for _ in range(attempts):
            try:
                ledger.charge(_request("0.1", buyer="lab"))
                granted += 1
            except BudgetExhausted:
                pass
    finally:
        ledger.close()
    return granted


def _release_total(ledger: Ledger) -> Cost:
    total = Cost(Decimal(0), Decimal(0))
    for record in ledger.releases():
        total = total + record.cost
    return total


# --- charging ----------------------------------------------------------------------------


def test_a_charge_is_recorded_with_its_release(ledger: Ledger) -> None:
    receipt = ledger.charge(_request("0.5", delta="1e-7", buyer="lab"))
    assert isinstance(receipt, ChargeReceipt)
    assert receipt.query_id.startswith("q_") and receipt.cost == Cost(Decimal("0.5"), Decimal("1e-7"))
    spent = ledger.spent("pool", "lab")
    assert spent.dataset == Cost(Decimal("0.5"), Decimal("1e-7"))
    assert spent.buyer == Cost(Decimal("0.5"), Decimal("1e-7"))
    record = ledger.release(receipt.query_id)
    assert record is not None
    assert (record.dataset, record.buyer, record.purpose, record.sql) == (
        "pool",
        "lab",
        "research",
        "SELECT COUNT(*) FROM pool",
    )
    assert record.cost == receipt.cost and record.result is None and record.created_at
    ledger.record_result(receipt.query_id, '{"rows": [[1]]}')
    assert ledger.release(receipt.query_id).result == '{"rows": [[1]]}'  # type: ignore[union-attr]
    assert ledger.release("q_missing") is None


def test_a_refused_charge_changes_nothing(ledger: Ledger) -> None:
    ledger.charge(_request("4.5"))
    with pytest.raises(BudgetExhausted, match="0.5 and delta"):
        ledger.charge(_request("0.75"))
    assert ledger.spent("pool").dataset.epsilon == Decimal("4.5")
    assert len(ledger.releases()) == 1
    ledger.charge(_request("0.5"))  # exactly to the budget is allowed
    assert ledger.spent("pool").dataset.epsilon == Decimal("5.0")
    with pytest.raises(BudgetExhausted):
        ledger.charge(_request("0.001"))


def test_delta_is_budgeted_too(ledger: Ledger) -> None:
    ledger.charge(_request("0.1", delta="6e-7"))
    with pytest.raises(BudgetExhausted):
        ledger.charge(_request("0.1", delta="6e-7"))
    assert ledger.spent("pool").dataset == Cost(Decimal("0.1"), Decimal("6e-7"))


def test_budgets_are_per_dataset(ledger: Ledger) -> None:
    ledger.charge(_request("5.0", dataset="a"))
    ledger.charge(_request("5.0", dataset="b"))
    assert ledger.spent("a").dataset.epsilon == ledger.spent("b").dataset.epsilon == Decimal("5.0")
    assert [r.dataset for r in ledger.releases("a")] == ["a"]


def test_quota_is_charged_per_buyer(ledger: Ledger) -> None:
    ledger.charge(_request("1.0", buyer="lab", quota="1.5"))
    with pytest.raises(QuotaExhausted, match="0.5 of its quota"):
        ledger.charge(_request("1.0", buyer="lab", quota="1.5"))
    ledger.charge(_request("1.0", buyer="other", quota="1.5"))  # another buyer has its own quota
    assert ledger.spent("pool", "lab").buyer.epsilon == Decimal("1.0")
    assert ledger.spent("pool", "other").buyer.epsilon == Decimal("1.0")
    assert ledger.spent("pool").dataset.epsilon == Decimal("2.0")
    assert len(ledger.releases(buyer="lab")) == 1


def test_stored_quotas_override_the_policy(ledger: Ledger) -> None:
    assert ledger.quota("pool", "lab", Quota(Decimal("1.5"))) == Quota(Decimal("1.5"))
    ledger.set_quota("pool", "lab", Quota(Decimal("0.5")), actor="steward")
    assert ledger.quota("pool", "lab", Quota(Decimal("1.5"))) == Quota(Decimal("0.5"))
    with pytest.raises(QuotaExhausted):
        ledger.charge(_request("1.0", buyer="lab", quota="1.5"))
    ledger.set_quota("pool", "lab", UNLIMITED, actor="steward")  # lifted: unlimited, whatever the policy says
    assert ledger.quota("pool", "lab", Quota(Decimal("1.5"))) == UNLIMITED
    ledger.charge(_request("1.0", buyer="lab", quota="1.5"))
    ledger.charge(_request("1.0", buyer="lab", quota="1.5"))
    assert ledger.spent("pool", "lab").buyer.epsilon == Decimal("2.0")


def test_thousands_of_small_charges_add_up_exactly(ledger: Ledger) -> None:
    budget = Cost(Decimal("1000"), Decimal(0))
    for _ in range(2000):
        ledger.charge(_request("0.1", buyer="lab", budget=budget))
    spent = ledger.spent("pool", "lab")
    assert spent.dataset.epsilon == Decimal("200.0") and str(spent.dataset.epsilon) == "200.0"
    assert spent.buyer.epsilon == Decimal("200.0")
    assert _release_total(ledger).epsilon == Decimal("200.0")
    assert len(ledger.releases()) == 2000


def test_ten_thousand_tenths_reach_the_budget_exactly(ledger: Ledger) -> None:
    """Float drift would leave 0.1 short of (or over) the budget after 50 charges; exact decimals do not."""
    for _ in range(50):
        ledger.charge(_request("0.1"))
    assert ledger.spent("pool").dataset.epsilon == Decimal("5.0")
    with pytest.raises(BudgetExhausted):
        ledger.charge(_request("0.1"))


# --- concurrency and durability ------------------------------------------------------------------


def test_concurrent_processes_never_overspend(ledger_url: str) -> None:
    open_ledger(ledger_url).close()  # the schema, before the race
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(4)  # all four race together, not one after another as they finish starting
    with context.Pool(4, initializer=_set_start, initargs=(start,)) as pool:
        granted = pool.starmap_async(_charge_many, [(ledger_url, 40)] * 4, chunksize=1).get(timeout=240)
    assert sum(granted) == 50  # 5.0 / 0.1
    ledger = open_ledger(ledger_url)
    try:
        spent = ledger.spent("pool", "lab")
        assert spent.dataset.epsilon == Decimal("5.0") and spent.buyer.epsilon == Decimal("5.0")
        releases = ledger.releases()
        assert len(releases) == 50 and len({r.query_id for r in releases}) == 50
        assert _release_total(ledger).epsilon == Decimal("5.0")
    finally:
        ledger.close()


def _open_and_charge(url: str) -> str:
    """Run in a spawned process: open a ledger (maybe creating its schema) and charge 0.1."""
    _START.wait(timeout=120)
    ledger = open_ledger(url)
    try:
        receipt = ledger.charge(_request("0.1"))
        assert isinstance(receipt, ChargeReceipt)
        return receipt.query_id
    finally:
        ledger.close()


def test_processes_opening_a_fresh_postgresql_ledger_at_once_create_one_schema(postgres_ledger_url: str) -> None:
    """Like the workers of ``coopdp serve`` starting together on an empty database (the advisory lock serialises
    the ``CREATE TABLE IF NOT EXISTS`` statements, which would otherwise race in PostgreSQL's catalogue)."""
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(4)
    with context.Pool(4, initializer=_set_start, initargs=(start,)) as pool:
        query_ids = pool.map_async(_open_and_charge, [postgres_ledger_url] * 4, chunksize=1).get(timeout=240)
    ledger = open_ledger(postgres_ledger_url)
    try:
        assert {r.query_id for r in ledger.releases()} == set(query_ids) and len(set(query_ids)) == 4
        assert ledger.spent("pool").dataset.epsilon == Decimal("0.4")
    finally:
        ledger.close()


def test_opening_a_fresh_sqlite_ledger_waits_for_a_concurrent_opener(tmp_path: Path) -> None:
    """``coopdp serve --workers N`` on a new ledger: N processes open the same fresh file at once.

    ``SQLiteDatabase.__init__`` runs ``PRAGMA journal_mode=WAL``; while another connection holds a write lock on
    the not-yet-WAL file (another worker initialising it), SQLite returns SQLITE_BUSY at once, without the
    60 s busy timeout, so the second opener fails with LedgerError instead of waiting a moment. Here the
    "other worker" is a plain connection holding ``BEGIN IMMEDIATE`` for half a second. (With 8 processes
    racing to open fresh files, about one round in seven loses a worker this way.)
    """
    path = tmp_path / "ledger.db"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        other.execute("CREATE TABLE IF NOT EXISTS starting (x)")  # a fresh file, still in rollback-journal mode
        other.execute("BEGIN IMMEDIATE")
        release = threading.Timer(0.5, lambda: other.execute("COMMIT"))
        release.start()
        try:
            ledger = open_ledger(f"sqlite:///{path}")  # should wait the half second, then open
        finally:
            release.join(timeout=10)
        ledger.charge(_request("0.5"))
        assert ledger.spent("pool").dataset.epsilon == Decimal("0.5")
        ledger.close()
    finally:
        other.close()


def test_concurrent_threads_never_overspend(ledger: Ledger) -> None:
    granted: list[int] = []

    def work() -> None:
        count = 0
        for _ in range(20):
            try:
                ledger.charge(_request("0.1"))
                count += 1
            except BudgetExhausted:
                pass
        granted.append(count)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert sum(granted) == 50
    assert ledger.spent("pool").dataset.epsilon == Decimal("5.0") and len(ledger.releases()) == 50


def test_charges_survive_reopening(ledger_url: str) -> None:
    ledger = open_ledger(ledger_url)
    receipt = ledger.charge(_request("0.5", buyer="lab"))
    ledger.record_result(receipt.query_id, "{}")
    ledger.set_budget("pool", Cost(Decimal("7"), Decimal("1e-6")), actor="steward")
    ledger.close()
    reopened = open_ledger(ledger_url)  # the schema is created again, idempotently
    try:
        assert reopened.spent("pool", "lab").dataset.epsilon == Decimal("0.5")
        assert reopened.spent("pool", "lab").buyer.epsilon == Decimal("0.5")
        assert [r.query_id for r in reopened.releases()] == [receipt.query_id]
        assert reopened.release(receipt.query_id).result == "{}"  # type: ignore[union-attr]
        assert reopened.budget("pool") == Cost(Decimal("7"), Decimal("1e-6"))
    finally:
        reopened.close()


# --- repeats: release reuse and idempotency keys ----------------------------------------------------


def test_a_reused_release_is_free(ledger: Ledger) -> None:
    first = ledger.charge(_request("0.5", buyer="lab", reuse_key="k"))
    assert isinstance(first, ChargeReceipt)
    # While it is still being answered, an identical query is not charged: it gets the pending release.
    assert ledger.charge(_request("0.5", buyer="lab", reuse_key="k")) == StoredRelease(first.query_id, None)
    ledger.record_result(first.query_id, '{"rows": [[42]]}')
    repeat = ledger.charge(_request("0.5", buyer="lab", reuse_key="k"))
    assert repeat == StoredRelease(first.query_id, '{"rows": [[42]]}')
    assert ledger.spent("pool").dataset.epsilon == Decimal("0.5")
    assert len(ledger.releases()) == 1
    assert isinstance(ledger.charge(_request("0.5", buyer="lab", reuse_key="other")), ChargeReceipt)
    assert isinstance(ledger.charge(_request("0.5", buyer="lab")), ChargeReceipt)  # no key: no reuse


def test_a_reused_release_is_served_even_when_the_budget_is_spent(ledger: Ledger) -> None:
    receipt = ledger.charge(_request("5.0", reuse_key="k"))
    ledger.record_result(receipt.query_id, "{}")
    assert ledger.charge(_request("5.0", reuse_key="k")) == StoredRelease(receipt.query_id, "{}")
    with pytest.raises(BudgetExhausted):
        ledger.charge(_request("5.0", reuse_key="k2"))


def test_an_idempotency_key_returns_the_stored_release(ledger: Ledger) -> None:
    receipt = ledger.charge(_request("0.5", buyer="lab", idempotency_key="retry-1"))
    assert isinstance(receipt, ChargeReceipt)
    # A retry while the first is still being answered: the same release, no result yet, no charge.
    assert ledger.charge(_request("0.5", buyer="lab", idempotency_key="retry-1")) == StoredRelease(
        receipt.query_id, None
    )
    ledger.record_result(receipt.query_id, '{"rows": [[7]]}')
    assert ledger.charge(_request("0.5", buyer="lab", idempotency_key="retry-1")) == StoredRelease(
        receipt.query_id, '{"rows": [[7]]}'
    )
    assert ledger.spent("pool", "lab").buyer.epsilon == Decimal("0.5")
    assert len(ledger.releases()) == 1
    # Keys are per buyer: another buyer's (or the operator's) equal key is a new query.
    other = ledger.charge(_request("0.5", buyer="other", idempotency_key="retry-1"))
    operator = ledger.charge(_request("0.5", idempotency_key="retry-1"))
    assert isinstance(other, ChargeReceipt) and isinstance(operator, ChargeReceipt)
    assert ledger.charge(_request("0.5", idempotency_key="retry-1")) == StoredRelease(operator.query_id, None)
    assert ledger.spent("pool").dataset.epsilon == Decimal("1.5")


def test_an_idempotent_retry_is_answered_after_the_budget_is_spent(ledger: Ledger) -> None:
    receipt = ledger.charge(_request("5.0", buyer="lab", idempotency_key="k"))
    assert ledger.charge(_request("5.0", buyer="lab", idempotency_key="k")) == StoredRelease(receipt.query_id, None)
    assert ledger.spent("pool").dataset.epsilon == Decimal("5.0")


def test_an_idempotency_key_reused_for_another_query_is_refused(ledger: Ledger) -> None:
    """``_repeated`` matches on (buyer, idempotency_key) only, so a second, different query sent with the
    same key is answered with the first query's stored release (other SQL, dataset or ε), as if cached.
    It should be refused instead (Conflict / 422, as e.g. Stripe does), or at least not answered with
    another query's result."""
    first = ledger.charge(_request("0.5", buyer="lab", sql="SELECT COUNT(*) FROM pool", idempotency_key="k"))
    assert isinstance(first, ChargeReceipt)
    ledger.record_result(first.query_id, '{"rows": [[600]]}')
    other = _request("0.9", buyer="lab", sql="SELECT SUM(hours) FROM pool", dataset="other", idempotency_key="k")
    with pytest.raises(CoopdpError):
        ledger.charge(other)


# --- governance -------------------------------------------------------------------------------


def test_a_stored_budget_overrides_the_policy(ledger: Ledger) -> None:
    assert ledger.budget("pool") is None
    ledger.charge(_request("5.0"))
    ledger.set_budget("pool", Cost(Decimal("6.0"), Decimal("1e-6")), actor="steward")
    assert ledger.budget("pool") == Cost(Decimal("6.0"), Decimal("1e-6"))
    ledger.charge(_request("1.0"))
    with pytest.raises(BudgetExhausted):
        ledger.charge(_request("0.1"))
    assert ledger.spent("pool").dataset.epsilon == Decimal("6.0")


def test_a_budget_is_never_set_below_what_is_spent(ledger: Ledger) -> None:
    ledger.charge(_request("2.5", delta="1e-7"))
    with pytest.raises(PolicyViolation, match="already spent epsilon 2.5"):
        ledger.set_budget("pool", Cost(Decimal("2.4"), Decimal("1e-6")), actor="steward")
    with pytest.raises(PolicyViolation):
        ledger.set_budget("pool", Cost(Decimal("9"), Decimal("1e-8")), actor="steward")  # δ below spent
    assert ledger.budget("pool") is None
    assert [entry.action for entry in ledger.audit()] == []  # a refusal is not audited as a change
    ledger.set_budget("pool", Cost(Decimal("2.5"), Decimal("1e-7")), actor="steward")  # exactly what is spent
    with pytest.raises(BudgetExhausted):
        ledger.charge(_request("0.1"))


def test_buyers_round_trip(ledger: Ledger) -> None:
    assert ledger.buyer("lab") is None and ledger.buyers() == []
    ledger.upsert_buyer("lab", "research", actor="steward")
    ledger.upsert_buyer("acme", None, actor="steward")
    lab = ledger.buyer("lab")
    assert lab is not None and (lab.name, lab.purpose, lab.revoked) == ("lab", "research", False) and lab.created_at
    assert [b.name for b in ledger.buyers()] == ["acme", "lab"]
    ledger.upsert_buyer("lab", "marketing", actor="steward")
    assert ledger.buyer("lab").purpose == "marketing"  # type: ignore[union-attr]
    ledger.revoke_buyer("lab", actor="steward")
    assert ledger.buyer("lab").revoked  # type: ignore[union-attr]
    ledger.upsert_buyer("lab", "research", actor="steward")
    assert not ledger.buyer("lab").revoked  # type: ignore[union-attr]


def test_keys_round_trip_and_revoking_a_buyer_revokes_its_keys(ledger: Ledger) -> None:
    ledger.upsert_buyer("lab", None, actor="cli")
    ledger.add_key("h1", "lab", "buyer", actor="cli")
    ledger.add_key("h2", "lab", "buyer", actor="cli")
    ledger.add_key("h3", "alice", "steward", actor="cli")
    assert ledger.key("h1") is not None and (ledger.key("h1").name, ledger.key("h1").role) == ("lab", "buyer")  # type: ignore[union-attr]
    assert ledger.key("h3").role == "steward"  # type: ignore[union-attr]
    assert ledger.key("nope") is None
    with pytest.raises(LedgerError):
        ledger.add_key("h1", "lab", "buyer", actor="cli")  # a hash is stored once
    ledger.revoke_buyer("lab", actor="steward")
    assert ledger.key("h1") is None and ledger.key("h2") is None
    assert ledger.key("h3") is not None
    ledger.upsert_buyer("lab", None, actor="steward")
    assert ledger.key("h1") is None  # re-admitting a buyer does not revive its old keys


def test_the_audit_log_records_every_governance_change(ledger: Ledger) -> None:
    ledger.upsert_buyer("lab", "research", actor="steward")
    ledger.add_key("h1", "lab", "buyer", actor="cli")
    ledger.set_quota("pool", "lab", Quota(Decimal("1.5")), actor="steward")
    ledger.set_quota("pool", "lab", UNLIMITED, actor="steward")
    ledger.set_budget("pool", Cost(Decimal("8"), Decimal("1e-6")), actor="steward")
    ledger.revoke_buyer("lab", actor="steward")
    entries = ledger.audit()
    assert [(e.actor, e.action) for e in entries] == [
        ("steward", "upsert_buyer"),
        ("cli", "create_key"),
        ("steward", "set_quota"),
        ("steward", "set_quota"),
        ("steward", "set_budget"),
        ("steward", "revoke_buyer"),
    ]
    assert entries[2].detail == "pool/lab: epsilon 1.5" and entries[3].detail == "pool/lab: epsilon unlimited"
    assert entries[4].detail == "pool: epsilon 8, delta 0.000001"
    assert all(e.at for e in entries)
    ledger.charge(_request("0.5"))
    assert len(ledger.audit()) == 6  # charges are in the release log, not the audit log


def test_releases_filter_by_dataset_and_buyer(ledger: Ledger) -> None:
    a = ledger.charge(_request("0.1", dataset="a", buyer="lab"))
    b = ledger.charge(_request("0.1", dataset="b", buyer="lab"))
    c = ledger.charge(_request("0.1", dataset="a", buyer="acme"))
    d = ledger.charge(_request("0.1", dataset="a"))
    ids = {r.query_id for r in ledger.releases()}
    assert ids == {x.query_id for x in (a, b, c, d)}  # type: ignore[union-attr]
    assert {r.query_id for r in ledger.releases("a")} == {a.query_id, c.query_id, d.query_id}  # type: ignore[union-attr]
    assert {r.query_id for r in ledger.releases(buyer="lab")} == {a.query_id, b.query_id}  # type: ignore[union-attr]
    assert [r.query_id for r in ledger.releases("a", "acme")] == [c.query_id]  # type: ignore[union-attr]


# --- failing closed -------------------------------------------------------------------------------


def test_a_closed_ledger_fails_closed(ledger_url: str) -> None:
    ledger = open_ledger(ledger_url)
    ledger.charge(_request("0.5"))
    ledger.close()
    with pytest.raises(LedgerError):
        ledger.charge(_request("0.5"))
    with pytest.raises(LedgerError):
        ledger.spent("pool")
    reopened = open_ledger(ledger_url)
    try:
        assert reopened.spent("pool").dataset.epsilon == Decimal("0.5")
    finally:
        reopened.close()


def test_an_unreachable_postgresql_server_fails_closed() -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(LedgerError, match="cannot connect to the PostgreSQL ledger"):
        open_ledger(f"postgresql://postgres@127.0.0.1:{port}/postgres?connect_timeout=5")


def test_an_unopenable_sqlite_file_fails_closed(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(LedgerError, match="cannot open the ledger"):
        open_ledger(f"sqlite:///{tmp_path / 'file' / 'ledger.db'}")


def test_a_lost_postgresql_connection_fails_closed(postgres_ledger_url: str) -> None:
    import psycopg

    ledger = open_ledger(postgres_ledger_url)
    try:
        ledger.charge(_request("0.5"))
        backend = ledger.database._connection.info.backend_pid  # type: ignore[attr-defined]
        with psycopg.connect(postgres_ledger_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (backend,))
        with pytest.raises(LedgerError):
            ledger.charge(_request("0.5"))
    finally:
        ledger.close()
    check = open_ledger(postgres_ledger_url)
    try:
        assert check.spent("pool").dataset.epsilon == Decimal("0.5")
        assert len(check.releases()) == 1
    finally:
        check.close()


def test_a_postgresql_ledger_recovers_once_the_server_is_back(postgres_ledger_url: str) -> None:
    """A server restart (or an idle connection dropped by a proxy) should cost one failed request, not all later ones.

    ``PostgresDatabase`` opens one connection in ``__init__`` and keeps it
    forever, so after the connection is lost every transaction raises
    LedgerError (503 from every API worker) until the process is restarted.
    """
    import psycopg

    ledger = open_ledger(postgres_ledger_url)
    try:
        backend = ledger.database._connection.info.backend_pid  # type: ignore[attr-defined]
        with psycopg.connect(postgres_ledger_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (backend,))
        try:
            ledger.charge(_request("0.5"))
        except LedgerError:
            pass  # failing closed once, on the request that found the connection gone, is fine
        ledger.charge(_request("0.5"))  # the server is up: this one should be charged
        assert ledger.spent("pool").dataset.epsilon >= Decimal("0.5")
    finally:
        ledger.close()


# --- issue 11: exact accounting, δ governance, keys, in-flight reuse -------------------------------


def test_ten_thousand_tiny_charges_land_exactly(ledger: Ledger) -> None:
    """At 28 digits, 5 + 4e-28 rounded back to 5: a spent budget answered tiny charges for free (issue 11, 7)."""
    budget = Cost(Decimal("5.000000000000000000000004"), Decimal("1e-6"))
    ledger.charge(_request("5.0", buyer="lab", budget=budget))
    for _ in range(10_000):
        ledger.charge(_request("4e-28", delta="1e-300", buyer="lab", budget=budget))
    spent = ledger.spent("pool", "lab")
    assert spent.dataset == spent.buyer == _release_total(ledger)
    assert spent.dataset == Cost(Decimal("5.000000000000000000000004"), Decimal("1e-296"))
    with pytest.raises(BudgetExhausted):  # the budget is spent to its last digit
        ledger.charge(_request("4e-28", buyer="lab", budget=budget))
    assert len(ledger.releases()) == 10_001


def test_a_spent_budget_refuses_a_charge_below_the_default_precision(ledger: Ledger) -> None:
    ledger.charge(_request("5.0"))
    for _ in range(3):
        with pytest.raises(BudgetExhausted):
            ledger.charge(_request("4e-28"))
    assert ledger.spent("pool").dataset.epsilon == Decimal("5.0") and len(ledger.releases()) == 1


def test_a_delta_quota_caps_a_buyer_and_leaves_delta_to_the_others(ledger: Ledger) -> None:
    quota = Quota(delta=Decimal("2e-7"))
    ledger.charge(_request("0.1", delta="1e-7", buyer="greedy", quota_of=quota))
    ledger.charge(_request("0.1", delta="1e-7", buyer="greedy", quota_of=quota))
    with pytest.raises(QuotaExhausted, match="delta 0 of its quota"):
        ledger.charge(_request("0.1", delta="1e-10", buyer="greedy", quota_of=quota))
    ledger.charge(_request("0.1", buyer="greedy", quota_of=quota))  # pure ε still fits its ε (unlimited)
    ledger.charge(_request("0.1", delta="1e-7", buyer="patient", quota_of=quota))  # another buyer: its own quota
    assert ledger.spent("pool", "greedy").buyer == Cost(Decimal("0.3"), Decimal("2e-7"))
    assert ledger.spent("pool").dataset == Cost(Decimal("0.4"), Decimal("3e-7"))


def test_a_stored_delta_quota_overrides_the_policy_and_is_audited(ledger: Ledger) -> None:
    ledger.set_quota("pool", "lab", Quota(Decimal("2"), Decimal("1e-7")), actor="steward")
    assert ledger.quota("pool", "lab", Quota(delta=Decimal("5e-7"))) == Quota(Decimal("2"), Decimal("1e-7"))
    with pytest.raises(QuotaExhausted):
        ledger.charge(_request("0.1", delta="2e-7", buyer="lab", quota_of=Quota(delta=Decimal("5e-7"))))
    assert ledger.audit()[-1].detail == "pool/lab: epsilon 2, delta 1E-7"


def test_keys_are_listed_without_secrets_and_revoked_by_id(ledger: Ledger) -> None:
    first = ledger.add_key("hash-steward-1", "root", "steward", actor="cli")
    buyer = ledger.add_key("hash-buyer", "lab", "buyer", actor="root")
    assert first.id.startswith("k_") and first.id != buyer.id and "hash" not in first.id
    listed = ledger.keys()
    assert [(k.id, k.name, k.role, k.revoked, k.last_used_at) for k in listed] == [
        (first.id, "root", "steward", False, None),
        (buyer.id, "lab", "buyer", False, None),
    ]
    assert not any("hash" in str(value) for key in listed for value in key.__dict__.values())
    with pytest.raises(Conflict, match="last live steward key"):
        ledger.revoke_key(first.id, actor="root")
    second = ledger.add_key("hash-steward-2", "second", "steward", actor="root")
    assert ledger.revoke_key(first.id, actor="second").revoked
    assert ledger.key("hash-steward-1") is None and ledger.key("hash-steward-2") == second
    with pytest.raises(Conflict):
        ledger.revoke_key(second.id, actor="second")
    assert ledger.revoke_key(buyer.id, actor="second").revoked and ledger.key("hash-buyer") is None
    with pytest.raises(NotFound):
        ledger.revoke_key("k_missing", actor="second")
    assert [e.action for e in ledger.audit()].count("revoke_key") == 2


def test_a_name_is_a_buyers_or_a_stewards_never_both(ledger: Ledger) -> None:
    ledger.add_key("hash-steward", "root", "steward", actor="cli")
    ledger.add_key("hash-buyer", "lab", "buyer", actor="root")
    with pytest.raises(Conflict):
        ledger.add_key("hash-2", "root", "buyer", actor="root")
    with pytest.raises(Conflict):
        ledger.upsert_buyer("root", None, actor="root")
    with pytest.raises(Conflict):
        ledger.add_key("hash-3", "lab", "steward", actor="root")
    ledger.upsert_buyer("other", None, actor="root")
    with pytest.raises(Conflict):  # a registered buyer without a key yet
        ledger.add_key("hash-4", "other", "steward", actor="root")
    assert len(ledger.keys()) == 2


def test_key_use_is_recorded_at_most_once_a_minute(ledger: Ledger) -> None:
    key = ledger.add_key("hash", "root", "steward", actor="cli")
    ledger.key_used(key.id)
    (first,) = ledger.keys()
    assert first.last_used_at is not None and first.last_used_at >= first.created_at
    writes = len(ledger.audit())
    ledger.key_used(key.id)
    assert ledger.keys() == [first] and len(ledger.audit()) == writes


def test_an_older_ledger_gains_the_new_columns(ledger_url: str) -> None:
    """A ledger made before key ids, δ quotas and failed releases opens, and its keys get ids."""
    from engine.ledger_db import open_database

    database = open_database(ledger_url)
    with database.transaction() as tx:
        tx.execute(
            "CREATE TABLE api_keys (key_hash TEXT PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL, "
            "created_at TEXT NOT NULL, revoked_at TEXT)"
        )
        tx.execute(
            "CREATE TABLE quotas (dataset TEXT NOT NULL, buyer TEXT NOT NULL, epsilon TEXT, "
            "PRIMARY KEY (dataset, buyer))"
        )
        tx.execute("INSERT INTO api_keys VALUES ('h', 'root', 'steward', '2024-01-01T00:00:00+00:00', NULL)")
        tx.execute("INSERT INTO quotas VALUES ('pool', 'lab', '1.5')")
    ledger = Ledger(database)
    try:
        (key,) = ledger.keys()
        assert key.id.startswith("k_") and ledger.key("h") == key
        assert ledger.quota("pool", "lab", UNLIMITED) == Quota(Decimal("1.5"))
    finally:
        ledger.close()


def test_identical_queries_in_flight_are_charged_once(ledger_url: str) -> None:
    """Threads, each with its own connection (as worker processes have): one charge, one release for all."""
    open_ledger(ledger_url).close()
    ledgers = [open_ledger(ledger_url) for _ in range(6)]
    start = threading.Barrier(len(ledgers))
    outcomes: list[ChargeReceipt | StoredRelease] = []

    def ask(ledger: Ledger) -> None:
        start.wait(timeout=30)
        outcomes.append(ledger.charge(_request("0.5", buyer="lab", reuse_key="same")))

    threads = [threading.Thread(target=ask, args=(ledger,)) for ledger in ledgers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    try:
        (receipt,) = [o for o in outcomes if isinstance(o, ChargeReceipt)]
        assert [o for o in outcomes if isinstance(o, StoredRelease)] == [StoredRelease(receipt.query_id, None)] * 5
        waiter = threading.Timer(0.3, ledgers[0].record_result, (receipt.query_id, '{"rows": [[1]]}'))
        waiter.start()
        assert ledgers[1].wait_for_result(receipt.query_id, timeout_s=30) == '{"rows": [[1]]}'
        waiter.join()
        assert ledgers[2].spent("pool", "lab").buyer.epsilon == Decimal("0.5") and len(ledgers[2].releases()) == 1
    finally:
        for ledger in ledgers:
            ledger.close()


def test_a_failed_query_releases_its_waiters_uncharged_and_is_never_reused(ledger: Ledger) -> None:
    receipt = ledger.charge(_request("0.5", buyer="lab", reuse_key="same"))
    assert isinstance(receipt, ChargeReceipt)
    failing = threading.Timer(0.3, ledger.record_failure, (receipt.query_id,))
    failing.start()
    with pytest.raises(Conflict, match="failed after its charge; nothing was charged"):
        ledger.wait_for_result(receipt.query_id, timeout_s=30)
    failing.join()
    assert ledger.spent("pool").dataset.epsilon == Decimal("0.5")  # its charge stands, the waiter paid nothing
    again = ledger.charge(_request("0.5", buyer="lab", reuse_key="same"))  # asked again: a new release
    assert isinstance(again, ChargeReceipt) and again.query_id != receipt.query_id
    with pytest.raises(Conflict, match="still being answered"):
        ledger.wait_for_result(again.query_id, timeout_s=0.2)


def test_an_abandoned_pending_release_is_not_waited_for(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import timedelta

    import engine.ledger

    abandoned = ledger.charge(_request("0.5", buyer="lab", reuse_key="same"))
    monkeypatch.setattr(engine.ledger, "PENDING_STALE_AFTER", timedelta(0))
    fresh = ledger.charge(_request("0.5", buyer="lab", reuse_key="same"))
    assert isinstance(abandoned, ChargeReceipt) and isinstance(fresh, ChargeReceipt)
