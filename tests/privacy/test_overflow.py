"""Overflow is impossible by construction (invariant 3): contribution bounds × value bounds fit 64-bit sums.

A member may add ``max_rows_per_group`` rows' worth to each of the groups it
touches; with huge contribution bounds one member's part of a sum would pass
the signed 64-bit range, the noise would be calibrated to a sensitivity no
integer sum can hold, and the backend would wrap or fail after the charge.
So such a query is refused while planning, and only such a query: here the
largest amount one member can add to a part is computed from the policy alone
(groups × rows × the largest absolute value) and compared with the engine's
limit, and an over-the-limit query costs nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from engine import Engine
from engine.errors import PolicyViolation
from engine.planner import plan_query
from engine.policy import load_policy
from engine.sensitivity import SUM_LIMIT
from engine.sql import parse
from tests.conftest import small_pool, write_dataset

PUBLIC_REGIONS = 4
GROUPINGS = {"": 1, "region": PUBLIC_REGIONS, "city": None}
"""GROUP BY clauses and their public key counts (None: private keys, so max_groups binds)."""
HUGE = st.one_of(st.integers(1, 2**12), st.integers(2**30, 2**62), st.sampled_from([2**34, 2**56, 2**62]))


def _privacy(max_groups: int, max_rows_per_group: int) -> str:
    return f'unit = "member_id"\nmax_groups = {max_groups}\nmax_rows_per_group = {max_rows_per_group}'


def _largest_addition(aggregate: str, group_by: str, max_groups: int, rows: int, low: int, high: int) -> int:
    """The most one member can add to one part of the query, from the policy alone."""
    public = GROUPINGS[group_by]
    groups = max_groups if public is None else min(max_groups, public)
    per_row = max(abs(low), abs(high)) if aggregate.startswith("SUM") else 1
    return groups * rows * per_row


def test_the_limit_leaves_room_in_a_signed_64_bit_sum() -> None:
    assert SUM_LIMIT < 2**63 - 1


@settings(max_examples=60, deadline=None)
@example(max_groups=1, rows=2**56, low=18, high=80, aggregate="SUM(score)", group_by="")
@example(max_groups=1, rows=2**62, low=0, high=1, aggregate="SUM(score)", group_by="")  # at the limit: answered
@example(max_groups=2**30, rows=2**33, low=0, high=1, aggregate="SUM(score)", group_by="city")
@example(max_groups=2**40, rows=2**30, low=0, high=1, aggregate="COUNT(*)", group_by="city")
@given(
    max_groups=HUGE,
    rows=HUGE,
    # Within the fixed-point range (±2^28 for an int column), also after the swap below: wider bounds are
    # refused for another reason (too wide for exact integer sums), whatever the contribution bounds.
    low=st.integers(-(2**28) + 1, 2**28 - 1),
    high=st.integers(-(2**28) + 1, 2**28 - 1),
    aggregate=st.sampled_from(["SUM(score)", "COUNT(*)", "COUNT(score)"]),
    group_by=st.sampled_from(sorted(GROUPINGS)),
)
def test_a_query_is_refused_while_planning_exactly_when_one_member_could_pass_the_limit(
    tmp_path_factory: pytest.TempPathFactory,
    max_groups: int,
    rows: int,
    low: int,
    high: int,
    aggregate: str,
    group_by: str,
) -> None:
    if low >= high:
        low, high = high - 1, low + 1
    column = f'\n[columns.score]\ntype = "int"\nbounds = [{low}, {high}]\n'
    policies = write_dataset(
        tmp_path_factory.mktemp("overflow"), small_pool(rows=4), privacy=_privacy(max_groups, rows), extra=column
    )
    keys = f"{group_by}, " if group_by else ""
    sql = f"SELECT {keys}{aggregate} FROM shifts" + (f" GROUP BY {group_by}" if group_by else "")
    overflows = _largest_addition(aggregate, group_by, max_groups, rows, low, high) > SUM_LIMIT
    policy = load_policy(policies / "shifts.toml")
    if overflows:
        with pytest.raises(PolicyViolation, match="overflow 64-bit sums"):
            plan_query(parse(sql), policy)
    else:
        plan_query(parse(sql), policy)


@pytest.mark.parametrize("dry_run", [False, True])
def test_a_query_that_could_overflow_is_refused_before_the_charge(tmp_path: Path, dry_run: bool) -> None:
    policies = write_dataset(tmp_path, small_pool(rows=40), privacy=_privacy(1, 2**60))
    engine = Engine.from_policies(policies, ledger=f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        with pytest.raises(PolicyViolation, match="overflow 64-bit sums"):
            engine.query("shifts", "SELECT SUM(age) FROM shifts", epsilon=1.0, dry_run=dry_run)
        assert engine.ledger.spent("shifts").dataset.epsilon == 0
        assert engine.ledger.releases("shifts") == []
        # A count under the same policy stays within the limit (2^60 rows' worth) and is answered.
        answered = engine.query("shifts", "SELECT COUNT(*) FROM shifts", epsilon=1.0, dry_run=dry_run)
        assert answered.cost.epsilon == 1
    finally:
        engine.close()
