"""Golden explains: each ``queries/NAME.sql`` beside ``queries/NAME.txt``, the text ``coopdp explain`` prints for it.

A ``.sql`` file starts with ``-- key: value`` header lines (``dataset``, ``epsilon``, and optionally
``delta``, ``buyer``, ``weights: col=w, col=w``); the rest is the query. A refused query's ``.txt`` holds
its error code and message. The policies are ``policies/`` here (explain reads no data; the one-row CSV
files in ``sources/`` exist only because a policy's source must). Regenerate after an intended change, and review the diff::

    python -m tests.golden.explain --update
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from engine import Engine
from engine.errors import CoopdpError
from engine.explain_text import render

HERE = Path(__file__).parent
QUERIES = HERE / "queries"
POLICIES = HERE / "policies"
_HEADER = "-- "


@dataclass(frozen=True)
class Case:
    """One golden query and the request it is explained for."""

    name: str
    dataset: str
    epsilon: float
    sql: str
    delta: float | None = None
    buyer: str | None = None
    weights: dict[str, float] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> Case:
        header: dict[str, str] = {}
        body: list[str] = []
        for line in path.read_text().splitlines():
            if line.startswith(_HEADER) and not body:
                key, _, value = line.removeprefix(_HEADER).partition(":")
                header[key.strip()] = value.strip()
            else:
                body.append(line)
        weights = dict(pair.split("=") for pair in header["weights"].split(", ")) if "weights" in header else {}
        return cls(
            name=path.stem,
            dataset=header["dataset"],
            epsilon=float(header["epsilon"]),
            sql="\n".join(body).strip(),
            delta=float(header["delta"]) if "delta" in header else None,
            buyer=header.get("buyer"),
            weights={column: float(weight) for column, weight in weights.items()},
        )

    @property
    def expected_path(self) -> Path:
        return QUERIES / f"{self.name}.txt"


def cases() -> list[Case]:
    return [Case.read(path) for path in sorted(QUERIES.glob("*.sql"))]


@contextmanager
def golden_engine() -> Iterator[Engine]:
    """An engine over the golden policies with a fresh, empty ledger (so the remaining budget is the whole one)."""
    with tempfile.TemporaryDirectory() as directory:
        engine = Engine.from_policies(POLICIES, ledger=f"sqlite:///{Path(directory) / 'ledger.db'}")
        try:
            yield engine
        finally:
            engine.close()


def explained(engine: Engine, case: Case) -> str:
    """What ``coopdp explain`` prints for the case: the explanation, or the refusal's code and message."""
    try:
        explanation = engine.explain(
            case.dataset,
            case.sql,
            epsilon=case.epsilon,
            delta=case.delta,
            buyer=case.buyer,
            weights=case.weights or None,
        )
    except CoopdpError as error:
        return f"error [{error.code}]: {error.message}\n"
    return render(explanation)
