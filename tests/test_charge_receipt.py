"""Noise is drawn only against the ledger's receipt for exactly the calibrated cost."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from engine.accounting import Cost, PrivacyRequest
from engine.errors import InternalError
from engine.ledger import ChargeReceipt
from engine.mechanisms import add_noise, calibrate
from engine.planner import plan_query
from engine.policy import load_policies
from engine.sql import parse
from tests.conftest import small_pool, write_dataset


def test_a_receipt_for_another_cost_draws_no_noise(tmp_path: Path) -> None:
    policy = load_policies(write_dataset(tmp_path, small_pool()))["shifts"]
    plan = plan_query(parse("SELECT COUNT(*) FROM shifts"), policy)
    noise = calibrate(plan, PrivacyRequest.validate(1.0, None, policy.budget))
    cheaper = ChargeReceipt("q_test", Cost(Decimal("0.5"), Decimal(0)))
    with pytest.raises(InternalError, match="different cost"):
        add_noise(noise, [[10]], cheaper)
    assert len(add_noise(noise, [[10]], ChargeReceipt("q_test", noise.cost))[0]) == 1
