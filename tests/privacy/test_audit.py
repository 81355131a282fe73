"""Empirical privacy audits: no query lets one member's presence show more than the ε the engine charged.

Each case is a query and two neighbouring pools: ``D0``, and ``D1`` = ``D0``
plus one member with worst-case values (far outside the bounds, many more rows
than ``max_rows_per_group``, spread over groups where that helps the attacker).
The harness in ``audit.py`` turns thousands of releases on each pool into a
lower bound on ε that holds with confidence 1 − 1e-3; it must not exceed
the charged ε. The calibration checks at the end build deliberately wrong
mechanisms from OpenDP and show that the same harness catches them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import opendp.prelude as dp
import polars as pl
import pytest

from engine.accounting import PrivacyRequest
from engine.mechanisms import calibrate
from engine.planner import plan_query
from engine.policy import load_policy
from engine.sql import parse
from tests.bounds_pools import truncation_pool, with_auto_hours
from tests.conftest import MEMBER_LEVEL, ROW_LEVEL, small_pool, write_dataset
from tests.privacy.audit import AuditResult, AuditSizes, audit
from tests.privacy.releases import (
    AuditQuery,
    Released,
    RepeatedRelease,
    WholeRelease,
    cell_of,
    chosen_upper,
    column_total,
    disclosed_bias,
    only_cell,
    rows_by,
)

WORST_MEMBER = 999_999
FAR_ABOVE_HOURS = 987_654.321
"""Far above the hours bounds [0, 60]: the engine must clamp it to 60."""
MEMBER_LEVEL_G2 = 'unit = "member_id"\nmax_groups = 2\nmax_rows_per_group = 10'
MEMBER_TOTAL = 'unit = "member_id"\nmax_rows_per_member = 10'
"""Total mode: at most 10 rows per member over all groups, however many groups."""


def worst_member(rows: int, regions: tuple[str, ...] = ("north",), city: str = "a", age: int = 1_000) -> pl.DataFrame:
    """``rows`` rows of one member, cycling over ``regions``, every value past its bound."""
    return pl.DataFrame(
        {
            "member_id": [WORST_MEMBER] * rows,
            "region": [regions[i % len(regions)] for i in range(rows)],
            "city": [city] * rows,
            "hours": [FAR_ABOVE_HOURS] * rows,
            "age": [age] * rows,
            "member_flag": [True] * rows,
        }
    )


def with_member(pool: pl.DataFrame, member: pl.DataFrame) -> pl.DataFrame:
    return pl.concat([pool, member.select(pool.columns).cast(pool.schema)])


def median_pool() -> pl.DataFrame:
    """Forty one-row members, half aged 30 and half 60: one member's ten rows at the bound move the median."""
    frame = small_pool(rows=40, members=40)
    return frame.with_columns(
        member_id=pl.int_range(1, 41, dtype=pl.Int64),
        age=pl.Series([30] * 20 + [60] * 20, dtype=frame.schema["age"]),
    )


def median_hours_pool() -> pl.DataFrame:
    """Forty one-row members, half working 10 hours and half 50: a float column, so the candidates are intervals."""
    frame = small_pool(rows=40, members=40)
    return frame.with_columns(
        member_id=pl.int_range(1, 41, dtype=pl.Int64),
        hours=pl.Series([10.0] * 20 + [50.0] * 20, dtype=frame.schema["hours"]),
    )


def one_region_per_member(pool: pl.DataFrame) -> pl.DataFrame:
    """Every member's rows in one region, so that only the worst member ever meets ``max_groups``.

    Then which groups the backend keeps is not random for anyone but that member, and the
    draws stay independent and identically distributed (what Clopper–Pearson assumes).
    """
    regions = {0: "north", 1: "south", 2: "east", 3: "west"}
    return pool.with_columns(region=(pl.col("member_id") % 4).replace_strict(regions, return_dtype=pl.String))


@dataclass(frozen=True)
class Neighbours:
    without: pl.DataFrame
    with_worst: pl.DataFrame


def add_worst(pool: pl.DataFrame, member: pl.DataFrame) -> Neighbours:
    return Neighbours(pool, with_member(pool, member))


@dataclass(frozen=True)
class Case:
    name: str
    query: AuditQuery
    neighbours: Callable[[], Neighbours]
    privacy: str = MEMBER_LEVEL
    accounting: str = "pure"


CASES = [
    Case(
        "count_member_pure",
        AuditQuery("SELECT COUNT(*) FROM shifts", 1.0, None, only_cell),
        lambda: add_worst(small_pool(), worst_member(40)),
    ),
    Case(
        "sum_member_pure",
        AuditQuery("SELECT SUM(hours) FROM shifts", 1.0, None, only_cell),
        lambda: add_worst(small_pool(), worst_member(40)),
    ),
    Case(
        "avg_member_pure",
        AuditQuery("SELECT AVG(hours) FROM shifts", 1.0, None, only_cell),
        lambda: add_worst(small_pool(rows=60, members=20), worst_member(40)),
    ),
    Case(
        "group_by_public_keys_member_pure",
        AuditQuery("SELECT region, COUNT(*) FROM shifts GROUP BY region", 1.0, None, cell_of("north")),
        lambda: add_worst(one_region_per_member(small_pool()), worst_member(40)),
    ),
    Case(
        "group_by_public_keys_member_in_every_group",
        AuditQuery("SELECT region, SUM(hours) FROM shifts GROUP BY region", 1.0, None, column_total()),
        lambda: add_worst(
            one_region_per_member(small_pool()), worst_member(80, regions=("north", "south", "east", "west"))
        ),
        privacy=MEMBER_LEVEL_G2,
    ),
    Case(
        # The worst member keeps exactly 10 of its 80 rows, sampled across the four regions: the total moves by 10 × 60.
        "group_by_public_keys_member_in_every_group_total",
        AuditQuery("SELECT region, SUM(hours) FROM shifts GROUP BY region", 1.0, None, column_total()),
        lambda: add_worst(
            one_region_per_member(small_pool()), worst_member(80, regions=("north", "south", "east", "west"))
        ),
        privacy=MEMBER_TOTAL,
    ),
    Case(
        # All of the worst member's rows in one region: its 10 kept rows move that one cell by the whole L2 bound.
        "group_by_public_keys_member_total_zcdp",
        AuditQuery("SELECT region, COUNT(*) FROM shifts GROUP BY region", 1.0, 1e-6, cell_of("north")),
        lambda: add_worst(one_region_per_member(small_pool()), worst_member(40)),
        privacy=MEMBER_TOTAL,
        accounting="zcdp",
    ),
    Case(
        "median_member_pure",
        AuditQuery("SELECT MEDIAN(age) FROM shifts", 1.0, None, only_cell),
        lambda: add_worst(median_pool(), worst_member(40)),
    ),
    Case(
        "median_member_zcdp",
        AuditQuery("SELECT MEDIAN(age) FROM shifts", 1.0, 1e-6, only_cell),
        lambda: add_worst(median_pool(), worst_member(40)),
        accounting="zcdp",
    ),
    Case(
        "median_hours_member_pure",
        AuditQuery("SELECT MEDIAN(hours) FROM shifts", 1.0, None, only_cell),
        lambda: add_worst(median_hours_pool(), worst_member(40)),
    ),
    Case(
        "median_hours_member_zcdp",
        AuditQuery("SELECT MEDIAN(hours) FROM shifts", 1.0, 1e-6, only_cell),
        lambda: add_worst(median_hours_pool(), worst_member(40)),
        accounting="zcdp",
    ),
    Case(
        "count_member_zcdp",
        AuditQuery("SELECT COUNT(*) FROM shifts", 1.0, 1e-6, only_cell),
        lambda: add_worst(small_pool(), worst_member(40)),
        accounting="zcdp",
    ),
    Case(
        "count_row_pure",
        AuditQuery("SELECT COUNT(*) FROM shifts", 1.0, None, only_cell),
        lambda: add_worst(small_pool(), worst_member(1)),
        privacy=ROW_LEVEL,
    ),
    Case(
        "sum_row_zcdp",
        AuditQuery("SELECT SUM(hours) FROM shifts", 1.0, 1e-6, only_cell),
        lambda: add_worst(small_pool(), worst_member(1)),
        privacy=ROW_LEVEL,
        accounting="zcdp",
    ),
]


def write_pools(root: Path, neighbours: Neighbours, privacy: str, accounting: str) -> tuple[Path, Path]:
    """Each pool under its own directory, with the same policy (a huge budget: the audit charges only once)."""
    options = {"privacy": privacy, "accounting": accounting, "epsilon": 1e9, "max_epsilon_per_query": 2.0}
    return (
        write_dataset(root / "without", neighbours.without, **options),
        write_dataset(root / "with_worst", neighbours.with_worst, **options),
    )


@pytest.fixture
def run_audit(tmp_path: Path, audit_sizes: AuditSizes) -> Iterator[Callable[..., tuple[AuditResult, float]]]:
    """``run_audit(query, policies0, policies1)``: the audit's result and the ε the ledger charged."""
    opened: list[RepeatedRelease] = []

    def run(query: AuditQuery, without: Path, with_worst: Path) -> tuple[AuditResult, float]:
        samplers = [
            RepeatedRelease(policies, f"sqlite:///{tmp_path / f'ledger{index}.db'}", query)
            for index, policies in enumerate((without, with_worst))
        ]
        opened.extend(samplers)
        assert samplers[0].charged == samplers[1].charged
        delta = float(samplers[0].charged.delta)
        return audit(samplers[0], samplers[1], delta, audit_sizes), float(samplers[0].charged.epsilon)

    yield run
    for sampler in opened:
        sampler.close()


def _report(name: str, result: AuditResult, charged: float) -> None:
    print(
        f"\nAUDIT {name}: charged ε={charged}, empirical lower bound {result.epsilon_lower_bound:.3f} ({result.event})"
    )


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_empirical_loss_stays_within_the_charged_epsilon(case: Case, tmp_path: Path, run_audit: Callable) -> None:
    without, with_worst = write_pools(tmp_path, case.neighbours(), case.privacy, case.accounting)
    result, charged = run_audit(case.query, without, with_worst)
    _report(case.name, result, charged)
    assert result.epsilon_lower_bound <= charged


@pytest.mark.parametrize(("accounting", "epsilon", "delta"), [("pure", 1.0, 1e-6), ("zcdp", 1.0, 1e-6)])
def test_private_key_threshold_stays_within_epsilon_and_delta(
    accounting: str, epsilon: float, delta: float, tmp_path: Path, run_audit: Callable
) -> None:
    sql = "SELECT city, COUNT(*) FROM shifts GROUP BY city"
    base = small_pool()
    probe = write_dataset(tmp_path / "probe", base, accounting=accounting, epsilon=1e9)
    policy = load_policy(probe / "shifts.toml")
    noise = calibrate(plan_query(parse(sql), policy), PrivacyRequest.validate(epsilon, delta, policy.budget))
    assert noise.threshold is not None
    edge_members = noise.threshold.value  # about half the releases show the key, with or without the worst member
    edge = small_pool(rows=edge_members, members=edge_members, seed=7).with_columns(
        member_id=pl.int_range(10_001, 10_001 + edge_members, dtype=base.schema["member_id"]), city=pl.lit("edge")
    )
    neighbours = add_worst(pl.concat([base, edge]), worst_member(40, city="edge"))
    without, with_worst = write_pools(tmp_path, neighbours, MEMBER_LEVEL, accounting)
    result, charged = run_audit(AuditQuery(sql, epsilon, delta, cell_of("edge")), without, with_worst)
    _report(f"private_key_threshold_{accounting}", result, charged)
    assert result.epsilon_lower_bound <= charged


# --- the harness catches mechanisms that leak more than they claim -----------------------------------------


def _laplace_sampler(exact_count: int, scale: float) -> Callable[[int], np.ndarray]:
    """OpenDP's discrete Laplace on one count, at a scale the test chooses (not the engine's)."""
    measurement = dp.m.make_laplace(dp.vector_domain(dp.atom_domain(T="i64")), dp.l1_distance(T="i64"), scale=scale)

    def draw(n: int) -> np.ndarray:
        return np.asarray(measurement([exact_count] * n), dtype=float)

    return draw


@pytest.mark.parametrize(
    ("name", "scale_factor", "shift"),
    [
        ("noise_three_times_too_small", 1 / 3, 10),  # scale Δ/(3ε): the true loss is 3ε
        ("contribution_bound_ignored", 1.0, 40),  # scale Δ/ε, but a member moved the count by 4Δ
    ],
)
def test_the_audit_catches_a_miscalibrated_mechanism(
    name: str, scale_factor: float, shift: int, audit_sizes: AuditSizes
) -> None:
    claimed_epsilon, sensitivity, base = 1.0, 10, 600
    scale = sensitivity / claimed_epsilon * scale_factor
    result = audit(_laplace_sampler(base, scale), _laplace_sampler(base + shift, scale), 0.0, audit_sizes)
    _report(name, result, claimed_epsilon)
    assert result.epsilon_lower_bound > claimed_epsilon


def test_the_audit_of_a_correct_mechanism_is_close_to_its_epsilon(audit_sizes: AuditSizes) -> None:
    """Not only sound but sharp enough to matter: a well-calibrated count is bounded at over half its ε."""
    result = audit(_laplace_sampler(600, 10.0), _laplace_sampler(610, 10.0), 0.0, audit_sizes)
    assert 0.5 < result.epsilon_lower_bound <= 1.0


# --- whole queries with a member profile: bounds chosen by DP, or their bias disclosed ----------------------------

AUTO_BOUNDS = 'unit = "member_id"\nmax_groups = "auto"\nmax_rows_per_group = "auto"\nauto_limit = 64'


def truncated_neighbours() -> Neighbours:
    """2,000 one-row members and 300 with 40 rows (a profile that sees them), and the worst member with 40 more."""
    return add_worst(truncation_pool(2_000, 300, 40), worst_member(40))


@dataclass(frozen=True)
class WholeCase:
    name: str
    query: AuditQuery
    observe: Callable[[Released], float]
    privacy: str
    explain_bias: bool = False
    accounting: str = "pure"
    slow: bool = False
    """Past ten seconds (each zCDP draw calibrates its bounds, each draw with an "auto" column chooses its bound
    too): in the slow suite."""
    auto_hours: bool = False
    """``hours`` with ``bounds = "auto"`` in [0, 60]: its clamp bound chosen too (the worst member's hours are far
    above, the others' 8.0)."""


WHOLE_CASES = [
    WholeCase(
        "auto_bounds_count_pure",
        AuditQuery("SELECT COUNT(*) FROM shifts", 1.0, None, only_cell),
        rows_by(only_cell),
        AUTO_BOUNDS,
    ),
    *(  # hours' clamp bound chosen too: observe the sum, or the bound itself
        WholeCase(
            name,
            AuditQuery("SELECT SUM(hours) FROM shifts", 1.0, None, only_cell),
            observe,
            AUTO_BOUNDS,
            auto_hours=True,
            slow=True,
        )
        for name, observe in (
            ("auto_value_bounds_sum_pure", rows_by(only_cell)),
            ("auto_value_bound_chosen_pure", chosen_upper("hours")),
        )
    ),
    WholeCase(
        "explain_bias_count_pure",
        AuditQuery("SELECT COUNT(*) FROM shifts", 1.0, None, only_cell),
        rows_by(only_cell),
        MEMBER_LEVEL,
        explain_bias=True,
    ),
    WholeCase(
        "explain_bias_share_zcdp",
        AuditQuery("SELECT SUM(hours) FROM shifts", 1.0, 1e-6, only_cell),
        disclosed_bias,
        MEMBER_LEVEL,
        explain_bias=True,
        accounting="zcdp",
        slow=True,
    ),
    WholeCase(
        "auto_bounds_count_zcdp",
        AuditQuery("SELECT COUNT(*) FROM shifts", 1.0, 1e-6, only_cell),
        rows_by(only_cell),
        AUTO_BOUNDS,
        accounting="zcdp",
        slow=True,
    ),
]


@pytest.mark.parametrize(
    "case", [pytest.param(case, id=case.name, marks=[pytest.mark.slow] if case.slow else []) for case in WHOLE_CASES]
)
def test_a_whole_query_with_a_member_profile_stays_within_the_charged_epsilon(
    case: WholeCase, tmp_path: Path, audit_sizes: AuditSizes
) -> None:
    """The profile, the bounds chosen from it (or the bias disclosed) and the answer: each draw one whole release.

    Half the samples of the other audits (each draw chooses bounds and calibrates): the bound holds at any size.
    """
    without, with_worst = write_pools(tmp_path, truncated_neighbours(), case.privacy, case.accounting)
    for policies in (without, with_worst) if case.auto_hours else ():
        with_auto_hours(policies)
    samplers = [
        WholeRelease(policies, f"sqlite:///{tmp_path / f'ledger{i}.db'}", case.query, case.observe, case.explain_bias)
        for i, policies in enumerate((without, with_worst))
    ]
    try:
        assert samplers[0].charged == samplers[1].charged
        charged = samplers[0].charged
        sizes = AuditSizes(audit_sizes.select // 2, audit_sizes.test // 2)
        result = audit(samplers[0], samplers[1], float(charged.delta), sizes)
    finally:
        for sampler in samplers:
            sampler.close()
    _report(case.name, result, float(charged.epsilon))
    assert result.epsilon_lower_bound <= float(charged.epsilon)
