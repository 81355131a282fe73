"""Fuzzing the front end: whatever SQL arrives, the engine answers within its charge or refuses with a typed error.

Never an unhandled exception, never a hang, never a charge for a refusal, and
never a planted data value in what comes back.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import Engine
from engine.errors import CoopdpError, InternalError
from tests.privacy.attacks.test_corpus import assert_only_finite_numbers
from tests.privacy.deadline import within
from tests.privacy.pools import PLANTED, shows_planted, write_planted
from tests.privacy.sql_strategies import hostile_queries, nearly_valid_queries, valid_queries

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
EPSILONS = st.sampled_from([0.01, 0.3, 1.0])


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    root = tmp_path_factory.mktemp("fuzz")
    created = Engine.from_policies(write_planted(root), ledger=f"sqlite:///{root / 'ledger.db'}")
    yield created
    created.close()


def assert_answered_within_the_charge_or_refused(engine: Engine, sql: str, epsilon: float) -> None:
    before = engine.ledger.spent("shifts").dataset
    try:
        result = within(10, lambda: engine.query("shifts", sql, epsilon=epsilon, delta=1e-7))
    except InternalError:
        raise
    except CoopdpError as error:
        assert engine.ledger.spent("shifts").dataset == before, f"refused ({error.code}) but charged"
        shown = error.message
    else:
        charged = engine.ledger.spent("shifts").dataset - before
        if result.cached:
            assert charged.epsilon == 0
        else:
            assert charged == result.cost and result.cost.epsilon == Decimal(repr(epsilon))
        document = result.to_dict()
        assert_only_finite_numbers(document)
        shown = str(document)
    for planted in PLANTED:
        if planted.lower() not in sql.lower():
            assert not shows_planted(planted, shown)


@FUZZ
@given(sql=valid_queries(), epsilon=EPSILONS)
def test_valid_queries(engine: Engine, sql: str, epsilon: float) -> None:
    assert_answered_within_the_charge_or_refused(engine, sql, epsilon)


@FUZZ
@given(sql=nearly_valid_queries(), epsilon=EPSILONS)
def test_nearly_valid_queries(engine: Engine, sql: str, epsilon: float) -> None:
    assert_answered_within_the_charge_or_refused(engine, sql, epsilon)


@FUZZ
@given(sql=hostile_queries(), epsilon=EPSILONS)
def test_hostile_queries(engine: Engine, sql: str, epsilon: float) -> None:
    assert_answered_within_the_charge_or_refused(engine, sql, epsilon)


def test_the_valid_strategy_mostly_yields_answers(engine: Engine) -> None:
    """The fuzzer reaches the release path, not only the parser: most 'valid' queries are answered."""
    answered = 0

    @settings(max_examples=60, deadline=None, database=None)
    @given(sql=valid_queries())
    def count(sql: str) -> None:
        nonlocal answered
        try:
            engine.query("shifts", sql, epsilon=0.01, delta=1e-7)
            answered += 1
        except CoopdpError:
            pass

    count()
    assert answered >= 20
