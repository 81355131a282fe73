"""Buyers' running totals in the ledger: every buyer's spend adds up, and its quota binds on the sum.

A model of the ledger (exact decimals) against the real one, for random
sequences of charges by several buyers on one dataset: a charge is granted iff
the dataset's total after it fits the budget and the buyer's total after it
fits the buyer's quota (budget first, then quota); afterwards each buyer's
stored total is exactly the sum of its granted charges, and the dataset's the
sum of all. A buyer charged twice must have both charges in its total, or its
quota stops binding after the first.
"""

from __future__ import annotations

import tempfile
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from engine.accounting import ZERO, Cost
from engine.errors import BudgetExhausted, QuotaExhausted
from engine.ledger import UNLIMITED, ChargeRequest, Quota, open_ledger

BUDGET = Cost(Decimal("4"), Decimal("1e-5"))
QUOTAS = {
    "lab": Quota(Decimal("1.5"), Decimal("4e-6")),
    "firm": Quota(Decimal("2"), None),
    "open": UNLIMITED,
}
charges = st.lists(
    st.tuples(
        st.sampled_from([*QUOTAS, None]),
        st.integers(1, 9).map(lambda tenths: Decimal(tenths) / 10),
        st.integers(0, 3).map(lambda millionths: Decimal(millionths) / 10**6),
    ),
    max_size=14,
)
"""(buyer, ε, δ) per charge; None is the operator (no buyer, no quota)."""


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example([("lab", Decimal("0.5"), Decimal(0))] * 4)
@example([("lab", Decimal("0.1"), Decimal("2e-6"))] * 3)
@given(charges=charges)
def test_each_buyer_s_total_is_the_sum_of_its_charges_and_its_quota_binds_on_it(
    charges: list[tuple[str | None, Decimal, Decimal]],
) -> None:
    total, by_buyer = ZERO, dict.fromkeys(QUOTAS, ZERO)
    with tempfile.TemporaryDirectory() as directory:
        ledger = open_ledger(f"sqlite:///{Path(directory) / 'ledger.db'}")
        try:
            for buyer, epsilon, delta in charges:
                cost = Cost(epsilon, delta)
                quota = QUOTAS[buyer] if buyer else UNLIMITED
                request = ChargeRequest("pool", buyer, "SELECT COUNT(*) FROM pool", cost, BUDGET, quota)
                after = by_buyer[buyer] + cost if buyer else cost
                if not (total + cost).within(BUDGET):
                    with pytest.raises(BudgetExhausted):
                        ledger.charge(request)
                elif (quota.epsilon is not None and after.epsilon > quota.epsilon) or (
                    quota.delta is not None and after.delta > quota.delta
                ):
                    with pytest.raises(QuotaExhausted):
                        ledger.charge(request)
                else:
                    ledger.charge(request)
                    total += cost
                    if buyer:
                        by_buyer[buyer] = after
            for buyer, spent in by_buyer.items():
                stored = ledger.spent("pool", buyer)
                assert stored.buyer == spent, f"{buyer}: stored {stored.buyer}, charged {spent}"
                assert stored.dataset == total
        finally:
            ledger.close()
