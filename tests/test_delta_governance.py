"""δ is governed like ε (issue 11, item 8): a per-query cap and per-buyer quotas, refused before any charge.

Before, quotas covered ε only and one query could take the dataset's whole δ, so one buyer with a
tiny ε quota could spend every other buyer's δ and lock them out of zCDP and private keys.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from engine import Engine
from engine.errors import PolicyError, PolicyViolation, QuotaExhausted

QUERY = "SELECT COUNT(*) AS n FROM shifts"


def _budget_line(policies: Path, line: str) -> None:
    policy = policies / "shifts.toml"
    policy.write_text(policy.read_text().replace("[budget]\n", f"[budget]\n{line}\n", 1))


@pytest.fixture
def zcdp(dataset: Callable[..., Path], tmp_path: Path) -> Iterator[Callable[..., Engine]]:
    """``zcdp(budget_line=None, extra="")``: an engine over a zCDP pool with δ = 1e-6 (every query spends δ)."""
    opened: list[Engine] = []

    def make(budget_line: str | None = None, extra: str = "") -> Engine:
        policies = dataset(accounting="zcdp", delta=1e-6, epsilon=10.0, whole_delta_per_query=False, extra=extra)
        if budget_line:
            _budget_line(policies, budget_line)
        engine = Engine.from_policies(policies, ledger=f"sqlite:///{tmp_path / 'ledger.db'}")
        opened.append(engine)
        return engine

    yield make
    for engine in opened:
        engine.close()


def _untouched(engine: Engine) -> bool:
    return engine.ledger.spent("shifts").dataset.delta == 0 and engine.ledger.releases() == []


def test_one_query_may_take_a_tenth_of_the_dataset_delta_by_default(zcdp: Callable[..., Engine]) -> None:
    engine = zcdp()
    for delta in (1e-6, 2e-7, 1.0000001e-7):
        with pytest.raises(PolicyViolation, match=r"max_delta_per_query \(1E-7\)"):
            engine.query("shifts", QUERY, epsilon=0.5, delta=delta)
        with pytest.raises(PolicyViolation):
            engine.query("shifts", QUERY, epsilon=0.5, delta=delta, dry_run=True)
    assert _untouched(engine)
    answered = engine.query("shifts", QUERY, epsilon=0.5, delta=1e-7)
    assert answered.cost.delta == Decimal("1e-7")


def test_a_declared_max_delta_per_query_holds(zcdp: Callable[..., Engine]) -> None:
    engine = zcdp("max_delta_per_query = 5e-7")
    engine.query("shifts", QUERY, epsilon=0.5, delta=5e-7)
    with pytest.raises(PolicyViolation, match="max_delta_per_query"):
        engine.query("shifts", QUERY, epsilon=0.5, delta=6e-7)
    assert engine.ledger.spent("shifts").dataset.delta == Decimal("5e-7")


def test_max_delta_per_query_above_the_dataset_delta_is_an_invalid_policy(zcdp: Callable[..., Engine]) -> None:
    with pytest.raises(PolicyError, match="max_delta_per_query"):
        zcdp("max_delta_per_query = 2e-6")


def test_a_policy_delta_quota_caps_one_buyer_and_leaves_delta_to_the_others(zcdp: Callable[..., Engine]) -> None:
    engine = zcdp(extra="[buyers.greedy]\ndelta = 2e-7\n\n[buyers.patient]\n")
    policy = engine.policy("shifts")
    assert engine.remaining(policy, engine.caller(policy, "greedy")).delta == Decimal("2e-7")
    engine.query("shifts", QUERY, epsilon=0.1, delta=1e-7, buyer="greedy")
    engine.query("shifts", "SELECT COUNT(*) AS m FROM shifts", epsilon=0.1, delta=1e-7, buyer="greedy")
    assert engine.remaining(policy, engine.caller(policy, "greedy")).delta == 0
    before = engine.ledger.spent("shifts")
    with pytest.raises(QuotaExhausted, match="delta 0 of its quota"):
        engine.query("shifts", "SELECT COUNT(*) AS k FROM shifts", epsilon=0.1, delta=1e-9, buyer="greedy")
    assert engine.ledger.spent("shifts") == before  # refused before the charge
    answered = engine.query("shifts", QUERY, epsilon=0.1, delta=1e-7, buyer="patient")
    assert answered.remaining.delta == Decimal("1e-6") - Decimal("3e-7")


def test_a_buyer_with_a_tiny_epsilon_quota_cannot_spend_everyones_delta(zcdp: Callable[..., Engine]) -> None:
    """The finding itself: one query at the whole δ, by a buyer whose ε quota is tiny."""
    engine = zcdp(extra="[buyers.greedy]\nepsilon = 0.01\n\n[buyers.patient]\n")
    with pytest.raises(PolicyViolation):
        engine.query("shifts", QUERY, epsilon=0.01, delta=1e-6, buyer="greedy")
    engine.query("shifts", QUERY, epsilon=0.01, delta=1e-7, buyer="greedy")
    with pytest.raises(QuotaExhausted):  # its ε quota is spent: it cannot go on taking δ either
        engine.query("shifts", "SELECT COUNT(*) AS m FROM shifts", epsilon=0.01, delta=1e-7, buyer="greedy")
    assert engine.ledger.spent("shifts").dataset.delta == Decimal("1e-7")
    engine.query("shifts", QUERY, epsilon=0.5, delta=1e-7, buyer="patient")
