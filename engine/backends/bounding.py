"""Contribution bounding, written once for every backend.

After reading, filtering and clamping values to fixed point (each backend's
own work), every backend bounds and aggregates the same way:

* row level: each row is a unit, so counts and sums over rows need no capping;
* member level, per-group mode: aggregate each member's rows per group (rows,
  non-NULL rows, integer sums, and for quantiles a sample of the member's
  values), cap each member's contribution to a group at ``max_rows_per_group``
  rows' worth, keep at most ``max_groups`` groups per member (the smallest
  draws of the per-query seeded hash of ``engine.backends.draw``), then add up
  the members per group;
* member level, total mode (``Contribution.total``): aggregate as above, then
  keep ``max_rows_per_member`` = N of a member's T rows over all its groups
  by systematic sampling (:func:`_with_total_cap`): exactly min(T, N) rows,
  each group keeping r·N/T of its r rows in expectation.

The privacy-critical formulas live here only; a backend supplies the
primitives (:class:`Primitives`) over its own frames and column expressions,
as it supplies ``draw.Arithmetic`` for the hash, so that the backends cannot
bound differently.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, TypeVar

from engine import plan as ir
from engine.backends.draw import WORD
from engine.backends.shared import fixed_name, part_name, value_columns
from engine.sensitivity import chooses_groups

F = TypeVar("F")
E = TypeVar("E")

ROWS = "__rows"
KEPT = "__kept"
MEMBER_ROWS = "__member_rows"
RUNNING_ROWS = "__running_rows"
OFFSET_DRAW = "__draw_offset"
OFFSET_SALT = 0x243F6A8885A308D3
"""Mixed into the seed of a member's sampling offset (π's digits), so that it is not the group draw's first state."""
UNIT_WORD = "__word_unit"
VALUE_WORD = "__word_value"
COPY_WORD = "__word_copy"
GROUP_DRAW = "__draw_group"


class Primitives(Protocol[F, E]):
    """What bounding is written in: a backend's frames ``F`` and column expressions ``E``.

    Integers are 64-bit and signed; aggregations run once per group of :meth:`aggregate`.
    """

    def column(self, name: str) -> E: ...

    def literal(self, value: int) -> E: ...

    def int64(self, value: E) -> E:
        """Cast to a signed 64-bit integer."""

    def minus(self, value: E, constant: int) -> E: ...

    def add(self, left: E, right: E) -> E: ...

    def subtract(self, left: E, right: E) -> E: ...

    def times(self, left: E, right: E) -> E: ...

    def floor_divide(self, numerator: E, divisor: E) -> E:
        """Integer division rounding toward −∞ (so that a floored mean never exceeds the true one)."""

    def remainder(self, value: E, divisor: E) -> E:
        """``value mod divisor`` in ``[0, divisor)``, for a non-negative value and a positive divisor."""

    def least(self, value: E, cap: int) -> E: ...

    def positive(self, value: E) -> E:
        """The condition ``value > 0``."""

    def when(self, condition: E, then: E, otherwise: E) -> E: ...

    def integer_word(self, value: E) -> E:
        """A 64-bit integer column as the hash's word (``draw.reference_word``: its own bits)."""

    def position(self, column: str, values: tuple[object, ...]) -> E:
        """The hash's word of a public key: the position of the column's value in ``values``."""

    def occurrence(self, within: Sequence[str]) -> E:
        """Per row, how many rows with the same values of ``within`` come before it (0, 1, …), in any order."""

    def running_sum(self, value: E, within: str, order: Sequence[str]) -> E:
        """Per row, the sum of ``value`` over the rows of its ``within`` ordered by ``order``, up to itself.

        ``order`` is unique within ``within``, so the result does not depend on how the rows are stored.
        """

    def total(self, value: E, within: str) -> E:
        """Per row, the sum of ``value`` over all rows with its ``within``."""

    def head(self, values: E, count: E) -> E:
        """The first ``count`` (≥ 0) items of each list."""

    def count_rows(self) -> E:
        """Aggregation: the group's rows."""

    def count(self, value: E) -> E:
        """Aggregation: the group's non-NULL values."""

    def sum(self, value: E) -> E:
        """Aggregation: the sum of the group's non-NULL values, 0 when there are none."""

    def largest(self, value: E) -> E:
        """Aggregation: the largest of the group's values (never NULL where they are not)."""

    def median(self, value: E) -> E:
        """Aggregation: the median of the group's non-NULL integers, rounded down (NULL when there are none)."""

    def values(self, value: E) -> E:
        """Aggregation: the group's non-NULL values, as one list."""

    def smallest(self, value: E, order: E, count: int) -> E:
        """Aggregation: up to ``count`` of the group's non-NULL values, those with the smallest ``order``, as a list."""

    def pooled(self, lists: E) -> E:
        """Aggregation: the group's lists, concatenated."""

    def with_columns(self, frame: F, columns: Mapping[str, E]) -> F: ...

    def aggregate(self, frame: F, keys: Sequence[str], columns: Mapping[str, E]) -> F:
        """One row per value of ``keys`` (without keys: exactly one row), with the aggregations ``columns``."""

    def keep_first(self, frame: F, within: str, order: str, count: int) -> F:
        """Per value of ``within``, only the ``count`` rows with the smallest ``order`` (ties broken arbitrarily)."""

    def keep_where(self, frame: F, condition: E) -> F:
        """Only the rows where ``condition`` holds."""

    def with_word(self, frame: F, column: str, integer: bool, name: str) -> F:
        """Add ``name``: the column's hash words (``draw.reference_word``), as an integer or as text."""

    def with_draw(self, frame: F, seed: int, words: Sequence[str], name: str) -> F:
        """Add ``name``: the seeded draw of the word columns ``words`` (``draw.draw_steps``)."""


def bounded(frame: F, plan: ir.QueryPlan, seed: int, integer_unit: bool, ops: Primitives[F, E]) -> F:
    """One row per observed group (ungrouped: one row), one column per part: each unit's contribution bounded.

    ``frame`` holds the plan's rows after filtering, with every value column
    clamped to fixed point (``shared.fixed_name``); ``integer_unit`` says
    whether the privacy unit is stored as integers (hashed as such) or not (by its text).
    """
    keys = [key.column for key in plan.group_keys]
    unit = plan.contribution.unit_column
    if unit is None:
        return ops.aggregate(frame, keys, _row_level_parts(plan, ops))
    frame = _with_sample_draws(frame, plan, unit, integer_unit, seed, ops)
    per_member = ops.aggregate(frame, [unit, *keys], _member_statistics(plan, ops))
    if plan.contribution.total:
        per_member = _with_total_cap(per_member, plan, unit, integer_unit, seed, ops)
    per_member = ops.with_columns(per_member, _member_level_parts(plan, ops))
    if chooses_groups(plan):
        per_member = _with_group_draw(per_member, plan, unit, integer_unit, seed, ops)
        per_member = ops.keep_first(per_member, unit, GROUP_DRAW, plan.contribution.max_groups)
    combined = {part_name(index): _combine(part, index, ops) for index, part in enumerate(plan.parts)}
    return ops.aggregate(per_member, keys, combined)


PROFILE_STATISTICS = ("rows", "groups", "fullest")
"""Per member: rows in all groups, groups touched, rows in the member's fullest group."""
MEMBERS = "__members"


def value_statistic(column: str) -> str:
    """The profile's statistic of a ``bounds = "auto"`` column: one of each member's values (fixed point)."""
    return f"value:{column}"


def member_profile(frame: F, plan: ir.QueryPlan, ops: Primitives[F, E]) -> dict[str, F]:
    """Per statistic: one row per value it takes, with how many members take it.

    The statistics are :data:`PROFILE_STATISTICS` (member level), and for each
    column whose bound is chosen (``plan.auto_bounds.columns``) each member's
    median value (at row level: every row's value).
    ``frame`` is what :func:`bounded` reads. These exact counts are never shown:
    ``engine.member_profile`` releases them, binned, through an OpenDP measurement.
    Each member has one value of each statistic, so adding or removing a member
    moves one count of each by one.
    """
    unit = plan.contribution.unit_column
    columns = plan.auto_bounds.columns if plan.auto_bounds else ()
    profiles = {}
    if unit is not None:
        keys = [key.column for key in plan.group_keys]
        per_group = ops.aggregate(frame, [unit, *keys], {ROWS: ops.count_rows()})
        rows = ops.column(ROWS)
        statistics = {"rows": ops.sum(rows), "groups": ops.count_rows(), "fullest": ops.largest(rows)}
        per_member = ops.aggregate(per_group, [unit], statistics)
        profiles = {name: ops.aggregate(per_member, [name], {MEMBERS: ops.count_rows()}) for name in PROFILE_STATISTICS}
    for column in columns:
        fixed = fixed_name(column)
        if unit is not None:  # one value per member: its median (a typical row of its)
            frame_of_values = ops.aggregate(frame, [unit], {fixed: ops.median(ops.column(fixed))})
        else:
            frame_of_values = frame
        profiles[value_statistic(column)] = ops.aggregate(frame_of_values, [fixed], {MEMBERS: ops.count_rows()})
    return profiles


def _row_level_parts(plan: ir.QueryPlan, ops: Primitives[F, E]) -> dict[str, E]:
    """Each row is a unit: counts and sums over rows need no capping."""
    expressions = {}
    for index, part in enumerate(plan.parts):
        if part.kind is ir.PartKind.COUNT_ROWS:
            expression = ops.count_rows()
        elif part.kind is ir.PartKind.COUNT_VALUES:
            assert part.counted_column is not None
            expression = ops.count(ops.column(part.counted_column))
        elif part.kind is ir.PartKind.QUANTILE:
            assert part.value is not None
            expression = ops.values(ops.column(fixed_name(part.value.column)))
        else:
            assert part.value is not None
            fixed = ops.column(fixed_name(part.value.column))
            if part.kind is ir.PartKind.CENTERED_SUM:
                fixed = ops.minus(fixed, part.value.center)
            expression = ops.sum(fixed)
        expressions[part_name(index)] = expression
    return expressions


def _with_sample_draws(
    frame: F, plan: ir.QueryPlan, unit: str, integer_unit: bool, seed: int, ops: Primitives[F, E]
) -> F:
    """Per row, for each quantile part: the draw that orders a member's values in a group (smallest kept).

    The draw hashes the seed, the member, the value and which copy of that
    value it is (1st, 2nd, … within the member and group), so equal values
    are drawn independently and the kept values are a uniform sample.
    """
    quantiles = _quantile_parts(plan)
    if not quantiles:
        return frame
    keys = [key.column for key in plan.group_keys]
    frame = ops.with_word(frame, unit, integer_unit, UNIT_WORD)
    for index, part in quantiles:
        assert part.value is not None
        fixed = fixed_name(part.value.column)
        words = {VALUE_WORD: ops.integer_word(ops.column(fixed)), COPY_WORD: ops.occurrence([unit, *keys, fixed])}
        frame = ops.with_columns(frame, words)
        frame = ops.with_draw(frame, seed, [UNIT_WORD, VALUE_WORD, COPY_WORD], _sample_draw_name(index))
    return frame


def _member_statistics(plan: ir.QueryPlan, ops: Primitives[F, E]) -> dict[str, E]:
    """Per member and group: rows; per column a part reads, non-NULL rows; per summed column, the sum.

    For a quantile, up to ``max_rows_per_group`` of the member's values: those
    with the smallest draws (in total mode up to ``max_rows_per_member``,
    then cut to the rows the member keeps there, by :func:`_member_level_parts`).
    """
    statistics = {ROWS: ops.count_rows()}
    cap = plan.contribution.row_cap
    for index, part in _quantile_parts(plan):
        assert part.value is not None
        fixed = ops.column(fixed_name(part.value.column))
        statistics[part_name(index)] = ops.smallest(fixed, ops.column(_sample_draw_name(index)), cap)
    for name in _counted_columns(plan):
        statistics[_count_name(name)] = ops.count(ops.column(name))
    for name in value_columns(plan):
        statistics[_sum_name(name)] = ops.sum(ops.column(fixed_name(name)))
    return statistics


def _member_level_parts(plan: ir.QueryPlan, ops: Primitives[F, E]) -> dict[str, E]:
    """Cap one member's contribution to one group: at most ``max_rows_per_group`` rows' worth (per-group mode).

    In total mode, the member's kept rows there (``KEPT``, :func:`_with_total_cap`)
    instead, and the same share of the non-NULL rows of each column. Sums become
    the member's floored mean (inside the bounds) times the kept count, so a member
    adds at most ``kept × magnitude`` to a group. Quantile parts hold the member's
    sampled values already; in total mode only as many as it keeps are left.
    """
    expressions = {}
    for index, part in enumerate(plan.parts):
        if part.kind is ir.PartKind.QUANTILE:
            if plan.contribution.total:
                assert part.value is not None
                kept = _kept(plan, ops.column(_count_name(part.value.column)), ops)
                expressions[part_name(index)] = ops.head(ops.column(part_name(index)), kept)
            continue
        if part.kind is ir.PartKind.COUNT_ROWS:
            expression = _kept(plan, ops.column(ROWS), ops)
        elif part.kind is ir.PartKind.COUNT_UNITS:
            expression = ops.literal(1)  # this member, in this group
        elif part.kind is ir.PartKind.COUNT_VALUES:
            assert part.counted_column is not None
            expression = _kept(plan, ops.column(_count_name(part.counted_column)), ops)
        else:
            assert part.value is not None
            column = part.value.column
            count = ops.column(_count_name(column))
            center = part.value.center if part.kind is ir.PartKind.CENTERED_SUM else 0
            mean = ops.minus(ops.floor_divide(ops.column(_sum_name(column)), count), center)
            expression = ops.when(ops.positive(count), ops.times(mean, _kept(plan, count, ops)), ops.literal(0))
        expressions[part_name(index)] = ops.int64(expression)
    return expressions


def _kept(plan: ir.QueryPlan, count: E, ops: Primitives[F, E]) -> E:
    """How many of ``count`` (a member's rows, or non-NULL rows of a column, in one group) are kept.

    Per-group mode: at most ``max_rows_per_group``. Total mode: the member keeps
    ``KEPT`` of its ``ROWS`` rows there, so ``⌊count × KEPT / ROWS⌋`` (exactly
    ``KEPT`` for the rows themselves, never more than ``KEPT`` for a column).
    """
    if plan.contribution.total:
        return ops.floor_divide(ops.times(count, ops.column(KEPT)), ops.column(ROWS))
    return ops.least(count, plan.contribution.max_rows_per_group)


def _with_total_cap(frame: F, plan: ir.QueryPlan, unit: str, integer_unit: bool, seed: int, ops: Primitives[F, E]) -> F:
    """Add ``KEPT``: how many of its ``ROWS`` rows in each group a member keeps, N = ``max_rows_per_member`` in all.

    A member with T ≤ N rows over all its groups keeps them all. Otherwise
    systematic sampling: order the member's groups by their seeded draw (as
    the per-group mode chooses groups), let C⁻ and C⁺ be the member's rows in
    the groups before and up to this one (C⁺ = C⁻ + r), k a seeded draw of
    the member modulo T, and keep ``⌊(C⁺·N + k)/T⌋ − ⌊(C⁻·N + k)/T⌋`` rows.
    The kept rows telescope to exactly N, 0 ≤ kept ≤ r (as N < T), and, k
    being uniform on [0, T), each group keeps r·N/T in expectation whatever
    the order (Hermite's identity). Everything depends on the member's own
    rows and the seed only, never on other members or on how rows are stored.

    Integers: C⁺·N + k < T·(N + 1) ≤ ``MAX_ROWS`` × (``MAX_ROWS_PER_MEMBER`` + 1) < 2⁶³,
    and :func:`_kept`'s ``count × KEPT`` ≤ T·N too (``sensitivity.check_no_overflow``
    refuses a larger N before the charge).
    Groups where a member keeps nothing are dropped, so that a member adds no
    key (a private key's count of zero still counts as a key) it keeps no row of.
    """
    cap = plan.contribution.max_rows_per_member
    assert cap is not None
    if not plan.group_keys:  # one group: the formula reduces to min(T, N)
        return ops.with_columns(frame, {KEPT: ops.least(ops.column(ROWS), cap)})
    frame = _with_group_draw(frame, plan, unit, integer_unit, seed, ops)
    frame = ops.with_draw(frame, (seed + OFFSET_SALT) % WORD, [UNIT_WORD], OFFSET_DRAW)
    keys = [key.column for key in plan.group_keys]
    rows = ops.column(ROWS)
    frame = ops.with_columns(
        frame,
        {
            MEMBER_ROWS: ops.total(rows, unit),
            RUNNING_ROWS: ops.running_sum(rows, unit, [GROUP_DRAW, *keys]),
        },
    )
    member_rows, running = ops.column(MEMBER_ROWS), ops.column(RUNNING_ROWS)
    offset = ops.remainder(ops.int64(ops.column(OFFSET_DRAW)), member_rows)
    through = ops.floor_divide(ops.add(ops.times(running, ops.literal(cap)), offset), member_rows)
    before = ops.floor_divide(ops.add(ops.times(ops.subtract(running, rows), ops.literal(cap)), offset), member_rows)
    over = ops.positive(ops.minus(member_rows, cap))
    frame = ops.with_columns(frame, {KEPT: ops.int64(ops.when(over, ops.subtract(through, before), rows))})
    return ops.keep_where(frame, ops.positive(ops.column(KEPT)))


def _with_group_draw(
    frame: F, plan: ir.QueryPlan, unit: str, integer_unit: bool, seed: int, ops: Primitives[F, E]
) -> F:
    """Add the draw of each member's group: member, then per key a public key's position or a private key's text."""
    frame = ops.with_word(frame, unit, integer_unit, UNIT_WORD)
    words = [UNIT_WORD]
    for index, key in enumerate(plan.group_keys):
        name = f"__word_key_{index}"
        if key.values is None:
            frame = ops.with_word(frame, key.column, False, name)
        else:
            frame = ops.with_columns(frame, {name: ops.position(key.column, key.values)})
        words.append(name)
    return ops.with_draw(frame, seed, words, GROUP_DRAW)


def _combine(part: ir.Part, index: int, ops: Primitives[F, E]) -> E:
    """Members' bounded contributions to a group: summed, or (quantiles) pooled into one list."""
    column = ops.column(part_name(index))
    return ops.pooled(column) if part.kind is ir.PartKind.QUANTILE else ops.sum(column)


# --- the columns bounding adds -------------------------------------------------------


def _count_name(column: str) -> str:
    """A member's non-NULL rows of ``column`` in a group."""
    return f"__n_{column}"


def _sum_name(column: str) -> str:
    """A member's sum of ``column`` (fixed point) in a group."""
    return f"__s_{column}"


def _sample_draw_name(index: int) -> str:
    """The column of draws ordering a member's values for quantile part ``index``."""
    return f"__draw_{index}"


def _quantile_parts(plan: ir.QueryPlan) -> list[tuple[int, ir.Part]]:
    """The quantile parts and their indices (their inputs are bounded samples, not sums)."""
    return [(index, part) for index, part in enumerate(plan.parts) if part.kind is ir.PartKind.QUANTILE]


def _counted_columns(plan: ir.QueryPlan) -> list[str]:
    """Columns whose non-NULL rows a part counts, or whose values a part sums."""
    return sorted({part.column for part in plan.parts if part.column is not None})
