"""Splitting a query's ε across its answers: equal shares by default, or in proportion to the buyer's weights."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from engine import Engine
from engine.accounting import Accounting, PrivacyRequest
from engine.errors import PolicyViolation, UnknownColumn
from engine.mechanisms import calibrate, part_weights
from engine.planner import plan_query
from engine.sql import parse

SQL = "SELECT COUNT(*) AS n, SUM(hours) AS h, AVG(hours) AS a, COUNT(hours) AS c FROM shifts"


def _losses(engine: Engine, sql: str, weights: dict[str, float] | None, epsilon: float, delta: float = 0.0):
    """Each part's loss by OpenDP's own map (ε under pure DP, ρ under zCDP), and the plan."""
    policy = engine.policy("shifts")
    plan = plan_query(parse(sql), policy)
    request = PrivacyRequest.validate(epsilon, delta or None, policy.budget)
    noise = calibrate(plan, request, part_weights(plan, weights) if weights else None)
    pure = noise.accounting is Accounting.PURE
    losses = [p.sensitivity / p.scale if pure else (p.sensitivity / p.scale) ** 2 / 2 for p in noise.parts]
    return plan, noise, losses


def test_without_weights_every_part_gets_an_equal_share(engine: Engine) -> None:
    _, noise, losses = _losses(engine, SQL, None, 1.0)
    assert len(losses) == 4  # count(*), sum, count(hours) shared by AVG and COUNT(hours), AVG's centred sum
    assert all(loss == pytest.approx(0.25) for loss in losses)
    assert math.fsum(losses) <= 1.0 and noise.cost.epsilon == Decimal("1.0")


def test_weights_split_epsilon_in_proportion(engine: Engine) -> None:
    plan, noise, losses = _losses(engine, SQL, {"n": 5, "A": 2}, 1.0)
    by_part = dict(zip(plan.parts, losses, strict=True))
    count_rows, hours_sum, hours_count, centred = plan.parts
    # n has 5 shares; AVG's two parts 2 each (COUNT(hours) reads one of them too, weight 1: the larger wins); SUM 1.
    assert by_part[count_rows] == pytest.approx(0.5)
    assert by_part[hours_count] == pytest.approx(0.2) and by_part[centred] == pytest.approx(0.2)
    assert by_part[hours_sum] == pytest.approx(0.1)
    assert math.fsum(losses) <= 1.0
    assert noise.cost.epsilon == Decimal("1.0")  # the cost is exactly what was asked


def test_zcdp_weights_split_rho_in_proportion(dataset: Callable[..., Path]) -> None:
    policies = dataset(accounting="zcdp", delta=1e-5)
    engine = Engine.from_policies(policies, ledger=f"sqlite:///{policies.parent / 'ledger.db'}")
    _, _, losses = _losses(engine, "SELECT COUNT(*) AS n, SUM(hours) AS h FROM shifts", {"n": 3}, 1.0, 1e-6)
    assert losses[0] / losses[1] == pytest.approx(3.0)


def test_a_heavier_weight_buys_accuracy(engine: Engine) -> None:
    sql = "SELECT COUNT(*) AS n, SUM(hours) AS h FROM shifts"
    even = engine.query("shifts", sql, epsilon=1.0, dry_run=True).accuracy
    skewed = engine.query("shifts", sql, epsilon=1.0, dry_run=True, weights={"n": 9}).accuracy
    assert skewed["n"] == pytest.approx(even["n"] * 0.5 / 0.9, rel=0.02)  # ε 0.9 instead of 0.5
    assert skewed["h"] == pytest.approx(even["h"] * 5, rel=0.02)  # ε 0.1 instead of 0.5


def test_weights_also_split_private_key_thresholds_and_quantiles(dataset: Callable[..., Path]) -> None:
    policies = dataset(epsilon=10.0, max_epsilon_per_query=2.0)
    engine = Engine.from_policies(policies, ledger=f"sqlite:///{policies.parent / 'ledger.db'}")
    sql = "SELECT city, COUNT(DISTINCT member_id) AS m, MEDIAN(hours) AS med FROM shifts GROUP BY city"
    plan, even, _ = _losses(engine, sql, None, 1.0, 1e-6)
    _, weighted, _ = _losses(engine, sql, {"med": 4}, 1.0, 1e-6)
    assert weighted.threshold is not None and weighted.loss <= 1.0
    median = next(i for i, part in enumerate(plan.parts) if part.alpha == 0.5)
    others = [i for i in range(len(plan.parts)) if i != median]
    # Two parts: the units per city (threshold, weight 1) and the median (weight 4): ε shares 1/5 and 4/5, not 1/2.
    assert weighted.parts[median].scale == pytest.approx(even.parts[median].scale * (1 / 2) / (4 / 5))
    assert all(weighted.parts[i].scale == pytest.approx(even.parts[i].scale * (1 / 2) / (1 / 5)) for i in others)
    result = engine.query("shifts", sql, epsilon=1.0, delta=1e-6, weights={"med": 4})
    assert result.private_keys == ["city"]


@pytest.mark.parametrize(
    ("weights", "error", "message"),
    [
        ({"nothing": 2}, UnknownColumn, "'nothing', not output columns of the query \\(n, h"),
        ({"n": 0}, PolicyViolation, "positive"),
        ({"n": -1}, PolicyViolation, "positive"),
        ({"n": math.nan}, PolicyViolation, "positive"),
        ({"n": math.inf}, PolicyViolation, "positive"),
        ({"n": 1e-7, "h": 1}, PolicyViolation, "factor"),
    ],
)
def test_bad_weights_are_refused_before_any_charge(engine: Engine, weights: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        engine.query("shifts", SQL, epsilon=1.0, weights=weights)
    assert engine.budgets()[0].spent.epsilon == 0


def test_weights_are_part_of_the_release_and_of_its_reuse(engine: Engine) -> None:
    sql = "SELECT COUNT(*) AS n, SUM(hours) AS h FROM shifts"
    first = engine.query("shifts", sql, epsilon=0.5, weights={"n": 3})
    again = engine.query("shifts", sql, epsilon=0.5, weights={"N": 3.0})
    other = engine.query("shifts", sql, epsilon=0.5)
    assert again.cached and again.rows == first.rows
    assert not other.cached  # a different split is a different release
    logged = [record.sql for record in engine.ledger.releases("shifts")]
    assert any(text.endswith("/* weights: n=3.0 */") for text in logged)


def test_the_cli_takes_weights(engine: Engine, tmp_path: Path) -> None:
    policies = engine.policy("shifts").source_paths[0].parent.parent / "policies"
    runner = CliRunner()
    env = {"COOPDP_LEDGER": f"sqlite:///{tmp_path / 'cli.db'}"}
    base = [
        "query",
        "--dataset",
        "shifts",
        "--epsilon",
        "1",
        "--dry-run",
        "--format",
        "json",
        "--policies",
        str(policies),
    ]
    sql = "SELECT COUNT(*) AS n, SUM(hours) AS h FROM shifts"
    even = json.loads(runner.invoke(app, [*base, sql], env=env).stdout)["accuracy"]
    weighted = runner.invoke(app, [*base, "--weight", "n=9", sql], env=env)
    assert weighted.exit_code == 0
    assert json.loads(weighted.stdout)["accuracy"]["n"] < even["n"]
    assert runner.invoke(app, [*base, "--weight", "n", sql], env=env).exit_code == 2
    unknown = runner.invoke(app, [*base, "--weight", "x=2", sql], env=env)
    assert unknown.exit_code == 2 and json.loads(unknown.stderr)["error"]["code"] == "unknown_column"
