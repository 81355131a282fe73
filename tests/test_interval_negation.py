"""Unary minus inside aggregates: ``-x`` has bounds [-high, -low], at any depth and on either operand.

Each column appears once in an expression, so interval arithmetic is exact:
the planned bounds must hold every value of a grid of the operands' boxes and
be reached (up to the fixed point's outward rounding). ``tests/test_interval_bounds.py``
checks the binary operators; here any operand, and the whole, may be negated.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from engine.policy import Policy, load_policies
from tests.conftest import ROW_LEVEL, small_pool, write_dataset
from tests.test_interval_bounds import AGE, GRID, HOURS, planned_bounds

OPERATIONS = {"*": np.multiply, "/": np.divide, "+": np.add, "-": np.subtract}


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> Policy:
    return load_policies(write_dataset(tmp_path_factory.mktemp("negation"), small_pool(), privacy=ROW_LEVEL))["shifts"]


def _negated(sql: str, values: np.ndarray, times: int) -> tuple[str, np.ndarray]:
    """``sql`` under ``times`` unary minuses, written ``-(…)``, and its values."""
    for _ in range(times):
        sql, values = f"-({sql})", -values
    return sql, values


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(op="+", hours_shift=0, age_shift=0, negations=(1, 0, 0))
@example(op="*", hours_shift=30, age_shift=100, negations=(0, 1, 1))
@example(op="-", hours_shift=0, age_shift=0, negations=(0, 0, 1))
@given(
    op=st.sampled_from(sorted(OPERATIONS)),
    hours_shift=st.sampled_from([0, 30, 70]),
    age_shift=st.sampled_from([0, 50, 100]),
    negations=st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(0, 2)),
)
def test_negated_operands_and_wholes_get_bounds_that_hold_every_value_and_are_reached(
    policy: Policy, op: str, hours_shift: int, age_shift: int, negations: tuple[int, int, int]
) -> None:
    left_sql, left = _negated(f"(hours - {hours_shift})", np.linspace(*HOURS, GRID) - hours_shift, negations[0])
    right_sql, right = _negated(f"(age - {age_shift})", np.linspace(*AGE, GRID) - age_shift, negations[1])
    if op == "/" and right.min() <= 0 <= right.max():
        return  # refused: a divisor whose bounds hold 0
    values = np.array([OPERATIONS[op](a, b) for a, b in itertools.product(left, right)])
    sql, values = _negated(f"{left_sql} {op} {right_sql}", values, negations[2])
    low, high = planned_bounds(policy, sql)
    smallest, largest = float(values.min()), float(values.max())
    step = 2.0**-20 * max(1.0, abs(smallest), abs(largest))  # the fixed point rounds outwards, by one unit at most
    assert low <= smallest and largest <= high, (sql, low, high, smallest, largest)
    assert low >= smallest - step and high <= largest + step, (sql, low, high, smallest, largest)


def test_a_negated_column_alone_spans_minus_its_bounds(policy: Policy) -> None:
    assert planned_bounds(policy, "-hours") == (-HOURS[1], -HOURS[0])
    assert planned_bounds(policy, "-(-age)") == AGE
