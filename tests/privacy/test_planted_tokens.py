"""The planted-value check of the attack corpus and the fuzzer: whole tokens only, and still able to fail."""

from __future__ import annotations

import json

import pytest

from tests.privacy.attacks.corpus import Step
from tests.privacy.attacks.test_corpus import assert_nothing_planted_leaks
from tests.privacy.channels import Outcome
from tests.privacy.pools import PLANTED_CITY, PLANTED_EMAIL, PLANTED_HOURS, shows_planted

STEP = Step("SELECT region, SUM(hours) FROM shifts GROUP BY region", frozenset({"answered"}))


def _answer(rows: list[list[object]], **extra: object) -> Outcome:
    document = {"columns": ["region", "total"], "rows": rows, "accuracy": {"total": 4.6}, **extra}
    return Outcome(None, document, json.dumps(document))


@pytest.mark.parametrize(
    "outcome",
    [
        _answer([[PLANTED_CITY, 3.0]]),
        _answer([["north", PLANTED_HOURS]]),
        _answer([["north", 987654]]),
        _answer([["north", 1.0]], notes=[f"member {PLANTED_EMAIL} was dropped"]),
        _answer([["north", 1.0]], **{PLANTED_CITY.lower(): 1}),
        Outcome("invalid_sql", None, f'{{"error": {{"message": "no city {PLANTED_CITY}"}}}}'),
        Outcome("invalid_sql", None, "unknown member member7@members.example"),
    ],
)
def test_a_planted_value_in_a_key_string_or_released_number_is_a_leak(outcome: Outcome) -> None:
    with pytest.raises(AssertionError, match="leaked"):
        assert_nothing_planted_leaks(STEP, outcome)


@pytest.mark.parametrize("noisy", [1987654.25, 0.9876543, 987654.5, 12.987654321, -3987654.0, 98765.4])
def test_a_noisy_number_holding_the_planted_digits_is_no_leak(noisy: float) -> None:
    assert_nothing_planted_leaks(STEP, _answer([["north", noisy]], accuracy={"total": noisy}))


def test_the_sql_may_name_what_it_asks_about() -> None:
    """A refusal that quotes the buyer's own SQL back shows nothing from the data."""
    step = Step(f"SELECT COUNT(*) FROM shifts WHERE city = '{PLANTED_CITY}'", frozenset({"policy_violation"}))
    assert_nothing_planted_leaks(step, Outcome("policy_violation", None, f"city = '{PLANTED_CITY}'"))
    assert shows_planted(PLANTED_CITY, f"city = '{PLANTED_CITY}'")
