"""Fuzzing the front end: whatever SQL arrives, the engine answers within its charge or refuses with a typed error.

Never an unhandled exception, never a hang, never a charge for a refusal, and
never a planted data value in what comes back.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.app import create_app
from api.settings import Settings
from engine import Engine
from engine.errors import CoopdpError, InternalError
from tests.api.in_process import serve
from tests.privacy.attacks.test_corpus import assert_only_finite_numbers
from tests.privacy.deadline import within
from tests.privacy.pools import PLANTED, shows_planted, write_planted
from tests.privacy.sql_strategies import hostile_queries, nearly_valid_queries, totality_queries, valid_queries

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
EPSILONS = st.sampled_from([0.01, 0.3, 1.0])


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    root = tmp_path_factory.mktemp("fuzz")
    created = Engine.from_policies(write_planted(root), ledger=f"sqlite:///{root / 'ledger.db'}")
    yield created
    created.close()


def assert_answered_within_the_charge_or_refused(
    engine: Engine, sql: str, epsilon: float, dataset: str = "shifts"
) -> str:
    """Check one outcome; returns what the caller was shown (the error message, or the result document)."""
    before = engine.ledger.spent(dataset).dataset
    try:
        result = within(10, lambda: engine.query(dataset, sql.replace("shifts", dataset), epsilon=epsilon, delta=1e-7))
    except InternalError:
        raise
    except CoopdpError as error:
        assert engine.ledger.spent(dataset).dataset == before, f"refused ({error.code}) but charged"
        shown = error.message
    else:
        charged = engine.ledger.spent(dataset).dataset - before
        if result.cached:
            assert charged.epsilon == 0
        else:
            assert charged == result.cost and result.cost.epsilon == Decimal(repr(epsilon))
        document = result.to_dict()
        assert_only_finite_numbers(document)
        shown = json.dumps(document, allow_nan=False)
    for planted in PLANTED:
        if planted.lower() not in sql.lower():
            assert not shows_planted(planted, shown)
    return shown


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


@settings(
    FUZZ, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)  # caplog: cleared per example
@given(sql=totality_queries(), epsilon=EPSILONS, dataset=st.sampled_from(["shifts", "dirty", "zshifts"]))
def test_hostile_pieces_on_hostile_pools_never_fail_after_the_charge(
    engine: Engine, caplog: pytest.LogCaptureFixture, sql: str, epsilon: float, dataset: str
) -> None:
    """Huge constants, ROUND digits, long LIKE patterns, exotic clauses, on pools holding NaN, ±inf and int64 extremes."""
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        assert_answered_within_the_charge_or_refused(engine, sql, epsilon, dataset)
    for planted in PLANTED:
        assert planted.lower() not in caplog.text.lower()


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT COUNT(*) * 1e308 * 10 AS x FROM shifts",
        "SELECT SUM(ROUND(hours, -1)) FROM shifts",
        "SELECT SUM(ROUND(hours, 400)) FROM shifts",
        "SELECT FLOOR(age) * 1000000000000000000 AS b, COUNT(*) FROM shifts GROUP BY b",
        "SELECT COUNT(*) FROM shifts WHERE city LIKE '" + "_" * 15_000 + "'",
        "SELECT COUNT(*) FROM shifts TABLESAMPLE (1 ROWS)",
        "SELECT SUM(hours) FROM (SELECT * EXCEPT (age) FROM shifts) AS t",
    ],
)
def test_over_http_the_same_pieces_are_never_a_500(tmp_path: Path, sql: str) -> None:
    """The FastAPI app in process: a refusal is 4xx with nothing charged, an answer 201 in strict JSON; never 500."""
    app = create_app(Settings(policies=write_planted(tmp_path), ledger=f"sqlite:///{tmp_path / 'ledger.db'}"))

    async def scenario(client: httpx.AsyncClient, engine: Engine, headers: dict[str, str]) -> None:
        body = {"dataset": "dirty", "sql": sql.replace("shifts", "dirty"), "epsilon": 0.5}
        response = await client.post("/v1/queries", json=body, headers=headers)
        spent = engine.ledger.spent("dirty").dataset.epsilon
        assert response.status_code in (201, 400, 403, 422), response.text
        assert (spent > 0) == (response.status_code == 201)
        json.dumps(json.loads(response.text, parse_constant=float), allow_nan=False)  # NaN/Infinity would raise
        for planted in PLANTED:
            assert not shows_planted(planted, response.text)

    serve(app, scenario)
