"""Release reuse keys on the whole cost: the same query at the same ε but another δ is a new release, charged.

Under zCDP, and under pure DP with private keys (whose threshold spends δ),
δ changes the noise or the threshold, so a stored release of another δ is not
this query's answer, and handing it out for free would let a buyer pick
whichever δ it likes at no cost. Where δ is spent, a repeat at the same
(ε, δ) is reused, one at another δ is charged in full, and the stored release
of each δ stays reachable; where it is not (pure DP, public keys), the cost is
the same whatever δ is asked, and so is the release.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest

from engine import Engine
from engine.accounting import Cost

CASES = [
    pytest.param("zcdp", "SELECT region, COUNT(*) FROM shifts GROUP BY region", True, id="zcdp"),
    pytest.param("pure", "SELECT city, COUNT(*) FROM shifts GROUP BY city", True, id="pure-private-keys"),
    pytest.param("pure", "SELECT region, COUNT(*) FROM shifts GROUP BY region", False, id="pure-public-keys"),
]


@pytest.mark.parametrize(("accounting", "sql", "spends_delta"), CASES)
def test_the_same_query_and_epsilon_under_another_delta_is_reused_only_where_delta_is_not_spent(
    dataset: Callable[..., Path], accounting: str, sql: str, spends_delta: bool
) -> None:
    policies = dataset(accounting=accounting, delta=1e-5)
    engine = Engine.from_policies(policies, ledger=f"sqlite:///{policies.parent / 'ledger.db'}")
    try:
        first = engine.query("shifts", sql, epsilon=0.5, delta=1e-6)
        other = engine.query("shifts", sql, epsilon=0.5, delta=2e-6)
        again = engine.query("shifts", sql, epsilon=0.5, delta=1e-6)
        spent = engine.ledger.spent("shifts").dataset
    finally:
        engine.close()
    assert not first.cached and again.cached and again.query_id == first.query_id and again.rows == first.rows
    if spends_delta:
        assert not other.cached and other.query_id != first.query_id
        assert other.cost == Cost(Decimal("0.5"), Decimal("2e-6"))
        assert spent.epsilon == Decimal("1.0") and spent.delta == Decimal("3e-6")
    else:
        assert other.cached and other.query_id == first.query_id
        assert spent.epsilon == Decimal("0.5") and spent.delta == 0
