"""``Engine.explain``: the golden explains, and that explaining reads no data, charges nothing and agrees with a query."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import pytest

from engine import Engine
from engine.errors import CoopdpError, PolicyViolation
from engine.explain import KeyKind, Mechanism
from tests.golden.explain import Case, cases, explained, golden_engine

CASES = cases()
GROUPED = "SELECT region, COUNT(*) AS n, SUM(hours) AS total FROM shifts GROUP BY region"


@pytest.fixture(scope="module")
def golden() -> Iterator[Engine]:
    with golden_engine() as engine:
        yield engine


def test_there_are_golden_explains_for_every_kind_of_query() -> None:
    assert len(CASES) >= 20
    assert all(case.expected_path.exists() for case in CASES), "run: python -m tests.golden.explain --update"


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_golden_explain(golden: Engine, case: Case) -> None:
    assert explained(golden, case) == case.expected_path.read_text(), (
        "the explain changed; if intended: python -m tests.golden.explain --update, and review the diff"
    )


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_explain_refuses_as_the_query_does(golden: Engine, case: Case) -> None:
    """The same typed error, or none, as a dry run of the same query."""
    request = {"epsilon": case.epsilon, "delta": case.delta, "buyer": case.buyer, "weights": case.weights or None}
    outcomes: list[tuple[type[CoopdpError], str] | None] = []
    for attempt in (
        lambda: golden.query(case.dataset, case.sql, dry_run=True, **request).to_dict(),  # type: ignore[arg-type]
        lambda: golden.explain(case.dataset, case.sql, **request).to_dict(),  # type: ignore[arg-type]
    ):
        try:
            json.dumps(attempt(), allow_nan=False)  # strict JSON
            outcomes.append(None)
        except CoopdpError as refused:
            outcomes.append((type(refused), refused.message))
    assert outcomes[0] == outcomes[1]
    assert (outcomes[0] is not None) == case.name.startswith("refused_")


def test_explain_reads_no_data_and_charges_nothing(engine: Engine) -> None:
    for path in engine.policy("shifts").source_paths:
        path.unlink()
    explanation = engine.explain("shifts", GROUPED, epsilon=1.0)
    assert [part.kind.value for part in explanation.parts] == ["count_rows", "sum"]
    assert engine.ledger.spent("shifts").dataset.epsilon == 0
    assert engine.ledger.releases() == []


def test_explain_agrees_with_the_dry_run(engine: Engine) -> None:
    dry_run = engine.query("shifts", GROUPED, epsilon=0.8, dry_run=True, weights={"n": 3})
    explanation = engine.explain("shifts", GROUPED, epsilon=0.8, weights={"n": 3})
    assert explanation.cost.charged == dry_run.cost
    assert explanation.remaining == dry_run.remaining
    count, total = explanation.parts
    assert count.accuracy == dry_run.accuracy["n"] and total.accuracy == dry_run.accuracy["total"]
    assert math.isclose(count.loss, 3 * total.loss) and math.isclose(count.share + total.share, 1.0)
    assert math.isclose(count.loss + total.loss, explanation.cost.loss)
    assert count.mechanism is Mechanism.LAPLACE and count.calibrated_to == count.sensitivity.l1 == 10
    assert total.bounds == (0.0, 60.0) and total.sensitivity.l1 == 600 * total.scale  # type: ignore[operator]


def test_private_keys_show_their_threshold_and_its_delta(engine: Engine) -> None:
    explanation = engine.explain("shifts", "SELECT city, COUNT(*) FROM shifts GROUP BY city", epsilon=1.0, delta=1e-7)
    (key,) = explanation.keys
    assert key.kind is KeyKind.PRIVATE and key.count is None
    threshold = explanation.threshold
    assert threshold is not None and 0 < threshold.delta <= explanation.cost.threshold_delta == 1e-7
    assert explanation.parts[threshold.part_index].mechanism is Mechanism.LAPLACE_THRESHOLD
    assert explanation.to_dict()["threshold"]["value"] == threshold.value


def test_explain_is_refused_like_a_query(engine: Engine) -> None:
    with pytest.raises(PolicyViolation, match="delta > 0"):
        engine.explain("shifts", "SELECT city, COUNT(*) FROM shifts GROUP BY city", epsilon=1.0)
