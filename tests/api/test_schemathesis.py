"""Schemathesis over the live server's OpenAPI schema: whatever it sends, never a 5xx.

The schema is the app's own (``create_app(...).openapi()``, built without
starting anything, and checked equal to what the live server serves):
``schemathesis.pytest.from_fixture`` breaks on pytest 9 (it writes
``request.node._nodeid``). The buyer run shares the session server (a buyer
cannot move budgets); the steward run gets a server of its own, since it sets
budgets and quotas at random.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from api.app import create_app
from api.settings import Settings
from tests.api.conftest import LiveServer, running_server

OPENAPI = create_app(Settings(policies=Path("unused"))).openapi()
schema = schemathesis.openapi.from_dict(OPENAPI)

BOUNDED = settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@pytest.fixture(scope="module")
def steward_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with running_server(tmp_path_factory.mktemp("coopdp_fuzz"), {"shifts": {"epsilon": 10.0}}) as live:
        yield live


def test_the_live_server_serves_this_schema(server: LiveServer) -> None:
    assert httpx.get(f"{server.url}/openapi.json").json() == OPENAPI


@schema.parametrize()
@BOUNDED
def test_no_server_error_for_a_buyer(case: schemathesis.Case, server: LiveServer) -> None:
    case.call_and_validate(
        base_url=server.url, headers={"Authorization": f"Bearer {server.buyer_key}"}, checks=[not_a_server_error]
    )


@schema.parametrize()
@BOUNDED
def test_no_server_error_for_a_steward(case: schemathesis.Case, steward_server: LiveServer) -> None:
    case.call_and_validate(
        base_url=steward_server.url,
        headers={"Authorization": f"Bearer {steward_server.steward_key}"},
        checks=[not_a_server_error],
    )
