"""GROUP BY columns without public keys: keys are released only past a DP threshold (needs δ)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import Engine
from engine.accounting import PrivacyRequest
from engine.backends.base import Backend
from engine.errors import PolicyViolation
from engine.mechanisms import calibrate
from engine.plan import PartKind
from engine.planner import plan_query
from engine.sql import parse
from tests.conftest import ROW_LEVEL
from tests.test_sensitivity import exact_parts, member_level, member_total, pools


def _pool(members_per_city: dict[str, int]) -> pl.DataFrame:
    rows = []
    member = 0
    for city, members in members_per_city.items():
        for _ in range(members):
            member += 1
            rows += [
                {"member_id": member, "region": "north", "city": city, "hours": 5.0, "age": 40, "member_flag": True}
            ] * 3
    return pl.DataFrame(rows)


def _engine(policies: Path) -> Engine:
    return Engine.from_policies(policies, ledger=f"sqlite:///{policies.parent / 'ledger.db'}")


@pytest.mark.parametrize("privacy", ["member", "row"])
def test_only_keys_far_above_the_threshold_are_released(dataset: Callable[..., Path], privacy: str) -> None:
    extra = {} if privacy == "member" else {"privacy": ROW_LEVEL}
    engine = _engine(dataset(_pool({"big": 400, "lonely": 1, "pair": 2}), epsilon=100.0, **extra))
    for repeat in range(10):
        sql = f"SELECT city, COUNT(*) AS n, AVG(hours) AS h FROM shifts WHERE age > {-repeat} GROUP BY city"
        result = engine.query("shifts", sql, epsilon=1.0, delta=1e-7)
        assert [row[0] for row in result.rows] == ["big"]
        assert result.private_keys == ["city"]
        assert result.to_dict()["private_keys"] == ["city"]
        assert result.cost.delta == Decimal("1e-7")
    assert engine.ledger.spent("shifts").dataset.delta == Decimal("0.000001")


def test_public_and_private_keys_mix(dataset: Callable[..., Path]) -> None:
    frame = _pool({"big": 300}).with_columns(
        pl.when(pl.col("member_id") % 2 == 0).then(pl.lit("south")).otherwise(pl.lit("north")).alias("region")
    )
    engine = _engine(dataset(frame, epsilon=100.0))
    result = engine.query(
        "shifts", "SELECT region, city, COUNT(*) FROM shifts GROUP BY region, city", epsilon=2.0, delta=1e-6
    )
    assert sorted((row[0], row[1]) for row in result.rows) == [("north", "big"), ("south", "big")]
    assert result.private_keys == ["city"]


def test_private_keys_need_a_delta_and_cost_nothing_when_refused(engine: Engine) -> None:
    with pytest.raises(PolicyViolation, match="threshold.*delta"):
        engine.query("shifts", "SELECT city, COUNT(*) FROM shifts GROUP BY city", epsilon=1.0)
    assert engine.ledger.spent("shifts").dataset.epsilon == 0


def test_zcdp_private_keys_charge_epsilon_and_delta(dataset: Callable[..., Path]) -> None:
    engine = _engine(dataset(_pool({"big": 400, "lonely": 1}), accounting="zcdp", epsilon=100.0))
    result = engine.query("shifts", "SELECT city, COUNT(*) FROM shifts GROUP BY city", epsilon=1.0, delta=1e-6)
    assert [row[0] for row in result.rows] == ["big"]
    assert engine.ledger.spent("shifts").dataset.delta == Decimal("0.000001")


@pytest.mark.parametrize("accounting", ["pure", "zcdp"])
def test_the_threshold_spends_no_more_delta_than_asked(dataset: Callable[..., Path], accounting: str) -> None:
    engine = _engine(dataset(accounting=accounting))
    policy = engine.policy("shifts")
    plan = plan_query(parse("SELECT city, SUM(hours), COUNT(*) FROM shifts GROUP BY city"), policy)
    assert plan.private_keys == ("city",) and plan.threshold_part is not None
    unit_count = plan.sensitivity(plan.parts[plan.threshold_part])
    assert (unit_count.groups, unit_count.per_group) == (1, 1)  # max_groups groups, one per member each
    noise = calibrate(plan, PrivacyRequest.validate(1.0, 1e-6, policy.budget))
    assert noise.threshold is not None
    allowed = 1e-6 if accounting == "pure" else 0.5e-6
    assert 0 < noise.threshold.delta <= allowed
    assert noise.threshold.value > 1


def test_numeric_columns_without_keys_are_still_refused(engine: Engine) -> None:
    with pytest.raises(PolicyViolation, match="binning"):
        engine.query("shifts", "SELECT age, COUNT(*) FROM shifts GROUP BY age", epsilon=1.0, delta=1e-6)


PRIVATE_PRIVACY = [member_level(g, r) for g in (1, 2) for r in (1, 3)] + [member_total(n) for n in (1, 3, 10)]
"""Per-group and total-mode policies."""


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pool=pools, data=st.data(), privacy=st.sampled_from(PRIVATE_PRIVACY))
def test_one_member_moves_private_key_aggregates_within_the_claims(
    pool: list[dict], data: st.DataObject, privacy: str
) -> None:
    sql = "SELECT city, region, COUNT(*), SUM(hours), AVG(age) FROM shifts GROUP BY city, region"
    member = data.draw(st.sampled_from(sorted({row["member_id"] for row in pool})))
    smaller = [row for row in pool if row["member_id"] != member]
    assert_private_key_neighbours(privacy, sql, pool, smaller)


def assert_private_key_neighbours(
    privacy: str, sql: str, larger: list[dict], smaller: list[dict], backend: Backend | None = None
) -> None:
    """Neighbours differ by one member: keys only one side has count that member alone (≤ 1 unit).

    Every part moves within its claimed L1, L2 and L∞ over the keys either side has, and at most
    the claimed L0 keys change (a key only one side has counts as changed).
    """
    with tempfile.TemporaryDirectory() as directory:
        plan, larger_parts = exact_parts(Path(directory) / "with", larger, privacy, sql, backend)
        _, smaller_parts = exact_parts(Path(directory) / "without", smaller, privacy, sql, backend)
    assert plan.threshold_part is not None
    units = plan.threshold_part
    for key in set(larger_parts) - set(smaller_parts):
        assert larger_parts[key][units] <= 1, "a key only the added member has must count one unit"
    assert set(smaller_parts) <= set(larger_parts)
    empty = [np.array([]) if part.kind is PartKind.QUANTILE else 0 for part in plan.parts]
    changed = set()
    for index, part in enumerate(plan.parts):
        claimed = plan.sensitivity(part)
        if part.kind is PartKind.QUANTILE:
            moved = [
                len(larger_parts[key][index]) - len(smaller_parts.get(key, empty)[index]) for key in larger_parts
            ]  # adding a member only adds values: the multiset distance is the difference in size
            diffs = moved
        else:
            diffs = [abs(larger_parts[key][index] - smaller_parts.get(key, empty)[index]) for key in larger_parts]
        changed |= {key for key, diff in zip(larger_parts, diffs, strict=True) if diff}
        assert sum(diffs) <= claimed.l1, (part.label, privacy)
        assert sum(diff * diff for diff in diffs) <= claimed.l2**2, (part.label, privacy)
        assert max(diffs, default=0) <= claimed.per_group, (part.label, privacy)
    changed |= set(larger_parts) - set(smaller_parts)
    assert len(changed) <= plan.sensitivity(plan.parts[units]).groups
