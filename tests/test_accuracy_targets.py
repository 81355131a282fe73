"""Asking for accuracy, not ε: the least ε whose noise gives every named column at most its 95% half-width."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from api.app import create_app
from api.settings import Settings
from cli import app as cli
from engine import Engine
from engine.accounting import PrivacyRequest
from engine.accuracy_targets import part_targets, target_weights
from engine.engine import Ask
from engine.errors import PolicyViolation, UnknownColumn
from engine.mechanisms import NoisePlan, calibrate
from engine.planner import plan_query
from engine.sql import parse
from tests.api.in_process import serve
from tests.conftest import small_pool, write_dataset

SQL = "SELECT region, COUNT(*) AS n, SUM(hours) AS h, AVG(hours) AS a FROM shifts GROUP BY region"
TARGETS = {"n": 150.0, "h": 5000.0}
ZCDP_DELTA = 1e-6


@pytest.fixture(params=["pure", "zcdp"])
def mode_engine(request: pytest.FixtureRequest, dataset: Callable[..., Path], tmp_path: Path) -> Iterator[Engine]:
    """An engine over ``shifts`` under pure DP or zCDP (each query then needs ZCDP_DELTA)."""
    created = Engine.from_policies(dataset(accounting=request.param), ledger=f"sqlite:///{tmp_path / 'l.db'}")
    yield created
    created.close()


def _delta(engine: Engine) -> float | None:
    return ZCDP_DELTA if engine.policy("shifts").budget.accounting == "zcdp" else None


def _noise_at(engine: Engine, sql: str, targets: dict[str, float], epsilon: Decimal) -> NoisePlan:
    """The noise the targets' split gives at ``epsilon``: what the engine searches over."""
    policy = engine.policy("shifts")
    plan = plan_query(parse(sql), policy)
    request = PrivacyRequest.validate(policy.budget.max_epsilon_per_query, _delta(engine), policy.budget)
    request = dataclasses.replace(request, epsilon=epsilon)
    return calibrate(plan, request, target_weights(plan, request, part_targets(plan, targets)))


def _misses(engine: Engine, sql: str, targets: dict[str, float], epsilon: Decimal) -> bool:
    plan = plan_query(parse(sql), engine.policy("shifts"))
    noise = _noise_at(engine, sql, targets, epsilon)
    return any(noise.accuracy(index) > target for index, target in part_targets(plan, targets).items())


def test_a_dry_run_meets_every_target_with_the_least_epsilon(mode_engine: Engine) -> None:
    result = mode_engine.query("shifts", SQL, accuracy=TARGETS, delta=_delta(mode_engine), dry_run=True)
    assert all(result.accuracy[name] <= target for name, target in TARGETS.items())  # type: ignore[operator]
    assert result.accuracy_target == TARGETS and result.to_dict()["accuracy_target"] == TARGETS
    chosen = result.cost.epsilon
    assert len(chosen.as_tuple().digits) <= 6  # an exact, short decimal the ledger charges as it is
    assert not _misses(mode_engine, SQL, TARGETS, chosen)
    assert _misses(mode_engine, SQL, TARGETS, chosen * Decimal("0.99"))
    assert mode_engine.budgets()[0].spent.epsilon == 0


def test_the_targets_split_beats_an_even_split(mode_engine: Engine) -> None:
    """Per-part weights from the targets need less ε than the least even split that meets them."""
    delta = _delta(mode_engine)
    chosen = mode_engine.query("shifts", SQL, accuracy=TARGETS, delta=delta, dry_run=True).cost.epsilon
    even = mode_engine.query("shifts", SQL, epsilon=float(chosen), delta=delta, dry_run=True).accuracy
    assert any(even[name] > target for name, target in TARGETS.items())  # type: ignore[operator]


def test_a_release_charges_the_chosen_epsilon_and_is_reused(mode_engine: Engine) -> None:
    delta = _delta(mode_engine)
    dry = mode_engine.query("shifts", SQL, accuracy=TARGETS, delta=delta, dry_run=True)
    first = mode_engine.query("shifts", SQL, accuracy=TARGETS, delta=delta)
    assert first.cost == dry.cost and mode_engine.budgets()[0].spent.epsilon == dry.cost.epsilon
    assert all(first.accuracy[name] <= target for name, target in TARGETS.items())  # type: ignore[operator]
    assert first.accuracy_target == TARGETS
    again = mode_engine.query("shifts", SQL, accuracy={"N": 150, "h": 5000}, delta=delta)
    assert again.cached and again.rows == first.rows and again.accuracy_target == TARGETS
    (record,) = mode_engine.releases("shifts")
    assert record.sql.endswith("/* accuracy: h=5000.0, n=150.0 */") and record.cost == dry.cost


def test_explain_takes_accuracy_and_costs_what_a_dry_run_does(mode_engine: Engine) -> None:
    delta = _delta(mode_engine)
    dry = mode_engine.query("shifts", SQL, accuracy=TARGETS, delta=delta, dry_run=True)
    explained = mode_engine.explain("shifts", SQL, accuracy=TARGETS, delta=delta).to_dict()
    assert Decimal(str(explained["cost"]["epsilon"])) == dry.cost.epsilon


def test_above_the_per_query_cap_is_refused_with_the_epsilon_needed(mode_engine: Engine) -> None:
    with pytest.raises(PolicyViolation, match=r"needs epsilon (\d+\.?\d*), above this dataset's max_epsilon") as e:
        mode_engine.query("shifts", SQL, accuracy={"n": 5}, delta=_delta(mode_engine))
    needed = Decimal(e.value.message.split("needs epsilon ")[1].split(",")[0])
    assert needed > 2 and not _misses(mode_engine, SQL, {"n": 5}, needed)
    assert mode_engine.budgets()[0].spent.epsilon == 0 and mode_engine.releases() == []


def test_above_the_budget_left_is_refused_with_the_epsilon_needed(engine: Engine) -> None:
    needed = engine.query("shifts", SQL, accuracy=TARGETS, dry_run=True).cost.epsilon
    assert needed > Decimal("0.1")
    for age in range(4):  # distinct queries: a repeat would be the stored release, free
        engine.query("shifts", f"SELECT COUNT(*) FROM shifts WHERE age > {age}", epsilon=2.0)
    engine.query("shifts", "SELECT COUNT(*) FROM shifts WHERE age > 40", epsilon=1.9)
    with pytest.raises(PolicyViolation, match=f"needs epsilon {needed}, above the epsilon left"):
        engine.query("shifts", SQL, accuracy=TARGETS)
    assert engine.budgets()[0].spent.epsilon == Decimal("9.9")


@pytest.mark.parametrize(
    ("ask", "error", "message"),
    [
        ({}, PolicyViolation, "exactly one of epsilon or accuracy"),
        ({"epsilon": 1.0, "accuracy": {"n": 50}}, PolicyViolation, "exactly one of epsilon or accuracy"),
        ({"accuracy": {}}, PolicyViolation, "names no column"),
        ({"accuracy": {"nope": 5}}, UnknownColumn, "'nope'"),
        ({"accuracy": {"n": 0}}, PolicyViolation, "positive, finite"),
        ({"accuracy": {"n": -3}}, PolicyViolation, "positive, finite"),
        ({"accuracy": {"n": math.nan}}, PolicyViolation, "positive, finite"),
        ({"accuracy": {"n": math.inf}}, PolicyViolation, "positive, finite"),
        ({"accuracy": {"a": 1.0}}, PolicyViolation, "'a' is known only after release"),
        ({"accuracy": {"n": 50}, "weights": {"n": 2}}, PolicyViolation, "weights or accuracy"),
    ],
)
def test_bad_asks_are_refused_before_any_charge(engine: Engine, ask: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        engine.query("shifts", SQL, **ask)
    assert engine.budgets()[0].spent.epsilon == 0


def test_the_cli_takes_accuracy(engine: Engine, tmp_path: Path) -> None:
    policies = engine.policy("shifts").source_paths[0].parent.parent / "policies"
    env = {"COOPDP_LEDGER": f"sqlite:///{tmp_path / 'cli.db'}"}
    base = ["query", "--dataset", "shifts", "--format", "json", "--policies", str(policies)]
    runner = CliRunner()
    dry = runner.invoke(cli, [*base, "--dry-run", "--accuracy", "n=150", "--accuracy", "h=5000", SQL], env=env)
    assert dry.exit_code == 0, dry.stderr
    document = json.loads(dry.stdout)
    assert document["accuracy_target"] == TARGETS and document["accuracy"]["n"] <= 150
    shown = runner.invoke(cli, [*base[:3], "--policies", str(policies), "--accuracy", "n=100", SQL], env=env)
    assert shown.exit_code == 0 and "the least ε for n ± 100" in shown.stdout
    neither = runner.invoke(cli, [*base, SQL], env=env)
    assert neither.exit_code == 2 and json.loads(neither.stderr)["error"]["code"] == "policy_violation"
    refused = runner.invoke(cli, [*base, "--accuracy", "n=5", SQL], env=env)
    assert refused.exit_code == 2 and "needs epsilon" in json.loads(refused.stderr)["error"]["message"]


def test_http_takes_accuracy(dataset: Callable[..., Path], tmp_path: Path) -> None:
    app = create_app(Settings(policies=dataset(), ledger=f"sqlite:///{tmp_path / 'ledger.db'}"))

    async def scenario(client: httpx.AsyncClient, engine: Engine, headers: dict[str, str]) -> None:
        body = {"dataset": "shifts", "sql": SQL, "accuracy": TARGETS}
        dry = await client.post("/v1/queries", json={**body, "dry_run": True}, headers=headers)
        assert dry.status_code == 200 and dry.json()["accuracy_target"] == TARGETS
        released = await client.post("/v1/queries", json=body, headers=headers)
        assert released.status_code == 201 and released.json()["cost"] == dry.json()["cost"]
        assert released.json()["accuracy"]["n"] <= 150
        for bad in ({**body, "epsilon": 1.0}, {"dataset": "shifts", "sql": SQL}):
            refused = await client.post("/v1/queries", json=bad, headers=headers)
            assert refused.status_code == 422 and refused.json()["error"]["code"] == "invalid_request"
        too_fine = await client.post("/v1/queries", json={**body, "accuracy": {"n": 5}}, headers=headers)
        assert too_fine.status_code == 400 and "needs epsilon" in too_fine.json()["error"]["message"]

    serve(app, scenario)


QUERIES = (
    "SELECT COUNT(*) AS n, SUM(hours) AS h FROM shifts",
    SQL,
    "SELECT region, COUNT(*) AS n, SUM(age) AS h FROM shifts WHERE age > 30 GROUP BY region",
)


@pytest.fixture(scope="module")
def roomy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Engine]]:
    """Pure and zCDP engines with budgets no example can exhaust."""
    engines = {}
    for accounting in ("pure", "zcdp"):
        root = tmp_path_factory.mktemp(accounting)
        policies = write_dataset(
            root, small_pool(), accounting=accounting, epsilon=1e9, delta=0.5, max_epsilon_per_query=50.0
        )
        engines[accounting] = Engine.from_policies(policies, ledger=f"sqlite:///{root / 'l.db'}")
    yield engines
    for created in engines.values():
        created.close()


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    accounting=st.sampled_from(["pure", "zcdp"]),
    sql=st.sampled_from(QUERIES),
    targets=st.dictionaries(
        st.sampled_from(["n", "h"]), st.floats(min_value=20.0, max_value=1e5, allow_nan=False), min_size=1
    ),
)
def test_the_chosen_epsilon_meets_random_targets_and_is_what_is_charged(
    roomy: dict[str, Engine], accounting: str, sql: str, targets: dict[str, float]
) -> None:
    engine = roomy[accounting]
    delta = ZCDP_DELTA if accounting == "zcdp" else None
    before = engine.budgets()[0].spent
    try:
        result = engine.query("shifts", sql, accuracy=targets, delta=delta)
    except PolicyViolation as refused:
        assert "needs epsilon" in refused.message  # above the per-query cap
        assert engine.budgets()[0].spent == before
        return
    assert all(result.accuracy[name] <= target for name, target in targets.items())  # type: ignore[operator]
    if not result.cached:
        planned = engine._plan("shifts", sql, Ask(None, delta, None, targets), None)
        assert result.cost == planned.noise.cost == engine.budgets()[0].spent - before
