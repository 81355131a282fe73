"""A member adds at most ``max_rows_per_group`` values to each group's quantile input, a sample of its own values.

Checked on the exact (pre-noise) quantile input the Polars backend builds:
every member's values are distinct from every other member's, so each value
in a group's input names its member. With every region public and
``max_groups`` at least the number of regions, no group is dropped, so each
member keeps exactly ``min(max_rows_per_group, its non-NULL values there)``.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

from hypothesis import example, given, settings
from hypothesis import strategies as st

from engine.backends.polars import PolarsBackend
from engine.plan import PartKind
from engine.planner import plan_query
from engine.policy import load_policy
from engine.sql import parse
from tests.conftest import write_dataset
from tests.test_sensitivity import frame_of

REGIONS = ("north", "south", "east", "west")
QUERIES = (
    "SELECT region, MEDIAN(age) FROM shifts GROUP BY region",
    "SELECT region, QUANTILE(age, 0.9), COUNT(*) FROM shifts GROUP BY region",
    "SELECT MEDIAN(age) FROM shifts",
)


def _age(member: int, index: int) -> int:
    """A value only ``member`` holds, inside the policy's age bounds [18, 80]: the tens name the member."""
    return 20 + 10 * member + index % 10


members_rows = st.lists(
    st.lists(st.tuples(st.sampled_from(REGIONS), st.booleans()), max_size=25),  # (region, age is NULL)
    min_size=1,
    max_size=5,
)
"""Per member (0 to 4): its rows, each a region and whether its age is NULL."""


@settings(max_examples=30, deadline=None)
@example(members=[[("north", False)] * 25, [("north", False)] * 2], cap=3, sql=QUERIES[0], seed=1)
@given(members=members_rows, cap=st.integers(1, 6), sql=st.sampled_from(QUERIES), seed=st.integers(0, 2**32))
def test_each_member_adds_at_most_max_rows_per_group_of_its_own_values_to_a_quantile(
    members: list[list[tuple[str, bool]]], cap: int, sql: str, seed: int
) -> None:
    rows = [
        (member, region, None if null else _age(member, index))
        for member, member_rows in enumerate(members)
        for index, (region, null) in enumerate(member_rows)
    ]
    frame = frame_of(
        [
            {"member_id": member, "region": region, "city": "a", "hours": 1.0, "age": age, "member_flag": True}
            for member, region, age in rows
        ]
    )
    privacy = f'unit = "member_id"\nmax_groups = {len(REGIONS)}\nmax_rows_per_group = {cap}'
    grouped = "GROUP BY" in sql
    with tempfile.TemporaryDirectory() as directory:
        policies = write_dataset(Path(directory), frame, privacy=privacy)
        plan = plan_query(parse(sql), load_policy(policies / "shifts.toml"))
        exact = PolarsBackend().execute(plan, seed=seed)
    (index,) = [i for i, part in enumerate(plan.parts) if part.kind is PartKind.QUANTILE]
    for key, values in zip(exact.keys, exact.parts[index], strict=True):
        in_group = [(m, age) for m, region, age in rows if age is not None and (not grouped or (region,) == key)]
        held = Counter(age for _, age in in_group)
        taken = Counter(int(value) for value in values)
        assert not taken - held, f"{key}: values no member holds there: {taken - held}"
        by_member = Counter((age - 20) // 10 for age in taken.elements())
        for member in {m for m, _ in in_group}:
            holds = sum(1 for m, _ in in_group if m == member)
            assert by_member[member] == min(cap, holds), (key, member, holds, by_member[member], cap)
