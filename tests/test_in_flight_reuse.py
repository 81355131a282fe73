"""Identical queries in flight are charged once (issue 11): the others wait for, and get, the same release.

Each thread has its own engine and ledger connection, as separate worker processes do; the ledger is
the only thing they share. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from engine import Engine
from engine.backends.polars import PolarsBackend
from engine.errors import Conflict, InternalError
from engine.result import Result

QUERY = "SELECT region, COUNT(*) AS n FROM shifts GROUP BY region"
ASKERS = 4


@pytest.fixture
def engines(dataset: Callable[..., Path], ledger_url: str) -> Iterator[list[Engine]]:
    policies = dataset()
    opened = [Engine.from_policies(policies, ledger=ledger_url) for _ in range(ASKERS)]
    yield opened
    for engine in opened:
        engine.close()


def _slow_execute(monkeypatch: pytest.MonkeyPatch, then: Callable[..., Any]) -> None:
    """Make the backend slow (so every asker arrives while the first is being answered), then run ``then``."""

    def execute(self: PolarsBackend, *args: Any, **kwargs: Any) -> Any:
        time.sleep(0.5)
        return then(self, *args, **kwargs)

    monkeypatch.setattr(PolarsBackend, "execute", execute)


def _ask_together(engines: list[Engine]) -> list[Result | Exception]:
    start = threading.Barrier(len(engines))
    outcomes: list[Result | Exception] = []

    def ask(engine: Engine) -> None:
        start.wait(timeout=30)
        try:
            outcomes.append(engine.query("shifts", QUERY, epsilon=0.5, buyer="lab"))
        except Exception as error:  # noqa: BLE001 - the outcome is what is checked
            outcomes.append(error)

    threads = [threading.Thread(target=ask, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return outcomes


def test_identical_concurrent_queries_are_charged_once_and_share_the_release(
    engines: list[Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    _slow_execute(monkeypatch, PolarsBackend.execute)
    outcomes = _ask_together(engines)
    results = [outcome for outcome in outcomes if isinstance(outcome, Result)]
    assert len(results) == ASKERS, outcomes
    (charged,) = [result for result in results if not result.cached]
    for result in results:
        assert (result.query_id, result.columns, result.rows) == (charged.query_id, charged.columns, charged.rows)
    assert sum(result.cached for result in results) == ASKERS - 1
    assert all(result.cost.epsilon == 0 for result in results if result.cached)
    assert engines[0].ledger.spent("shifts", "lab").buyer.epsilon == Decimal("0.5")
    assert len(engines[0].ledger.releases()) == 1


def test_when_the_charged_query_fails_its_waiters_get_a_clean_error_and_no_charge(
    engines: list[Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*_: Any, **__: Any) -> Any:
        raise RuntimeError("the backend broke")

    _slow_execute(monkeypatch, fail)
    outcomes = _ask_together(engines)
    assert sum(isinstance(outcome, InternalError) for outcome in outcomes) == 1  # the one that was charged
    waiters = [outcome for outcome in outcomes if isinstance(outcome, Conflict)]
    assert len(waiters) == ASKERS - 1, outcomes
    assert all("nothing was charged to this request" in waiter.message for waiter in waiters)
    assert engines[0].ledger.spent("shifts", "lab").buyer.epsilon == Decimal("0.5")  # one charge, never fresh noise
    monkeypatch.undo()
    again = engines[1].query("shifts", QUERY, epsilon=0.5, buyer="lab")  # asked again: answered, charged once more
    assert not again.cached and engines[0].ledger.spent("shifts", "lab").buyer.epsilon == Decimal("1.0")
