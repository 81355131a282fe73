"""Interval arithmetic inside aggregates: bounds that contain every value a row can take, and no wider.

Bounds too narrow clip answers silently (and, for a sum, would understate its
sensitivity); bounds too wide add noise for nothing. Checked against a grid
of the operands' boxes, which for ``+ - * /`` holds every extreme (the corners).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from engine.backends.polars import PolarsBackend
from engine.planner import plan_query
from engine.policy import Policy, load_policies
from engine.sql import parse
from tests.conftest import ROW_LEVEL, small_pool, write_dataset

HOURS, AGE = (0.0, 60.0), (18.0, 80.0)
"""The bounds the test policy declares."""
GRID = 13


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> Policy:
    return load_policies(write_dataset(tmp_path_factory.mktemp("intervals"), small_pool(), privacy=ROW_LEVEL))["shifts"]


def _operand(column: str, bounds: tuple[float, float], shift: int) -> tuple[str, np.ndarray]:
    """``(column - shift)`` and its values on a grid of the column's bounds."""
    return f"({column} - {shift})", np.linspace(bounds[0], bounds[1], GRID) - shift


def planned_bounds(policy: Policy, expression: str) -> tuple[float, float]:
    plan = plan_query(parse(f"SELECT SUM({expression}) FROM shifts"), policy)
    value = plan.parts[0].value
    assert value is not None
    return value.lower / value.scale, value.upper / value.scale


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(op="*", hours_shift=0, age_shift=0, constant=-1, constant_side="right")
@example(op="/", hours_shift=30, age_shift=0, constant=-3, constant_side="right")
@example(op="*", hours_shift=30, age_shift=50, constant=2, constant_side="none")
@given(
    op=st.sampled_from(["*", "/", "+", "-"]),
    hours_shift=st.sampled_from([0, 30, 70]),
    age_shift=st.sampled_from([0, 50, 100]),
    constant=st.integers(-5, 5).filter(bool),
    constant_side=st.sampled_from(["left", "right", "none"]),
)
def test_bounds_hold_every_value_and_are_reached(
    policy: Policy, op: str, hours_shift: int, age_shift: int, constant: int, constant_side: str
) -> None:
    hours_sql, hours = _operand("hours", HOURS, hours_shift)
    age_sql, age = _operand("age", AGE, age_shift)
    left_sql, left = hours_sql, hours
    right_sql, right = (age_sql, age) if constant_side == "none" else (str(constant), np.array([float(constant)]))
    if constant_side == "left":
        left_sql, left, right_sql, right = right_sql, right, left_sql, left
    if op == "/" and right.min() <= 0 <= right.max():
        return  # refused: a divisor whose bounds hold 0 (tests/test_sensitivity.py checks the refusal)
    apply = {"*": np.multiply, "/": np.divide, "+": np.add, "-": np.subtract}[op]
    values = [apply(a, b) for a, b in itertools.product(left, right)]
    low, high = planned_bounds(policy, f"{left_sql} {op} {right_sql}")
    smallest, largest = min(values), max(values)
    step = 2.0**-20 * max(1.0, abs(smallest), abs(largest))  # the fixed point rounds outwards, by one unit at most
    assert low <= smallest and largest <= high, (low, high, smallest, largest)
    assert low >= smallest - step and high <= largest + step, (low, high, smallest, largest)


def test_a_sum_of_negated_values_is_not_clipped(tmp_path: Path) -> None:
    """``SUM(hours * -1)`` at row level (no truncation) is exactly minus the sum of the hours (all inside the bounds)."""
    pool = small_pool()
    policy = load_policies(write_dataset(tmp_path, pool, privacy=ROW_LEVEL))["shifts"]
    plan = plan_query(parse("SELECT SUM(hours * -1), SUM(hours / -4) FROM shifts"), policy)
    exact = PolarsBackend().execute(plan)
    negated, quartered = (part.value.scale for part in plan.parts if part.value is not None)
    total = pool.get_column("hours").drop_nulls().sum()
    assert exact.parts[0][0] / negated == pytest.approx(-total, abs=1e-3)
    assert exact.parts[1][0] / quartered == pytest.approx(-total / 4, abs=1e-3)
