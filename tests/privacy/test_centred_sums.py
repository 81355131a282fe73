"""Centred sums (AVG's numerator) over columns of drawn integer bounds, odd and even widths alike.

A centred sum adds ``value - center`` per row, ``center`` the floored midpoint
of the fixed-point bounds. With an odd width the two halves differ by one: the
upper bound lies one unit further from the centre than the lower one. The
shared test policies only have even widths (age [18, 80], hours [0, 60]),
where both halves are equal, so here the bounds are drawn. One member with
more rows than the cap, all at one value (inside or beyond the bounds), is
added to a pool: the exact centred sum moves by at most the plan's claimed
per-group sensitivity, and a member at the farther bound moves it by exactly
that much (the claim is sound and no wider than needed), with the rows capped
per group or (``max_rows_per_member``) in total.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import polars as pl
from hypothesis import example, given, settings
from hypothesis import strategies as st

from engine.backends.polars import PolarsBackend
from engine.plan import PartKind, QueryPlan
from engine.planner import plan_query
from engine.policy import load_policy
from engine.sql import parse
from tests.conftest import ROW_LEVEL, write_dataset

MEMBER = 0
"""The member added to the pool; the others are 1, 2, …"""
SQL = "SELECT AVG(score) FROM shifts"


def _pool(scores: list[tuple[int, int]]) -> pl.DataFrame:
    """Rows of (member, score); the policy's other columns hold ordinary values."""
    height = len(scores)
    return pl.DataFrame(
        {
            "member_id": [member for member, _ in scores],
            "region": ["north"] * height,
            "city": ["a"] * height,
            "hours": [1.0] * height,
            "age": [30] * height,
            "member_flag": [True] * height,
            "score": [score for _, score in scores],
        },
        schema_overrides={"member_id": pl.Int64, "hours": pl.Float64, "score": pl.Int64},
    )


def _centred_sum(
    root: Path, scores: list[tuple[int, int]], low: int, high: int, cap: int | None, total: bool = False
) -> tuple[QueryPlan, int]:
    """The plan and exact centred sum; ``cap`` None is row-level privacy (each row a unit).

    ``total``: the cap is ``max_rows_per_member`` (total mode), not ``max_rows_per_group``.
    """
    privacy = ROW_LEVEL if cap is None else f'unit = "member_id"\nmax_groups = 1\nmax_rows_per_group = {cap}'
    if total:
        privacy = f'unit = "member_id"\nmax_rows_per_member = {cap}'
    column = f'\n[columns.score]\ntype = "int"\nbounds = [{low}, {high}]\n'
    policies = write_dataset(root, _pool(scores), privacy=privacy, extra=column)
    plan = plan_query(parse(SQL), load_policy(policies / "shifts.toml"))
    (index,) = [i for i, part in enumerate(plan.parts) if part.kind is PartKind.CENTERED_SUM]
    return plan, PolarsBackend().execute(plan, seed=7).parts[index][0]


def assert_one_unit_moves_the_centred_sum_by_exactly_its_claim(
    low: int, high: int, cap: int | None, others: list[int], total: bool = False
) -> None:
    """Add one unit at each of several values: one member with more rows than ``cap``, or (row level) one row.

    The exact centred sum moves by at most the claimed per-group sensitivity, and at the farther bound by exactly it.
    """
    rest = [(member, score) for member, score in enumerate(others, start=1)]
    rows_added = 1 if cap is None else cap + 2
    moved = []
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        plan, without = _centred_sum(root / "without", rest, low, high, cap, total)
        for value in (low, high, low - 3, high + 3, (low + high) // 2):
            added = rest + [(MEMBER, value)] * rows_added
            _, with_unit = _centred_sum(root / f"with{value}", added, low, high, cap, total)
            moved.append(abs(with_unit - without))
    part = next(part for part in plan.parts if part.kind is PartKind.CENTERED_SUM)
    claimed = plan.sensitivity(part).per_group
    assert max(moved) <= claimed, f"bounds [{low}, {high}], cap {cap}: moved {moved}, claimed {claimed}"
    assert max(moved) == claimed, f"bounds [{low}, {high}], cap {cap}: claimed {claimed}, at most {max(moved)} moved"


@settings(max_examples=30, deadline=None)
@example(low=0, width=7, cap=1, others=[3])
@example(low=-5, width=2, cap=3, others=[])
@given(
    low=st.integers(-1000, 1000),
    width=st.integers(1, 301),
    cap=st.integers(1, 4),
    others=st.lists(st.integers(-2000, 2000), max_size=5),
)
def test_one_member_moves_a_centred_sum_by_at_most_its_claim_and_at_the_farther_bound_by_exactly_it(
    low: int, width: int, cap: int, others: list[int]
) -> None:
    assert_one_unit_moves_the_centred_sum_by_exactly_its_claim(low, low + width, cap, others)


@settings(max_examples=20, deadline=None)
@example(low=0, width=7, cap=1, others=[3])
@given(
    low=st.integers(-1000, 1000),
    width=st.integers(1, 301),
    cap=st.integers(1, 4),
    others=st.lists(st.integers(-2000, 2000), max_size=5),
)
def test_in_total_mode_one_member_moves_a_centred_sum_by_at_most_its_claim_and_at_the_farther_bound_by_exactly_it(
    low: int, width: int, cap: int, others: list[int]
) -> None:
    """``max_rows_per_member``: the member's rows are capped in total, its centred sum moves as much as at G = 1."""
    assert_one_unit_moves_the_centred_sum_by_exactly_its_claim(low, low + width, cap, others, total=True)


@settings(max_examples=20, deadline=None)
@example(low=18, width=62, others=[30])
@given(low=st.integers(-1000, 1000), width=st.integers(1, 301), others=st.lists(st.integers(-2000, 2000), max_size=5))
def test_one_row_moves_a_row_level_centred_sum_by_at_most_its_claim_and_at_the_farther_bound_by_exactly_it(
    low: int, width: int, others: list[int]
) -> None:
    """Row level: each row is a unit, so adding one row moves the centred sum by at most the half-width."""
    assert_one_unit_moves_the_centred_sum_by_exactly_its_claim(low, low + width, None, others)
