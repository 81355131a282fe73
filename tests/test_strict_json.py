"""Every JSON document coopdp writes is strict JSON: no NaN or Infinity, on the CLI, over HTTP and from to_dict()."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from typer.testing import CliRunner

from api.app import create_app
from api.settings import Settings
from cli import app as cli
from engine import Engine
from tests.api.in_process import serve

OVERFLOWING = "SELECT COUNT(*) * 1e308 * 10 AS x, COUNT(*) / 0 AS y, -COUNT(*) * 1e308 * 10 AS z FROM shifts"


def strict(text: str) -> Any:
    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_the_cli_prints_strict_json(dataset: Callable[..., Path]) -> None:
    policies = dataset()
    result = CliRunner().invoke(
        cli,
        [
            "query",
            "--dataset",
            "shifts",
            "--epsilon",
            "0.5",
            "--format",
            "json",
            "--policies",
            str(policies),
            OVERFLOWING,
        ],
    )
    assert result.exit_code == 0, result.output
    document = strict(result.stdout)
    assert document["rows"] == [[None, None, None]]
    assert len(document["notes"]) == 3


def test_http_answers_strict_json(dataset: Callable[..., Path], tmp_path: Path) -> None:
    app = create_app(Settings(policies=dataset(), ledger=f"sqlite:///{tmp_path / 'ledger.db'}"))

    async def scenario(client: httpx.AsyncClient, engine: Engine, headers: dict[str, str]) -> None:
        body = {"dataset": "shifts", "sql": OVERFLOWING, "epsilon": 0.5}
        response = await client.post("/v1/queries", json=body, headers=headers)
        assert response.status_code == 201, response.text
        assert strict(response.text)["rows"] == [[None, None, None]]
        stored = await client.get(f"/v1/queries/{response.json()['query_id']}", headers=headers)
        assert strict(stored.text)["rows"] == [[None, None, None]]

    serve(app, scenario)


def test_to_dict_is_strict_json(engine: Engine) -> None:
    document = engine.query("shifts", OVERFLOWING, epsilon=0.5).to_dict()
    strict(json.dumps(document, allow_nan=False))
    assert all(half_width is None for half_width in document["accuracy"].values())
