"""Every entry of the adversarial corpus, run against the planted pools on a fresh ledger.

For each request: the outcome is the one expected; a refusal charges nothing;
an answer charges exactly the cost it reports (the ε asked) and holds only
finite numbers; a repeat hands back the stored release (same query id, same
rows, no charge); nothing planted in the data shows up in anything the caller
sees; and every outcome arrives within the entry's time limit.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from engine.accounting import Cost
from tests.api.conftest import LiveServer, running_server
from tests.privacy.attacks.corpus import ANSWERED, CACHED, Attack, Step, load
from tests.privacy.channels import (
    Channel,
    CliChannel,
    EngineChannel,
    HttpChannel,
    Outcome,
    Request,
    is_finite_number,
    spent,
)
from tests.privacy.deadline import within
from tests.privacy.pools import PLANTED, PLANTED_DATASETS, shows_planted, write_planted

ATTACKS = load()


@pytest.fixture(scope="module")
def policies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_planted(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A real server over the planted pools, for the entries sent over HTTP (one ledger for all of them)."""
    with running_server(tmp_path_factory.mktemp("corpus_http"), PLANTED_DATASETS) as server:
        yield server


def label(outcome: Outcome) -> str:
    if outcome.code is not None:
        return outcome.code
    assert outcome.document is not None
    return CACHED if outcome.document["cached"] else ANSWERED


def assert_nothing_planted_leaks(step: Step, outcome: Outcome) -> None:
    """No planted value the SQL does not name shows, as a whole token, in what the caller saw."""
    for planted in PLANTED:
        if planted.lower() not in step.sql.lower():
            assert not shows_planted(planted, outcome.text), f"{planted!r} leaked: {outcome.text[:500]}"


def assert_only_finite_numbers(document: dict[str, Any]) -> None:
    for row in document["rows"]:
        for cell in row:
            assert cell is None or isinstance(cell, (str, bool)) or is_finite_number(cell), row
    for half_width in document["accuracy"].values():
        assert half_width is None or is_finite_number(half_width)


def check_step(step: Step, outcome: Outcome, before: Cost, after: Cost, answers: list[dict[str, Any]]) -> None:
    assert label(outcome) in step.expect, outcome.text[:500]
    assert_nothing_planted_leaks(step, outcome)
    if label(outcome) != ANSWERED:
        assert after == before, "a refused or repeated query must cost nothing"
    if outcome.document is None:
        return
    document = outcome.document
    assert_only_finite_numbers(document)
    if label(outcome) == CACHED:
        (stored,) = [answer for answer in answers if answer["query_id"] == document["query_id"]]
        assert document["rows"] == stored["rows"] and document["cost"] == {"epsilon": 0.0, "delta": 0.0}
        return
    charged = after - before
    assert charged.epsilon == Decimal(repr(float(step.epsilon))) and document["cost"] == charged.to_dict()
    answers.append(document)


def run_in_order(attack: Attack, channel: Channel) -> None:
    answers: list[dict[str, Any]] = []
    for step in attack.steps:
        before = spent(channel.ledger_url, attack.dataset)
        outcome = channel.ask(Request(attack.dataset, step.sql, step.epsilon, step.delta))
        check_step(step, outcome, before, spent(channel.ledger_url, attack.dataset), answers)


def run_racing(attack: Attack, channel: Channel) -> None:
    """All steps at once, each through its own engine (as several server processes would)."""
    outcomes: list[Outcome] = [Outcome("not run", None, "")] * len(attack.steps)
    ledger_url = channel.ledger_url

    def ask(index: int, step: Step) -> None:
        outcomes[index] = channel.ask(Request(attack.dataset, step.sql, step.epsilon, step.delta))

    spent(ledger_url, attack.dataset)  # create the ledger's tables before the race
    threads = [threading.Thread(target=ask, args=pair) for pair in enumerate(attack.steps)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    charged = Decimal(0)
    for step, outcome in zip(attack.steps, outcomes, strict=True):
        assert label(outcome) in step.expect, outcome.text[:500]
        assert_nothing_planted_leaks(step, outcome)
        if label(outcome) == ANSWERED:
            assert outcome.document is not None
            charged += Decimal(repr(outcome.document["cost"]["epsilon"]))
    total = spent(ledger_url, attack.dataset).epsilon
    assert total == charged and attack.max_spent is not None and total <= Decimal(repr(attack.max_spent))
    assert any(label(outcome) == ANSWERED for outcome in outcomes)


def test_the_corpus_is_large_and_covers_every_kind_of_attack() -> None:
    assert len(ATTACKS) >= 80
    categories = {attack.category for attack in ATTACKS}
    assert {"differencing", "isolation", "near-unique-group", "raw-rows", "subquery", "union", "window"} <= categories
    assert {
        "order-limit",
        "join",
        "extremes",
        "count-distinct",
        "dirty-data",
        "epsilon-edge",
        "budget-race",
    } <= categories
    assert {"repeat", "quoting", "enormous", "error-echo"} <= categories
    assert {attack.channel for attack in ATTACKS} == {"engine", "cli", "http"}


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda attack: attack.id)
def test_attack_gets_its_expected_outcome(
    attack: Attack, policies: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    channel: Channel
    if attack.channel == "http":
        server: LiveServer = request.getfixturevalue("live")
        channel = HttpChannel(server.url, server.buyer_key, server.ledger_url)
    elif attack.channel == "cli":
        channel = CliChannel(policies, ledger_url)
    else:
        channel = EngineChannel(policies, ledger_url)
    run = run_racing if attack.concurrent else run_in_order
    within(attack.seconds * len(attack.steps), lambda: run(attack, channel))
