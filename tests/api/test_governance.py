"""Issue 11 over HTTP: keys listed and revoked by stewards, δ governance, in-flight reuse, slow bodies."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from api.client import Client, ClientError, QueryResult
from tests.api.conftest import BuyerClient, LiveServer, running_server

BuyerFactory = Callable[..., BuyerClient]
KEY_FIELDS = {"id", "name", "role", "created_at", "last_used_at", "revoked"}
BODY_TIMEOUT_S = 1.5


@pytest.fixture(scope="module")
def lone_steward(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server whose only steward key is the CLI's, with a short body timeout."""
    settings = {"COOPDP_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S)}
    root = tmp_path_factory.mktemp("lone_steward")
    shifts = {"epsilon": 10.0, "max_epsilon_per_query": 1.0, "whole_delta_per_query": False}
    with running_server(root, {"shifts": shifts}, settings) as live:
        yield live


def test_stewards_list_every_key_without_its_secret(server: LiveServer, steward: Client) -> None:
    created = steward.create_key("listed_buyer")
    response = steward.http.get("/v1/keys")
    assert response.status_code == 200
    listed = {entry["id"]: entry for entry in response.json()}
    assert all(set(entry) == KEY_FIELDS for entry in listed.values())
    assert (listed[created.id]["name"], listed[created.id]["role"], listed[created.id]["revoked"]) == (
        "listed_buyer",
        "buyer",
        False,
    )
    assert listed[created.id]["last_used_at"] is None
    stewards = [entry for entry in listed.values() if entry["name"] == "steward"]
    assert stewards and all(entry["last_used_at"] for entry in stewards)  # this very request used it
    for secret in (created.key, server.steward_key, server.buyer_key):
        assert secret not in response.text and secret[4:] not in response.text
    assert "key_hash" not in response.text
    with server.client(server.buyer_key) as buyer, pytest.raises(ClientError, match="^403 forbidden"):
        buyer.keys()


def test_a_steward_revokes_any_key_by_id_a_stewards_included(server: LiveServer, steward: Client) -> None:
    other_steward = steward.create_key("revocable_steward", "steward")
    buyer_key = steward.create_key("revocable_buyer")
    with server.client(other_steward.key) as second, server.client(buyer_key.key) as buyer:
        assert second.audit() and buyer.releases() == []
        assert second.revoke_key(buyer_key.id).revoked  # a second steward may revoke too
        revoked = steward.revoke_key(other_steward.id)
        assert (revoked.id, revoked.name, revoked.role, revoked.revoked) == (
            other_steward.id,
            "revocable_steward",
            "steward",
            True,
        )
        for call in (second.audit, buyer.releases):
            with pytest.raises(ClientError, match="^401 unauthorized"):
                call()
    with pytest.raises(ClientError, match="^404 not_found"):
        steward.revoke_key("k_0000000000000000")
    details = [(entry.action, entry.detail) for entry in steward.audit()]
    assert ("revoke_key", f"{other_steward.id}: revocable_steward (steward)") in details


def test_a_buyers_name_never_holds_a_stewards_key(server: LiveServer, steward: Client) -> None:
    """Issue 11, 9: revoking buyer X left a steward key named X working. A name now has one role."""
    steward.create_key("one_role_only")
    with pytest.raises(ClientError, match="^409 conflict"):
        steward.create_key("one_role_only", "steward")
    with pytest.raises(ClientError, match="^409 conflict"):
        steward.create_key("steward", "buyer")
    with pytest.raises(ClientError, match="^409 conflict"):
        steward.create_buyer("steward")


def test_the_last_live_steward_key_cannot_be_revoked(lone_steward: LiveServer) -> None:
    with lone_steward.steward() as steward:
        (own,) = [key for key in steward.keys() if key.role == "steward"]
        with pytest.raises(ClientError, match="^409 conflict: .*last live steward key"):
            steward.revoke_key(own.id)
        assert steward.audit()  # still works


def test_a_delta_quota_is_set_over_http_and_caps_the_buyer(
    server: LiveServer, steward: Client, fresh_buyer: BuyerFactory
) -> None:
    buyer = fresh_buyer()
    response = steward.http.put(f"/v1/datasets/quotas/quotas/{buyer.name}", json={"epsilon": 1.0, "delta": 1e-8})
    assert response.status_code == 200 and response.json() == {"epsilon": 1.0, "delta": 1e-8}
    assert buyer.dataset("quotas").remaining.delta == pytest.approx(1e-8)
    assert steward.audit()[-1].detail == f"quotas/{buyer.name}: epsilon 1.0, delta 1E-8"
    assert steward.set_quota("quotas", buyer.name, None) is None  # PUT replaces both parts: δ lifted too
    assert buyer.dataset("quotas").remaining.delta == pytest.approx(1e-6)


def test_one_query_above_max_delta_per_query_is_refused_before_the_charge(lone_steward: LiveServer) -> None:
    """The policy states no cap: one query may take a tenth of the dataset's δ (1e-6 here)."""
    with lone_steward.client() as public, lone_steward.client(lone_steward.buyer_key) as alice:
        before = public.transparency("shifts")
        with pytest.raises(ClientError, match=r"^400 policy_violation: .*max_delta_per_query \(1E-7\)"):
            alice.query("shifts", "SELECT COUNT(*) AS n FROM shifts", epsilon=0.1, delta=1e-6)
        assert public.transparency("shifts") == before


def test_identical_concurrent_queries_over_http_are_charged_once(server: LiveServer, fresh_buyer: BuyerFactory) -> None:
    buyer = fresh_buyer()
    sql = "SELECT region, SUM(hours) AS h FROM shifts GROUP BY region"
    start = threading.Barrier(4)
    outcomes: list[QueryResult] = []

    def ask() -> None:
        start.wait(timeout=30)
        outcomes.append(buyer.query("shifts", sql, epsilon=0.3))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(outcomes) == 4 and len({(o.query_id, str(o.rows)) for o in outcomes}) == 1
    assert sorted(o.cached for o in outcomes) == [False, True, True, True]
    assert [r.query_id for r in buyer.releases()] == [outcomes[0].query_id]


def test_an_unknown_dataset_in_the_transparency_log_names_no_other(server: LiveServer) -> None:
    with server.client() as public:
        response = public.http.get("/v1/transparency/no_such_dataset")
    assert response.status_code == 404
    assert response.json() == {"error": {"code": "unknown_table", "message": "unknown dataset 'no_such_dataset'"}}


def _trickle(url: str, path: str, declared: int) -> tuple[float, bytes]:
    """Send the headers, then one body byte every 0.2 s; return when the server answered, and all it sent
    before closing the connection (a server that never closes it fails the test with a timeout)."""
    host, port = url.removeprefix("http://").split(":")
    started = time.monotonic()
    received = b""
    with socket.create_connection((host, int(port)), timeout=BODY_TIMEOUT_S + 10) as connection:
        connection.sendall(
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {declared}\r\n\r\n".encode()
        )
        connection.settimeout(0.2)
        for _ in range(declared - 1):  # never the last byte
            try:
                connection.sendall(b" ")
            except OSError:
                break
            try:
                chunk = connection.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            received += chunk
            if not chunk or b"\r\n\r\n" in received:
                break
        elapsed = time.monotonic() - started
        connection.settimeout(5)
        while chunk := connection.recv(65536):  # the rest of the answer, until the server closes the connection
            received += chunk
        return elapsed, received


def test_a_trickled_body_is_cut_off_with_408(lone_steward: LiveServer) -> None:
    """Issue 11, 10: a client that trickles its body held a connection for over 30 s."""
    elapsed, answer = _trickle(lone_steward.url, "/v1/queries", declared=200)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b'"code":"request_timeout"' in answer and b"connection: close" in answer.lower()
    assert BODY_TIMEOUT_S <= elapsed < BODY_TIMEOUT_S + 3
    with lone_steward.steward() as steward:
        assert steward.health() == {"status": "ok"}  # the server is free for others
