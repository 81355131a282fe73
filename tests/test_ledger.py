"""The ledger: exact amounts, atomic charges across processes, durability, failing closed."""

from __future__ import annotations

import multiprocessing
import sqlite3
import tempfile
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.accounting import Cost, exact
from engine.errors import BudgetExhausted, LedgerError, QuotaExhausted
from engine.ledger import UNLIMITED, ChargeRequest, Ledger, Quota, open_ledger
from engine.ledger_db import SQLiteDatabase

BUDGET = Cost(Decimal("5.0"), Decimal("1e-6"))


def _request(epsilon: str = "0.5", buyer: str | None = None, quota: str | None = None) -> ChargeRequest:
    return ChargeRequest(
        dataset="pool",
        buyer=buyer,
        sql="SELECT COUNT(*) FROM pool",
        cost=Cost(Decimal(epsilon), Decimal(0)),
        budget=BUDGET,
        quota=Quota(Decimal(quota)) if quota else UNLIMITED,
    )


def _sqlite(path: Path) -> Ledger:
    return Ledger(SQLiteDatabase(path))


def _charge_many(path: str, attempts: int) -> int:
    ledger = _sqlite(Path(path))
    granted = 0
    for _ in range(attempts):
        try:
            ledger.charge(_request("0.1"))
            granted += 1
        except BudgetExhausted:
            pass
    ledger.close()
    return granted


def test_thousands_of_small_charges_add_up_exactly(tmp_path: Path) -> None:
    ledger = _sqlite(tmp_path / "ledger.db")
    budget = Cost(Decimal("1000"), Decimal(0))
    for _ in range(2000):
        ledger.charge(ChargeRequest("pool", None, "q", Cost(Decimal("0.1"), Decimal(0)), budget, UNLIMITED))
    assert ledger.spent("pool").dataset.epsilon == Decimal("200.0")


def test_concurrent_processes_never_overspend(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger.db")
    _sqlite(Path(path)).close()
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        granted = pool.starmap(_charge_many, [(path, 30)] * 4)
    assert sum(granted) == 50  # 5.0 / 0.1
    ledger = _sqlite(Path(path))
    assert ledger.spent("pool").dataset.epsilon == Decimal("5.0")
    assert len(ledger.releases()) == 50


def test_a_refused_charge_changes_nothing(tmp_path: Path) -> None:
    ledger = _sqlite(tmp_path / "ledger.db")
    ledger.charge(_request("4.5"))
    with pytest.raises(BudgetExhausted, match="0.5 and delta"):
        ledger.charge(_request("0.75"))
    assert ledger.spent("pool").dataset.epsilon == Decimal("4.5")
    assert len(ledger.releases()) == 1


def test_quota_is_charged_per_buyer(tmp_path: Path) -> None:
    ledger = _sqlite(tmp_path / "ledger.db")
    ledger.charge(_request("1.0", buyer="lab", quota="1.5"))
    with pytest.raises(QuotaExhausted):
        ledger.charge(_request("1.0", buyer="lab", quota="1.5"))
    spent = ledger.spent("pool", "lab")
    assert spent.buyer.epsilon == Decimal("1.0") and spent.dataset.epsilon == Decimal("1.0")


def test_charges_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    ledger = _sqlite(path)
    receipt = ledger.charge(_request("0.5"))
    ledger.close()
    reopened = open_ledger(f"sqlite:///{path}")
    assert reopened.spent("pool").dataset.epsilon == Decimal("0.5")
    assert reopened.releases()[0].query_id == receipt.query_id


def test_wal_mode_and_full_synchronous_commits(tmp_path: Path) -> None:
    ledger = _sqlite(tmp_path / "ledger.db")
    connection = sqlite3.connect(tmp_path / "ledger.db")
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert ledger.database._connection.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_an_unwritable_ledger_fails_closed(tmp_path: Path) -> None:
    ledger = _sqlite(tmp_path / "ledger.db")
    ledger.database._connection.execute("PRAGMA query_only = ON")
    with pytest.raises(LedgerError):
        ledger.charge(_request())
    ledger.database._connection.execute("PRAGMA query_only = OFF")
    assert ledger.spent("pool").dataset.epsilon == 0


def test_unknown_ledger_urls_are_refused() -> None:
    with pytest.raises(LedgerError, match="unsupported ledger URL"):
        open_ledger("mysql://nope")


_AMOUNTS = st.one_of(
    st.floats(min_value=1e-300, max_value=1e-20),  # far below the 28 digits Decimal keeps by default
    st.floats(min_value=1e-6, max_value=2.0),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(budget=st.floats(min_value=0.5, max_value=3.0), charges=st.lists(st.tuples(_AMOUNTS, _AMOUNTS), max_size=12))
def test_any_charges_are_granted_exactly_while_they_fit_and_summed_exactly(
    budget: float, charges: list[tuple[float, float]]
) -> None:
    """Against an independent oracle (fractions): a charge is granted iff it fits exactly; the sum is exact."""
    limit = Cost(exact(budget), exact(budget))
    spent = Fraction(0), Fraction(0)
    with tempfile.TemporaryDirectory() as directory:
        ledger = _sqlite(Path(directory) / "ledger.db")
        try:
            for epsilon, delta in charges:
                cost = Cost(exact(epsilon), exact(delta))
                after = spent[0] + Fraction(cost.epsilon), spent[1] + Fraction(cost.delta)
                fits = after[0] <= Fraction(limit.epsilon) and after[1] <= Fraction(limit.delta)
                try:
                    ledger.charge(ChargeRequest("pool", "lab", "q", cost, limit, UNLIMITED))
                    granted = True
                except BudgetExhausted:
                    granted = False
                assert granted == fits
                spent = after if granted else spent
            stored = ledger.spent("pool", "lab")
            assert (Fraction(stored.dataset.epsilon), Fraction(stored.dataset.delta)) == spent
            assert stored.dataset == stored.buyer
        finally:
            ledger.close()
