"""Contribution bounds over HTTP: ``explain_bias`` in the request, ``bounds``, ``value_bounds`` and ``bias`` in the
response and the client, the bounds a query chose in the public transparency log (a real server:
``tests/api/conftest.py``)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from api.client import ClientError, QueryResult
from tests.api.conftest import BuyerClient, LiveServer

BuyerFactory = Callable[..., BuyerClient]


@pytest.fixture
def buyer(fresh_buyer: BuyerFactory) -> BuyerClient:
    return fresh_buyer()


def test_explain_bias_puts_the_bounds_and_the_bias_in_the_response(server: LiveServer, buyer: BuyerClient) -> None:
    sql = "SELECT region, COUNT(*) AS n, AVG(age) AS a FROM shifts WHERE age > 30 GROUP BY region"
    response = buyer.http.post(
        "/v1/queries", json={"dataset": "shifts", "sql": sql, "epsilon": 0.5, "explain_bias": True}
    )
    assert response.status_code == 201
    document = response.json()
    assert document["bounds"] == {"max_groups": 1, "max_rows_per_group": 10}
    assert set(document["bias"]) == {"n", "a"} and all(0 <= share <= 1 for share in document["bias"].values())
    result = buyer.query("shifts", sql.replace("30", "31"), epsilon=0.5, explain_bias=True)
    assert result.bounds == {"max_groups": 1, "max_rows_per_group": 10} and set(result.bias) == {"n", "a"}
    plain = buyer.query("shifts", sql.replace("30", "32"), epsilon=0.5)
    assert plain.bounds == {"max_groups": 1, "max_rows_per_group": 10} and plain.bias == {}
    with server.client() as public:
        entries = {entry.sql: entry for entry in public.transparency("shifts").releases if entry.buyer == buyer.name}
    assert len(entries) == 3
    assert {entry.bounds is None for entry in entries.values()} == {False, True}  # the plain query's: the policy's


def test_auto_bounds_show_in_the_response_the_stored_release_and_the_transparency_log(
    server: LiveServer, buyer: BuyerClient
) -> None:
    info = buyer.dataset("auto")
    assert (info.max_groups, info.max_rows_per_group) == ("auto", "auto")
    sql = "SELECT COUNT(*) AS n FROM auto"
    result = buyer.query("auto", sql, epsilon=1.0)
    assert set(result.bounds) == {"max_groups", "max_rows_per_group"} and set(result.bias) == {"n"}
    assert 10 < result.bounds["max_rows_per_group"] <= 256, "the heavy tail is visible: the bounds grow to it"
    assert abs(result.rows[0][0] - 78_000) < 7_800
    assert result.query_id is not None
    assert buyer.release(result.query_id).bounds == result.bounds
    response = httpx.get(f"{server.url}/v1/transparency/auto")  # public: no key
    (entry,) = [entry for entry in response.json()["releases"] if entry["buyer"] == buyer.name]
    assert entry["bounds"] == result.bounds and entry["sql"] == sql
    assert result.query_id not in response.text and "bias" not in response.text


def test_auto_value_bounds_show_in_the_response_the_client_and_the_transparency_log(
    server: LiveServer, buyer: BuyerClient
) -> None:
    """Every member's pay is 20.0 in a range of [0, 1000]: the bound chosen keeps it, far under the range's top."""
    (pay,) = [column for column in buyer.dataset("auto").columns if column.name == "pay"]
    assert (pay.bounds, pay.range) == ("auto", (0.0, 1000.0))
    sql = "SELECT SUM(pay) AS p, AVG(pay) AS a FROM auto"
    response = buyer.http.post("/v1/queries", json={"dataset": "auto", "sql": sql, "epsilon": 1.0})
    assert response.status_code == 201
    document = response.json()
    low, high = document["value_bounds"]["pay"]
    assert low == 0.0 and 20.0 <= high < 100.0
    assert set(document["bias"]) == {"p", "a"} and document["bias"]["a"] < 0.05
    result = buyer.query("auto", sql + " WHERE age > 0", epsilon=1.0)
    assert set(result.value_bounds) == {"pay"} and 20.0 <= result.value_bounds["pay"][1] < 100.0
    assert result.rows[0][1] == pytest.approx(20.0, abs=2.0)
    with server.client() as public:
        entries = {entry.sql: entry for entry in public.transparency("auto").releases if entry.buyer == buyer.name}
    assert entries[sql].bounds is not None and entries[sql].bounds["value_bounds"] == document["value_bounds"]
    assert entries[sql].bounds["max_rows_per_group"] == document["bounds"]["max_rows_per_group"]


def test_auto_bounds_with_accuracy_targets_are_refused_for_free(server: LiveServer, buyer: BuyerClient) -> None:
    with server.client() as public:
        before = public.transparency("auto")
    response = buyer.http.post(
        "/v1/queries", json={"dataset": "auto", "sql": "SELECT COUNT(*) AS n FROM auto", "accuracy": {"n": 50.0}}
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "policy_violation"
    with pytest.raises(ClientError, match="^400 policy_violation: "):
        buyer.query("auto", "SELECT COUNT(*) AS n FROM auto", accuracy={"n": 50.0}, explain_bias=True)
    with server.client() as public:
        after = public.transparency("auto")
    assert (after.spent, len(after.releases)) == (before.spent, len(before.releases))


def test_the_client_reads_bounds_and_bias() -> None:
    document = {
        "query_id": "q_1", "dataset": "d", "buyer": None, "columns": ["n"], "rows": [[1]], "accuracy": {"n": 1.0},
        "cost": {"epsilon": 1.0, "delta": 0.0}, "remaining": {"epsilon": 1.0, "delta": 0.0}, "cached": False,
        "bounds": {"max_groups": 2, "max_rows_per_group": 16}, "bias": {"n": 0.125},
        "value_bounds": {"pay": [0.0, 70.5]},
    }  # fmt: skip
    result = QueryResult.from_dict(document)
    assert result.bounds == {"max_groups": 2, "max_rows_per_group": 16} and result.bias == {"n": 0.125}
    assert result.value_bounds == {"pay": [0.0, 70.5]}
    del document["bounds"], document["bias"], document["value_bounds"]
    bare = QueryResult.from_dict(document)
    assert bare.bounds == {} and bare.bias == {} and bare.value_bounds == {}
