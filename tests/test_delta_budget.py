"""δ is a budget like ε: asked within the dataset's, required under zCDP, charged, and subtracted from what is left."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest

from engine import Engine
from engine.errors import BudgetExhausted, PolicyViolation

SQL = "SELECT COUNT(*) FROM shifts"


@pytest.fixture
def zcdp(dataset: Callable[..., Path], tmp_path: Path) -> Engine:
    return Engine.from_policies(dataset(accounting="zcdp", delta=1e-6), ledger=f"sqlite:///{tmp_path / 'ledger.db'}")


def test_zcdp_needs_a_delta_within_the_datasets(zcdp: Engine) -> None:
    with pytest.raises(PolicyViolation, match="delta > 0"):
        zcdp.query("shifts", SQL, epsilon=0.5)
    with pytest.raises(PolicyViolation, match="above this dataset's max_delta_per_query"):
        zcdp.query("shifts", SQL, epsilon=0.5, delta=2e-6)
    assert zcdp.ledger.spent("shifts").dataset.delta == 0


def test_the_delta_budget_binds_and_shrinks(zcdp: Engine) -> None:
    result = zcdp.query("shifts", SQL, epsilon=0.5, delta=6e-7)
    assert result.remaining.delta == Decimal("1e-6") - Decimal("6e-7")
    with pytest.raises(BudgetExhausted):
        zcdp.query("shifts", "SELECT COUNT(*) FROM shifts WHERE hours > 1", epsilon=0.5, delta=6e-7)
