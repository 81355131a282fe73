"""The adversarial corpus as typed values: ``corpus.toml`` plus the queries too large to write by hand."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.sql import MAX_SQL_LENGTH

CORPUS_FILE = Path(__file__).with_name("corpus.toml")
ANSWERED = "answered"
CACHED = "cached"
DEFAULT_EPSILON = 0.5
DEFAULT_SECONDS = 10.0


@dataclass(frozen=True)
class Step:
    sql: str
    expect: frozenset[str]
    """The outcomes allowed: ``answered``, ``cached``, or error codes."""
    epsilon: Any = DEFAULT_EPSILON
    delta: Any = None


@dataclass(frozen=True)
class Attack:
    id: str
    category: str
    dataset: str
    steps: tuple[Step, ...]
    channel: str = "engine"
    seconds: float = DEFAULT_SECONDS
    concurrent: bool = False
    max_spent: float | None = None
    """For a race: the most ε the ledger may have charged at the end."""


def _step(raw: dict[str, Any]) -> Step:
    return Step(raw["sql"], frozenset(raw["expect"].split("|")), raw.get("epsilon", DEFAULT_EPSILON), raw.get("delta"))


def _attack(raw: dict[str, Any], steps: list[dict[str, Any]]) -> Attack:
    known = {"id", "category", "dataset", "sql", "epsilon", "delta", "expect", "steps", "channel", "seconds"}
    known |= {"concurrent", "max_spent"}
    unknown = set(raw) - known
    assert not unknown, f"{raw['id']}: unknown fields {unknown}"
    return Attack(
        raw["id"],
        raw["category"],
        raw.get("dataset", "shifts"),
        tuple(_step(step) for step in steps),
        raw.get("channel", "engine"),
        float(raw.get("seconds", DEFAULT_SECONDS)),
        raw.get("concurrent", False),
        raw.get("max_spent"),
    )


def _generated() -> list[Attack]:
    """Hostile machine-made SQL: each must be refused within two seconds, before it reaches the data."""

    def refused(id: str, sql: str, code: str = "unsupported") -> Attack:
        return Attack(id, "enormous", "shifts", (Step(sql, frozenset({code})),), seconds=2.0)

    ages = " OR ".join(f"age = {i}" for i in range(3_000))
    nested_case = "hours"
    for level in range(60):
        nested_case = f"CASE WHEN age > {level} THEN {nested_case} ELSE 0 END"
    ctes = ", ".join(f"t{i} AS (SELECT * FROM {'shifts' if i == 0 else f't{i - 1}'})" for i in range(300))
    return [
        refused("over-the-length-limit", f"SELECT COUNT(*) FROM shifts WHERE {ages}"),
        refused("just-over-the-length-limit", "SELECT COUNT(*) FROM shifts" + " " * MAX_SQL_LENGTH),
        refused("flat-arithmetic-chain", "SELECT SUM(hours" + " + 1" * 3_000 + ") FROM shifts"),
        refused("in-list-of-five-thousand", f"SELECT COUNT(*) FROM shifts WHERE age IN ({', '.join(['1'] * 5_000)})"),
        refused(
            "four-hundred-aggregates", "SELECT " + ", ".join(f"COUNT(*) AS c{i}" for i in range(400)) + " FROM shifts"
        ),
        refused("case-nested-sixty-deep", f"SELECT SUM({nested_case}) FROM shifts"),
        refused("not-chain", "SELECT COUNT(*) FROM shifts WHERE " + "NOT " * 3_000 + "age > 1"),
        refused("unary-minus-chain", "SELECT SUM(" + "- " * 3_000 + "hours) FROM shifts"),
        refused("three-hundred-chained-ctes", f"WITH {ctes} SELECT COUNT(*) FROM t299"),
        refused(
            "or-chain-of-a-thousand-members",
            "SELECT COUNT(*) FROM shifts WHERE " + " OR ".join(f"member_id = {i}" for i in range(1_000)),
        ),
    ]


def load() -> list[Attack]:
    document = tomllib.loads(CORPUS_FILE.read_text())
    attacks = [_attack(raw, [raw]) for raw in document["attack"]]
    attacks += [_attack(raw, raw["steps"]) for raw in document["sequence"]]
    attacks += _generated()
    ids = [attack.id for attack in attacks]
    assert len(ids) == len(set(ids)), "corpus ids must be unique"
    return attacks
