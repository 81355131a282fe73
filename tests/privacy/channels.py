"""One request, three ways in: the engine itself, the ``coopdp`` command, and the HTTP API as a buyer.

Each way returns an :class:`Outcome`: the error code (None when released),
the result document, and every character the caller saw (to search for leaks).
An exception that is not a typed :class:`CoopdpError` is never caught here:
it fails the test that made the request.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
from typer.testing import CliRunner

from cli import app as cli
from engine import Engine
from engine.accounting import Cost
from engine.errors import CoopdpError
from engine.ledger import open_ledger

USAGE = "usage"
"""The code given to a command line the ``coopdp`` command refuses to parse (exit 2, no JSON)."""


@dataclass(frozen=True)
class Request:
    dataset: str
    sql: str
    epsilon: Any
    delta: Any = None


@dataclass(frozen=True)
class Outcome:
    code: str | None
    """The error code; None when the query was answered."""
    document: dict[str, Any] | None
    """The result JSON, when answered."""
    text: str
    """Everything the caller was shown."""


class Channel(Protocol):
    ledger_url: str

    def ask(self, request: Request) -> Outcome: ...


@dataclass(frozen=True)
class EngineChannel:
    """The engine called directly (each request opens its own engine, as each CLI run or server process does)."""

    policies: Path
    ledger_url: str

    def ask(self, request: Request) -> Outcome:
        engine = Engine.from_policies(self.policies, ledger=self.ledger_url)
        try:
            result = engine.query(request.dataset, request.sql, epsilon=request.epsilon, delta=request.delta)
        except CoopdpError as error:
            return Outcome(error.code, None, json.dumps(error.to_dict()))
        finally:
            engine.close()
        document = result.to_dict()
        return Outcome(None, document, json.dumps(document))


@dataclass(frozen=True)
class CliChannel:
    """``coopdp query --format json``: the operator's command, its exit code and both output streams."""

    policies: Path
    ledger_url: str

    def ask(self, request: Request) -> Outcome:
        arguments = ["query", "--dataset", request.dataset, "--epsilon", str(request.epsilon), "--format", "json"]
        if request.delta is not None:
            arguments += ["--delta", str(request.delta)]
        arguments += ["--policies", str(self.policies), "--ledger", self.ledger_url, request.sql]
        run = CliRunner().invoke(cli, arguments)
        if run.exception is not None and not isinstance(run.exception, SystemExit):
            raise run.exception
        text = run.stdout + run.stderr
        if run.exit_code == 0:
            return Outcome(None, json.loads(run.stdout), text)
        try:
            error = json.loads(run.stderr)["error"]
        except (json.JSONDecodeError, KeyError, TypeError):
            assert run.exit_code == 2, text  # click's own usage errors
            return Outcome(USAGE, None, text)
        return Outcome(error["code"], None, text)


@dataclass(frozen=True)
class HttpChannel:
    """A buyer on a live server (tests/api/conftest.py's ``running_server``), sending raw JSON bodies."""

    url: str
    api_key: str
    ledger_url: str

    def ask(self, request: Request) -> Outcome:
        body: dict[str, Any] = {"dataset": request.dataset, "sql": request.sql, "epsilon": request.epsilon}
        if request.delta is not None:
            body["delta"] = request.delta
        response = httpx.post(
            f"{self.url}/v1/queries",
            content=json.dumps(body, allow_nan=True),  # a hostile client may send NaN and Infinity tokens
            headers={"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"},
            timeout=30.0,
        )
        assert response.status_code != 500, response.text
        if response.status_code in (200, 201):
            return Outcome(None, response.json(), response.text)
        return Outcome(response.json()["error"]["code"], None, response.text)


def spent(ledger_url: str, dataset: str) -> Cost:
    ledger = open_ledger(ledger_url)
    try:
        return ledger.spent(dataset).dataset
    finally:
        ledger.close()


def is_finite_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
