"""Failing closed and fair sharing, in process: a ledger that cannot be written, a key over its in-flight limit."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from api.app import create_app
from api.settings import Settings
from engine import Engine
from tests.api.in_process import serve

SQL = "SELECT COUNT(*) FROM shifts WHERE age > 30"


@pytest.fixture
def app(dataset: Callable[..., Path], tmp_path: Path) -> FastAPI:
    ledger = f"sqlite:///{tmp_path / 'ledger.db'}"
    return create_app(Settings(policies=dataset(), ledger=ledger, max_concurrent_queries_per_key=1))


def test_an_unwritable_ledger_answers_503_and_releases_nothing(app: FastAPI) -> None:
    async def scenario(client: httpx.AsyncClient, engine: Engine, headers: dict[str, str]) -> None:
        connection = engine.ledger.database._connection  # type: ignore[attr-defined]
        connection.execute("PRAGMA query_only = ON")
        response = await client.post(
            "/v1/queries", json={"dataset": "shifts", "sql": SQL, "epsilon": 0.5}, headers=headers
        )
        connection.execute("PRAGMA query_only = OFF")
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "ledger_unavailable"
        assert "rows" not in response.text
        assert engine.ledger.releases() == []
        assert (await client.get("/healthz")).status_code == 200

    serve(app, scenario)


def test_a_key_over_its_in_flight_limit_gets_429(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario(client: httpx.AsyncClient, engine: Engine, headers: dict[str, str]) -> None:
        inside, release = threading.Event(), threading.Event()
        original = engine.query

        def slow_query(*args: object, **kwargs: object) -> object:
            inside.set()
            release.wait(timeout=10)
            return original(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(engine, "query", slow_query)
        body = {"dataset": "shifts", "sql": SQL, "epsilon": 0.5}
        first = asyncio.create_task(client.post("/v1/queries", json=body, headers=headers))
        assert await asyncio.to_thread(inside.wait, 10)
        second = await client.post("/v1/queries", json={**body, "epsilon": 0.25}, headers=headers)
        release.set()
        assert second.status_code == 429 and second.json()["error"]["code"] == "rate_limited"
        assert (await first).status_code == 201

    serve(app, scenario)
