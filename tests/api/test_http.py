"""The HTTP API end to end: a real uvicorn server, driven through ``api.client`` (and raw httpx where the wire matters)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from api.client import Client, ClientError, QueryResult
from engine.backends.polars import PolarsBackend
from engine.planner import plan_query
from engine.policy import load_policies
from engine.sql import parse
from tests.api.conftest import BuyerClient, LiveServer

BuyerFactory = Callable[..., BuyerClient]

GROUPED = "SELECT region, COUNT(*) AS n, SUM(hours) AS h, AVG(age) FROM shifts WHERE age >= 25 GROUP BY region"
RESULT_KEYS = {"query_id", "dataset", "buyer", "columns", "rows", "accuracy", "cost", "remaining", "cached", "bounds"}


def _error_of(response: httpx.Response) -> tuple[int, str]:
    """The status and ``error.code`` of an error response, after checking the body has exactly the error shape."""
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return response.status_code, body["error"]["code"]


def _raises(code: str, status: int) -> Any:
    """``pytest.raises`` for a :class:`ClientError` with this status and code."""
    return pytest.raises(ClientError, match=rf"^{status} {code}: ")


@pytest.fixture
def buyer(fresh_buyer: BuyerFactory) -> BuyerClient:
    return fresh_buyer()


def _ledger_state(server: LiveServer, dataset: str) -> tuple[float, float, int]:
    """What a dataset has spent (ε, δ) and how many releases it logged: must not move on a refusal."""
    with server.client() as public:
        log = public.transparency(dataset)
    return log.spent.epsilon, log.spent.delta, len(log.releases)


# --- health, datasets ---------------------------------------------------------------------------


def test_healthz_needs_no_key(server: LiveServer) -> None:
    with server.client() as public:
        assert public.health() == {"status": "ok"}


def test_datasets_describe_the_public_policy_never_the_source(server: LiveServer, alice: Client) -> None:
    listing = alice.http.get("/v1/datasets")
    one = alice.http.get("/v1/datasets/shifts")
    assert listing.status_code == one.status_code == 200
    for text in (listing.text, one.text):
        assert "parquet" not in text.lower()
        assert str(server.root) not in text and "data/" not in text and "source" not in text
    names = [info.name for info in alice.datasets()]
    assert names == sorted(names) and {"shifts", "tiny", "noconsent"} <= set(names)
    info = alice.dataset("shifts")
    assert (info.privacy_unit, info.max_groups, info.max_rows_per_group, info.max_rows_per_member) == (
        "member",
        1,
        10,
        None,
    )
    total = alice.dataset("total")
    assert (total.max_groups, total.max_rows_per_group, total.max_rows_per_member) == (None, None, 12)
    assert (info.accounting, info.max_epsilon_per_query) == ("pure", 2.0)
    columns = {column.name: column for column in info.columns}
    assert columns["hours"].bounds == (0.0, 60.0)
    assert columns["region"].public_keys == ["north", "south", "east", "west"]
    assert columns["member_flag"].public_keys == [False, True]
    assert columns["city"].public_keys is None  # private keys are not listed
    dated = alice.dataset("dated")
    assert {column.name: column.bounds for column in dated.columns}["day"] == ("2024-01-01", "2024-03-31")
    assert dated.public_tables == {"zones": {"region": "text", "zone": "text", "rate": "float"}}
    answer = alice.query(
        "dated", "SELECT MONTH(day) AS m, zone, COUNT(*) FROM dated JOIN zones USING (region) GROUP BY 1, 2", 1.0
    )
    assert [row[:2] for row in answer.rows] == [[m, z] for m in (1, 2, 3) for z in ("N", "S")]


def test_dataset_remaining_is_the_callers(server: LiveServer, steward: Client, fresh_buyer: BuyerFactory) -> None:
    quota_holder, other = fresh_buyer(), fresh_buyer()
    steward.set_quota("quotas", quota_holder.name, 0.75)
    left = other.dataset("quotas").remaining.epsilon
    assert quota_holder.dataset("quotas").remaining.epsilon == pytest.approx(0.75)
    quota_holder.query("quotas", "SELECT COUNT(*) AS n FROM quotas WHERE age > 40", epsilon=0.25)
    assert quota_holder.dataset("quotas").remaining.epsilon == pytest.approx(0.5)
    assert other.dataset("quotas").remaining.epsilon == pytest.approx(left - 0.25)  # the dataset's, not capped
    assert steward.dataset("quotas").remaining.epsilon == pytest.approx(left - 0.25)


def test_unknown_dataset_is_404(alice: Client) -> None:
    with _raises("unknown_table", 404):
        alice.dataset("nope")


# --- queries -------------------------------------------------------------------------------------


def test_query_is_released_with_201_and_the_result_json(server: LiveServer, buyer: BuyerClient) -> None:
    before = buyer.dataset("shifts").remaining.epsilon
    response = buyer.http.post("/v1/queries", json={"dataset": "shifts", "sql": GROUPED, "epsilon": 0.5})
    assert response.status_code == 201
    document = response.json()
    assert set(document) - {"dry_run"} == RESULT_KEYS and document.get("dry_run", False) is False
    assert document["query_id"].startswith("q_")
    assert document["dataset"] == "shifts" and document["buyer"] == buyer.name
    assert document["columns"] == ["region", "n", "h", "avg(age)"]
    assert [row[0] for row in document["rows"]] == ["north", "south", "east", "west"]
    assert all(isinstance(row[1], int) and row[1] >= 0 for row in document["rows"])
    assert set(document["accuracy"]) == {"n", "h", "avg(age)"}
    assert document["accuracy"]["n"] > 0
    assert document["cost"] == {"epsilon": 0.5, "delta": 0.0}
    assert document["remaining"]["epsilon"] == pytest.approx(before - 0.5)
    assert document["cached"] is False
    assert buyer.dataset("shifts").remaining.epsilon == pytest.approx(before - 0.5)


def test_dry_run_is_200_and_charges_nothing(server: LiveServer, buyer: BuyerClient) -> None:
    state = _ledger_state(server, "shifts")
    response = buyer.http.post(
        "/v1/queries", json={"dataset": "shifts", "sql": GROUPED, "epsilon": 0.5, "dry_run": True}
    )
    assert response.status_code == 200
    result = QueryResult.from_dict(response.json())
    assert result.dry_run and result.query_id is None and result.rows == []
    assert result.cost.epsilon == 0.5 and result.accuracy["n"] is not None
    assert _ledger_state(server, "shifts") == state
    assert buyer.releases() == []


def test_explain_is_200_returns_the_explanation_and_charges_nothing(server: LiveServer, buyer: BuyerClient) -> None:
    state = _ledger_state(server, "shifts")
    request = {"dataset": "shifts", "sql": GROUPED, "epsilon": 0.5, "explain": True, "weights": {"n": 2}}
    response = buyer.http.post("/v1/queries", json=request)
    assert response.status_code == 200
    document = response.json()
    assert document["explain"] is True and document["cost"]["epsilon"] == 0.5
    assert [part["kind"] for part in document["parts"]][0] == "count_rows"
    count, total = document["parts"][:2]
    assert count["read_by"] == ["n"] and count["loss"] == pytest.approx(2 * total["loss"])
    assert _ledger_state(server, "shifts") == state
    assert buyer.releases() == []
    refused = buyer.http.post("/v1/queries", json={**request, "sql": "SELECT * FROM shifts"})
    assert _error_of(refused) == (400, "policy_violation")


def test_weights_split_epsilon_across_output_columns(server: LiveServer, buyer: BuyerClient) -> None:
    even = buyer.query("shifts", GROUPED, epsilon=0.5, dry_run=True).accuracy
    weighted = buyer.query("shifts", GROUPED, epsilon=0.5, dry_run=True, weights={"n": 6}).accuracy
    assert weighted["n"] < even["n"] and weighted["h"] > even["h"]
    for bad in ({"n": -1}, {"n": "many"}, [1, 2]):
        response = buyer.http.post(
            "/v1/queries", json={"dataset": "shifts", "sql": GROUPED, "epsilon": 0.5, "dry_run": True, "weights": bad}
        )
        assert _error_of(response) == (422, "invalid_request")
    response = buyer.http.post(
        "/v1/queries", json={"dataset": "shifts", "sql": GROUPED, "epsilon": 0.5, "weights": {"nope": 2}}
    )
    assert _error_of(response) == (400, "unknown_column")


def test_an_identical_query_is_answered_again_from_the_ledger_for_free(server: LiveServer, buyer: BuyerClient) -> None:
    sql = "SELECT region, COUNT(*) AS n FROM shifts WHERE hours > 5 GROUP BY region"
    first = buyer.query("shifts", sql, epsilon=0.3)
    state = _ledger_state(server, "shifts")
    response = buyer.http.post("/v1/queries", json={"dataset": "shifts", "sql": sql, "epsilon": 0.3})
    assert response.status_code == 200
    again = QueryResult.from_dict(response.json())
    assert again.cached and again.cost.epsilon == 0 and again.cost.delta == 0
    assert (again.query_id, again.rows, again.accuracy) == (first.query_id, first.rows, first.accuracy)
    assert again.remaining == first.remaining
    assert _ledger_state(server, "shifts") == state
    assert len(buyer.releases()) == 1


def test_releases_are_listed_and_fetched_again_for_free_only_by_their_buyer(
    server: LiveServer, fresh_buyer: BuyerFactory
) -> None:
    owner, other = fresh_buyer(), fresh_buyer()
    first = owner.query("shifts", "SELECT COUNT(*) AS n FROM shifts WHERE age < 30", epsilon=0.2)
    second = owner.query("shifts", "SELECT SUM(hours) AS h FROM shifts", epsilon=0.4)
    other.query("shifts", "SELECT COUNT(*) AS n FROM shifts WHERE age < 31", epsilon=0.2)
    listed = owner.releases()
    assert [r.query_id for r in listed] == [first.query_id, second.query_id]
    assert [r.cost.epsilon for r in listed] == [0.2, 0.4] and {r.dataset for r in listed} == {"shifts"}
    assert listed[1].sql == "SELECT SUM(hours) AS h FROM shifts"
    assert first.query_id not in {r.query_id for r in other.releases()}

    state = _ledger_state(server, "shifts")
    again = owner.release(second.query_id)
    assert (again.query_id, again.columns, again.rows) == (second.query_id, second.columns, second.rows)
    assert again.cached and again.cost.epsilon == 0
    assert _ledger_state(server, "shifts") == state
    # Another buyer's release answers exactly like one never made: its existence is not revealed (issue 11, 10).
    theirs = other.http.get(f"/v1/queries/{second.query_id}")
    missing = other.http.get("/v1/queries/q_0000000000000000")
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json() == {"error": {"code": "not_found", "message": f"no release '{second.query_id}'"}}
    assert missing.json() == {"error": {"code": "not_found", "message": "no release 'q_0000000000000000'"}}
    with _raises("not_found", 404):
        other.release(second.query_id)
    with _raises("not_found", 404):
        owner.release("q_0000000000000000")


# --- authentication and roles --------------------------------------------------------------------

BUYER_ROUTES = [
    ("GET", "/v1/datasets"),
    ("GET", "/v1/datasets/shifts"),
    ("GET", "/v1/queries"),
    ("GET", "/v1/queries/q_0000000000000000"),
    ("POST", "/v1/queries"),
]
STEWARD_ROUTES = [
    ("PUT", "/v1/datasets/governed/budget", {"epsilon": 100.0, "delta": 1e-6}),
    ("POST", "/v1/buyers", {"name": "mallory"}),
    ("GET", "/v1/buyers", None),
    ("DELETE", "/v1/buyers/alice", None),
    ("POST", "/v1/keys", {"name": "mallory", "role": "steward"}),
    ("PUT", "/v1/datasets/shifts/quotas/alice", {"epsilon": None}),
    ("GET", "/v1/audit", None),
]
QUERY_BODY = {"dataset": "shifts", "sql": "SELECT COUNT(*) FROM shifts", "epsilon": 0.1}


@pytest.mark.parametrize(
    "authorization", [None, "Bearer cdp_not-a-key", "Bearer", "bearer  cdp_x y", "Basic YWxpY2U6c2VjcmV0", "cdp_x"]
)
def test_a_missing_or_bad_key_is_401(server: LiveServer, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    state = _ledger_state(server, "shifts")
    with httpx.Client(base_url=server.url, headers=headers) as raw:
        for method, path, *body in [*BUYER_ROUTES, *STEWARD_ROUTES]:
            payload = (body[0] if body else None) if path != "/v1/queries" else QUERY_BODY
            response = raw.request(method, path, json=payload)
            assert _error_of(response) == (401, "unauthorized"), (method, path)
            assert response.headers["www-authenticate"] == "Bearer"
    assert _ledger_state(server, "shifts") == state


def test_a_buyer_cannot_govern_and_a_steward_cannot_query(server: LiveServer, alice: Client, steward: Client) -> None:
    audit_before = len(steward.audit())
    for method, path, body in STEWARD_ROUTES:
        assert _error_of(alice.http.request(method, path, json=body)) == (403, "forbidden"), (method, path)
    assert len(steward.audit()) == audit_before
    assert _error_of(steward.http.post("/v1/queries", json=QUERY_BODY)) == (403, "forbidden")
    assert _error_of(steward.http.get("/v1/queries")) == (403, "forbidden")


# --- governance ------------------------------------------------------------------------------------


def test_steward_sets_and_raises_a_budget_never_below_what_is_spent(
    server: LiveServer, steward: Client, buyer: BuyerClient
) -> None:
    status = steward.set_budget("governed", 2.0, 1e-6)
    assert (status.budget.epsilon, status.spent.epsilon, status.remaining.epsilon) == (2.0, 0.0, 2.0)
    assert buyer.dataset("governed").remaining.epsilon == 2.0
    buyer.query("governed", "SELECT COUNT(*) AS n FROM governed", epsilon=1.0)
    buyer.query("governed", "SELECT SUM(hours) AS h FROM governed", epsilon=0.5)
    with _raises("policy_violation", 400):
        steward.set_budget("governed", 1.25, 1e-6)
    with server.client() as public:
        assert public.transparency("governed").budget.epsilon == 2.0  # unchanged by the refusal
    raised = steward.set_budget("governed", 3.0, 1e-6)
    assert (raised.budget.epsilon, raised.spent.epsilon, raised.remaining.epsilon) == (3.0, 1.5, 1.5)
    assert buyer.dataset("governed").remaining.epsilon == 1.5
    exactly_spent = steward.set_budget("governed", 1.5, 1e-6)
    assert exactly_spent.remaining.epsilon == 0
    with _raises("budget_exhausted", 409):
        buyer.query("governed", "SELECT COUNT(*) AS n FROM governed WHERE age > 20", epsilon=0.1)
    with _raises("unknown_table", 404):
        steward.set_budget("nope", 1.0, 0.0)
    details = [entry.detail for entry in steward.audit() if entry.action == "set_budget"]
    assert "governed: epsilon 2.0, delta 0.000001" in details and "governed: epsilon 3.0, delta 0.000001" in details
    assert not any("1.25" in detail for detail in details)


@pytest.mark.parametrize(
    "body",
    [
        {"epsilon": 0, "delta": 0},
        {"epsilon": -1, "delta": 0},
        {"epsilon": 1, "delta": 1},
        {"epsilon": 1},
        {"epsilon": "lots", "delta": 0},
        {"epsilon": 1, "delta": 0, "x": 1},
    ],
)
def test_invalid_budgets_are_refused(server: LiveServer, steward: Client, body: dict[str, Any]) -> None:
    response = steward.http.put("/v1/datasets/governed/budget", json=body)
    assert _error_of(response) == (422, "invalid_request")


def test_steward_creates_and_revokes_buyers(server: LiveServer, steward: Client) -> None:
    created = steward.create_buyer("bob_the_buyer", purpose="research")
    assert (created.name, created.purpose, created.revoked) == ("bob_the_buyer", "research", False)
    response = steward.http.post("/v1/buyers", json={"name": "carol_buyer"})
    assert response.status_code == 201
    first_key = steward.create_key("bob_the_buyer").key
    with server.client(first_key) as bob:
        bob.query("shifts", "SELECT COUNT(*) AS n FROM shifts WHERE region = 'east'", epsilon=0.1)
        revoked = steward.revoke_buyer("bob_the_buyer")
        assert revoked.revoked and revoked.name == "bob_the_buyer"
        for call in (
            bob.datasets,
            bob.releases,
            lambda: bob.query("shifts", "SELECT COUNT(*) AS n FROM shifts", epsilon=0.1),
        ):
            with _raises("unauthorized", 401):
                call()
    listed = {b.name: b for b in steward.buyers()}
    assert listed["bob_the_buyer"].revoked and not listed["carol_buyer"].revoked
    # Restoring the buyer does not bring its old keys back.
    assert not steward.create_buyer("bob_the_buyer", purpose="research").revoked
    with server.client(first_key) as bob, _raises("unauthorized", 401):
        bob.datasets()
    with server.client(steward.create_key("bob_the_buyer").key) as bob:
        assert len(bob.releases()) == 1
    with _raises("not_found", 404):
        steward.revoke_buyer("nobody_at_all")
    for bad in ({"name": "has space"}, {"name": ""}, {"name": "x" * 65}, {"name": "ok", "purpose": "p" * 65}):
        assert _error_of(steward.http.post("/v1/buyers", json=bad)) == (422, "invalid_request")


def test_keys_are_shown_once_and_stored_only_as_hashes(server: LiveServer, steward: Client) -> None:
    response = steward.http.post("/v1/keys", json={"name": "dora_buyer", "role": "buyer"})
    assert response.status_code == 201
    created = response.json()
    assert (created["name"], created["role"]) == ("dora_buyer", "buyer")
    key = created["key"]
    assert key.startswith("cdp_") and len(key) > 40
    assert "dora_buyer" in {b.name for b in steward.buyers()}  # a buyer key registers the buyer
    new_steward = steward.create_key("second_steward", "steward")
    with server.client(key) as dora:
        assert dora.releases() == []
    with server.client(new_steward.key) as second:
        assert second.audit()
    stored = b"".join(path.read_bytes() for path in server.root.glob("ledger.db*"))
    for secret in (key, new_steward.key, server.steward_key, server.buyer_key):
        assert secret.encode() not in stored
        assert hashlib.sha256(secret.encode()).hexdigest().encode() in stored
    assert key not in server.log.read_text()
    assert all(key not in entry.detail for entry in steward.audit())
    assert "key=" in repr(new_steward) and new_steward.key not in repr(new_steward)
    assert _error_of(steward.http.post("/v1/keys", json={"name": "x", "role": "admin"})) == (422, "invalid_request")


def test_quotas_cap_a_buyer_and_can_be_lifted(server: LiveServer, steward: Client, buyer: BuyerClient) -> None:
    name = buyer.name
    assert steward.set_quota("quotas", name, 0.5) == 0.5
    buyer.query("quotas", "SELECT COUNT(*) AS n FROM quotas", epsilon=0.5)
    state = _ledger_state(server, "quotas")
    with _raises("quota_exhausted", 429):
        buyer.query("quotas", "SELECT SUM(hours) AS h FROM quotas", epsilon=0.1)
    assert _ledger_state(server, "quotas") == state
    assert buyer.dataset("quotas").remaining.epsilon == 0
    assert buyer.dataset("shifts").remaining.epsilon > 0  # quotas are per dataset
    assert steward.set_quota("quotas", name, None) is None
    buyer.query("quotas", "SELECT SUM(hours) AS h FROM quotas", epsilon=0.1)
    with _raises("not_found", 404):
        steward.set_quota("quotas", "nobody_at_all", 1.0)
    with _raises("unknown_table", 404):
        steward.set_quota("nope", name, 1.0)
    for bad in ({"epsilon": 0}, {"epsilon": -1}, {}):
        assert _error_of(steward.http.put(f"/v1/datasets/quotas/quotas/{name}", json=bad)) == (422, "invalid_request")
    actions = [(entry.action, entry.detail) for entry in steward.audit()]
    assert ("set_quota", f"quotas/{name}: epsilon 0.5") in actions
    assert ("set_quota", f"quotas/{name}: epsilon unlimited") in actions


def test_a_policy_declared_buyer_gets_its_policy_quota(server: LiveServer, steward: Client) -> None:
    with server.client(steward.create_key("uni_lab").key) as uni_lab:
        assert uni_lab.dataset("restricted").remaining.epsilon == 3.0  # [buyers.uni_lab] epsilon = 3.0
        assert uni_lab.dataset("shifts").remaining.epsilon > 3.0
        result = uni_lab.query("restricted", "SELECT COUNT(*) AS n FROM restricted", epsilon=1.0)
        assert result.remaining.epsilon == 2.0
    with server.client() as public:
        (entry,) = [e for e in public.transparency("restricted").releases if e.buyer == "uni_lab"]
    assert entry.purpose == "research"  # the policy's purpose for uni_lab


def test_a_buyer_not_declared_by_a_policy_that_declares_buyers_is_refused(
    server: LiveServer, buyer: BuyerClient
) -> None:
    state = _ledger_state(server, "restricted")
    try:
        result = buyer.query("restricted", "SELECT SUM(hours) AS h FROM restricted", epsilon=0.5)
    except ClientError as refused:
        assert (refused.status, refused.code) == (403, "forbidden")
        assert _ledger_state(server, "restricted") == state
    else:
        pytest.fail(f"an undeclared buyer was answered and charged {result.cost.epsilon} on 'restricted'")


def test_revoking_a_buyer_never_revokes_a_stewards_key(server: LiveServer, steward: Client) -> None:
    second = steward.create_key("steward_two", "steward")
    try:
        steward.create_key("steward_two", "buyer")  # a fix may refuse this (name taken by a steward) ...
    except ClientError as refused:
        assert 400 <= refused.status < 500
        return
    steward.revoke_buyer("steward_two")  # ... or revoke only buyer keys
    with server.client(second.key) as steward_two:
        assert steward_two.audit()


def test_the_audit_log_records_every_governance_action(server: LiveServer, steward: Client) -> None:
    before = len(steward.audit())
    steward.create_buyer("erin_buyer", purpose="research")
    key = steward.create_key("erin_buyer")
    steward.set_quota("quotas", "erin_buyer", 1.0)
    steward.revoke_buyer("erin_buyer")
    entries = steward.audit()[before:]
    assert [(e.actor, e.action, e.detail) for e in entries] == [
        ("steward", "upsert_buyer", "erin_buyer: purpose research"),
        ("steward", "create_key", f"{key.id}: erin_buyer (buyer)"),
        ("steward", "set_quota", "quotas/erin_buyer: epsilon 1.0"),
        ("steward", "revoke_buyer", "erin_buyer"),
    ]
    assert [e.at for e in entries] == sorted(e.at for e in entries)
    first = steward.audit()[0]
    assert (first.actor, first.action) == ("cli", "create_key")  # the CLI made the first keys


def test_budget_exhaustion_is_409_and_charges_nothing(server: LiveServer, fresh_buyer: BuyerFactory) -> None:
    first, second = fresh_buyer(), fresh_buyer()
    spent = first.query("tiny", "SELECT COUNT(*) AS n FROM tiny", epsilon=0.75)
    assert spent.remaining.epsilon == pytest.approx(0.25)
    state = _ledger_state(server, "tiny")
    with _raises("budget_exhausted", 409):
        second.query("tiny", "SELECT SUM(hours) AS h FROM tiny", epsilon=0.5)
    assert _ledger_state(server, "tiny") == state
    assert second.releases() == []
    last = second.query("tiny", "SELECT SUM(hours) AS h FROM tiny", epsilon=0.25)
    assert last.remaining.epsilon == 0
    with _raises("budget_exhausted", 409):
        first.query("tiny", "SELECT AVG(age) FROM tiny", epsilon=0.01)
    # A dry run still answers (it reads nothing and charges nothing), and so does a stored release.
    assert first.query("tiny", "SELECT AVG(age) FROM tiny", epsilon=0.01, dry_run=True).dry_run
    assert first.release(spent.query_id).rows == spent.rows  # type: ignore[arg-type]


# --- transparency --------------------------------------------------------------------------------


def test_the_transparency_log_is_public_and_holds_no_results(
    server: LiveServer, fresh_buyer: BuyerFactory, steward: Client
) -> None:
    steward.create_buyer("frank_buyer", purpose="research")
    with server.client(steward.create_key("frank_buyer").key) as frank:
        result = frank.query("refusals", "SELECT region, COUNT(*) AS n FROM refusals GROUP BY region", epsilon=0.3)
    response = httpx.get(f"{server.url}/v1/transparency/refusals")  # no key at all
    assert response.status_code == 200
    document = response.json()
    assert set(document) == {"dataset", "budget", "spent", "remaining", "releases"}
    assert document["dataset"] == "refusals"
    for entry in document["releases"]:
        assert set(entry) == {"at", "buyer", "purpose", "sql", "cost", "bounds"}
    mine = [e for e in document["releases"] if e["buyer"] == "frank_buyer"]
    assert mine == [
        {
            "at": mine[0]["at"],
            "buyer": "frank_buyer",
            "purpose": "research",
            "sql": "SELECT region, COUNT(*) AS n FROM refusals GROUP BY region",
            "cost": {"epsilon": 0.3, "delta": 0.0},
            "bounds": None,  # fixed bounds, their bias not asked for: the policy says them
        }
    ]
    assert result.query_id not in response.text and "rows" not in response.text and "accuracy" not in response.text
    assert document["spent"]["epsilon"] == pytest.approx(sum(e["cost"]["epsilon"] for e in document["releases"]))
    assert document["remaining"]["epsilon"] == pytest.approx(
        document["budget"]["epsilon"] - document["spent"]["epsilon"]
    )
    with server.client() as public, _raises("unknown_table", 404):
        public.transparency("nope")


# --- idempotency ----------------------------------------------------------------------------------


def test_an_idempotency_key_retry_gets_the_same_release_and_one_charge(
    server: LiveServer, buyer: BuyerClient, fresh_buyer: BuyerFactory
) -> None:
    sql = "SELECT region, SUM(hours) AS h FROM shifts WHERE age BETWEEN 30 AND 50 GROUP BY region"
    before = _ledger_state(server, "shifts")
    first = buyer.query("shifts", sql, epsilon=0.2, idempotency_key="retry-1")
    response = buyer.http.post(
        "/v1/queries", json={"dataset": "shifts", "sql": sql, "epsilon": 0.2}, headers={"Idempotency-Key": "retry-1"}
    )
    assert response.status_code == 200
    again = QueryResult.from_dict(response.json())
    assert again.query_id == first.query_id and again.rows == first.rows and again.cached and again.cost.epsilon == 0
    after = _ledger_state(server, "shifts")
    assert after[0] == pytest.approx(before[0] + 0.2) and after[2] == before[2] + 1
    assert [r.query_id for r in buyer.releases()] == [first.query_id]
    # Keys are per buyer: another buyer's equal key is a different request.
    other = fresh_buyer().query("shifts", sql, epsilon=0.2, idempotency_key="retry-1")
    assert other.query_id != first.query_id and not other.cached
    too_long = buyer.http.post(
        "/v1/queries", json={"dataset": "shifts", "sql": sql, "epsilon": 0.2}, headers={"Idempotency-Key": "k" * 201}
    )
    assert _error_of(too_long) == (422, "invalid_request")


def test_an_idempotency_key_reused_for_a_different_query_is_refused(server: LiveServer, buyer: BuyerClient) -> None:
    first = buyer.query("shifts", "SELECT COUNT(*) AS n FROM shifts WHERE age > 60", epsilon=0.2, idempotency_key="k-2")
    quotas_before = _ledger_state(server, "quotas")
    try:
        other = buyer.query("quotas", "SELECT SUM(hours) AS h FROM quotas", epsilon=0.1, idempotency_key="k-2")
    except ClientError as refused:  # the fix: a 409/422 naming the mismatch, nothing charged
        assert refused.status in (409, 422)
        assert _ledger_state(server, "quotas") == quotas_before
        return
    if other.query_id == first.query_id:
        pytest.fail(
            f"the key's first release ({other.dataset}: {other.columns}) came back as the answer to "
            "a different query on quotas, with quotas' remaining budget"
        )


# --- consent ---------------------------------------------------------------------------------------


def test_a_commercial_buyer_never_counts_members_who_did_not_consent(
    server: LiveServer, fresh_buyer: BuyerFactory
) -> None:
    sql = "SELECT COUNT(*) AS n FROM noconsent"
    policy = load_policies(server.policies)["noconsent"]
    backend = PolarsBackend()
    with_consent = backend.execute(plan_query(parse(sql), policy, consent_column="member_flag"))
    without = backend.execute(plan_query(parse(sql), policy))
    assert with_consent.parts == [[0]]  # every member_flag is false: nobody is counted, before any noise
    assert without.parts[0][0] > 400
    assert policy.consent_column("commercial") == "member_flag" and policy.consent_column("research") is None

    commercial, research = fresh_buyer(purpose="commercial"), fresh_buyer(purpose="research")
    noisy = commercial.query("noconsent", sql, epsilon=1.0)
    baseline = research.query("noconsent", sql, epsilon=1.0)
    assert noisy.accuracy["n"] == baseline.accuracy["n"]
    # Discrete Laplace: P(|noise| > 5 × the 95% half-width) = 20^-5 ≈ 3e-7.
    assert noisy.rows[0][0] <= 5 * noisy.accuracy["n"] < without.parts[0][0] / 2  # type: ignore[operator]
    assert abs(baseline.rows[0][0] - without.parts[0][0]) <= 5 * baseline.accuracy["n"]  # type: ignore[operator]
    # The same SQL from the research buyer was a separate release: the consent filter is part of the reuse key.
    assert noisy.query_id != baseline.query_id and not baseline.cached
    with_consent_grouped = backend.execute(
        plan_query(
            parse("SELECT member_flag, COUNT(*) AS n FROM noconsent GROUP BY member_flag"),
            policy,
            consent_column="member_flag",
        )
    )
    assert with_consent_grouped.parts == [[0, 0]]


# --- bad input ----------------------------------------------------------------------------------------

RAW_BODIES = [
    pytest.param('{"dataset": "refusals", "sql": "SELECT COUNT(*) FROM refusals", "epsilon": 0.1', id="malformed"),
    pytest.param("", id="empty"),
    pytest.param("null", id="null"),
    pytest.param("[]", id="list"),
    pytest.param('"text"', id="string"),
    pytest.param('{"dataset": "refusals", "sql": "SELECT COUNT(*) FROM refusals", "epsilon": NaN}', id="nan"),
    pytest.param('{"dataset": "refusals", "sql": "SELECT COUNT(*) FROM refusals", "epsilon": Infinity}', id="inf"),
    pytest.param('{"dataset": "refusals", "sql": "SELECT COUNT(*) FROM refusals", "epsilon": -Infinity}', id="-inf"),
    pytest.param('{"dataset": "refusals", "sql": "SELECT COUNT(*) FROM refusals", "epsilon": 1e999}', id="overflow"),
    pytest.param(
        '{"dataset": "refusals", "sql": "SELECT COUNT(*) FROM refusals", "epsilon": 0.1, "delta": NaN}', id="delta-nan"
    ),
]
BAD_BODIES = [
    pytest.param({"dataset": "refusals", "sql": "SELECT COUNT(*) FROM refusals", "epsilon": -0.5}, id="negative"),
    pytest.param({"dataset": "refusals", "sql": "SELECT COUNT(*) FROM refusals", "epsilon": 0}, id="zero"),
    pytest.param({"dataset": "refusals", "sql": "SELECT COUNT(*) FROM refusals", "epsilon": 1e308}, id="huge"),
    pytest.param({"dataset": "refusals", "sql": "SELECT COUNT(*) FROM refusals", "epsilon": 1.5}, id="above-max"),
    pytest.param({"dataset": "refusals", "sql": "SELECT COUNT(*) FROM refusals", "epsilon": "lots"}, id="eps-text"),
    pytest.param({"dataset": "refusals", "sql": "SELECT COUNT(*) FROM refusals", "epsilon": [0.1]}, id="eps-list"),
    pytest.param({"dataset": "refusals", "sql": "SELECT COUNT(*) FROM refusals", "epsilon": None}, id="eps-null"),
    pytest.param({"dataset": "refusals", "sql": "SELECT COUNT(*) FROM refusals"}, id="eps-missing"),
    pytest.param(
        {"dataset": "refusals", "sql": "SELECT COUNT(*) FROM refusals", "epsilon": 0.1, "delta": -1e-9},
        id="delta-negative",
    ),
    pytest.param(
        {"dataset": "refusals", "sql": "SELECT COUNT(*) FROM refusals", "epsilon": 0.1, "delta": 1}, id="delta-one"
    ),
    pytest.param({"dataset": "refusals", "sql": 42, "epsilon": 0.1}, id="sql-number"),
    pytest.param({"dataset": "refusals", "sql": None, "epsilon": 0.1}, id="sql-null"),
    pytest.param({"dataset": ["refusals"], "sql": "SELECT COUNT(*) FROM refusals", "epsilon": 0.1}, id="dataset-list"),
    pytest.param(
        {"dataset": "refusals", "sql": "SELECT COUNT(*) FROM refusals", "epsilon": 0.1, "dry_run": [1]},
        id="dry-run-list",
    ),
    pytest.param(
        {"dataset": "refusals", "sql": "SELECT COUNT(*) FROM refusals", "epsilon": 0.1, "buyer": "x"},
        id="unknown-field",
    ),
    pytest.param({"dataset": "nope", "sql": "SELECT COUNT(*) FROM nope", "epsilon": 0.1}, id="unknown-dataset"),
    pytest.param({"dataset": "x" * 201, "sql": "SELECT COUNT(*) FROM refusals", "epsilon": 0.1}, id="dataset-long"),
    pytest.param({"dataset": "refusals", "sql": "SELECT * FROM refusals", "epsilon": 0.1}, id="select-star"),
    pytest.param({"dataset": "refusals", "sql": "DROP TABLE refusals", "epsilon": 0.1}, id="drop"),
    pytest.param({"dataset": "refusals", "sql": "SELECT COUNT(*) FROM refusals; SELECT 1", "epsilon": 0.1}, id="two"),
    pytest.param({"dataset": "refusals", "sql": "SELECT COUNT(nope) FROM refusals", "epsilon": 0.1}, id="unknown-col"),
    pytest.param({"dataset": "refusals", "sql": "SELECT COUNT(*) FROM other", "epsilon": 0.1}, id="unknown-table"),
    pytest.param(
        {
            "dataset": "refusals",
            "sql": "SELECT COUNT(*) FROM refusals WHERE " + "(" * 30 + "age > 1" + ")" * 30,
            "epsilon": 0.1,
        },
        id="deep",
    ),
    pytest.param(
        {"dataset": "refusals", "sql": "SELECT COUNT(*) FROM refusals -- " + "x" * 30_000, "epsilon": 0.1},
        id="sql-long",
    ),
    pytest.param(
        {"dataset": "refusals", "sql": "SELECT COUNT(*) FROM refusals", "epsilon": 0.1, "dry_run": None},
        id="dry-run-null",
    ),
]


@pytest.fixture
def refusals_unchanged(server: LiveServer) -> Iterator[None]:
    """A bad request leaves the ledger of ``refusals`` as it was, and the server serving."""
    state = _ledger_state(server, "refusals")
    yield
    assert _ledger_state(server, "refusals") == state
    assert httpx.get(f"{server.url}/healthz").status_code == 200


@pytest.mark.usefixtures("refusals_unchanged")
@pytest.mark.parametrize("text", RAW_BODIES)
def test_a_malformed_or_non_finite_body_is_a_4xx_with_the_error_body(server: LiveServer, text: str) -> None:
    with server.client(server.buyer_key) as alice:
        response = alice.http.post("/v1/queries", content=text, headers={"Content-Type": "application/json"})
    status, code = _error_of(response)
    assert 400 <= status < 500 and code in {"invalid_request", "policy_violation"}


@pytest.mark.usefixtures("refusals_unchanged")
@pytest.mark.parametrize("body", BAD_BODIES)
def test_a_bad_query_body_is_a_4xx_with_the_error_body(server: LiveServer, body: dict[str, Any]) -> None:
    with server.client(server.buyer_key) as alice:
        response = alice.http.post("/v1/queries", json=body)
    status, code = _error_of(response)
    assert 400 <= status < 500
    assert code in {
        "invalid_request",
        "policy_violation",
        "unknown_table",
        "unknown_column",
        "invalid_sql",
        "unsupported",
    }
    if body.get("dataset") == "nope":
        assert (status, code) == (404, "unknown_table")


@pytest.mark.usefixtures("refusals_unchanged")
def test_a_false_epsilon_is_refused(server: LiveServer, alice: Client) -> None:
    response = alice.http.post(
        "/v1/queries",
        json={"dataset": "refusals", "epsilon": False, "sql": "SELECT COUNT(*) AS n FROM refusals WHERE age > 70"},
    )
    assert _error_of(response) == (422, "invalid_request")


def test_a_true_epsilon_is_refused_and_charges_nothing(server: LiveServer, alice: Client) -> None:
    state = _ledger_state(server, "refusals")
    response = alice.http.post(
        "/v1/queries",
        json={"dataset": "refusals", "epsilon": True, "sql": "SELECT COUNT(*) AS n FROM refusals WHERE age > 70"},
    )
    charged = _ledger_state(server, "refusals")
    assert 400 <= response.status_code < 500 and charged == state, (response.text, charged[0] - state[0])


@pytest.mark.usefixtures("refusals_unchanged")
def test_a_body_over_1_mb_is_413(server: LiveServer) -> None:
    big = json.dumps(
        {"dataset": "refusals", "sql": "SELECT COUNT(*) FROM refusals -- " + "x" * 1_100_000, "epsilon": 0.1}
    )
    with server.client(server.buyer_key) as alice:
        response = alice.http.post("/v1/queries", content=big, headers={"Content-Type": "application/json"})
        assert _error_of(response) == (413, "payload_too_large")
        assert alice.health() == {"status": "ok"}


@pytest.mark.usefixtures("refusals_unchanged")
def test_a_chunked_body_over_1_mb_is_413(server: LiveServer) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"dataset": "refusals", "epsilon": 0.1, "sql": "SELECT COUNT(*) FROM refusals -- '
        for _ in range(11):
            yield b"x" * 100_000
        yield b'"}'

    with server.client(server.buyer_key) as alice:
        response = alice.http.post("/v1/queries", content=chunks(), headers={"Content-Type": "application/json"})
    assert "content-length" not in response.request.headers
    assert _error_of(response) == (413, "payload_too_large")


def test_unknown_routes_and_methods_keep_the_error_body(server: LiveServer, alice: Client) -> None:
    assert _error_of(alice.http.get("/v1/nothing-here")) == (404, "not_found")
    assert _error_of(alice.http.delete("/v1/queries")) == (405, "method_not_allowed")


def test_the_server_keeps_serving_after_bad_input(server: LiveServer, buyer: BuyerClient) -> None:
    """Runs after the bad-input tests (file order): health and a fresh query still work."""
    assert buyer.health() == {"status": "ok"}
    result = buyer.query("shifts", "SELECT COUNT(*) AS n FROM shifts WHERE age < 50", epsilon=0.1)
    assert result.query_id and not result.cached
    assert "Traceback" not in server.log.read_text()


# --- the client itself ----------------------------------------------------------------------------------


def test_client_errors_carry_status_code_and_message() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/datasets/x":
            return httpx.Response(404, json={"error": {"code": "unknown_table", "message": "unknown dataset 'x'"}})
        return httpx.Response(502, text="<html>bad gateway</html>")

    with Client("http://coop.test", "cdp_k", transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(ClientError) as caught:
            client.dataset("x")
        assert (caught.value.status, caught.value.code, caught.value.message) == (
            404,
            "unknown_table",
            "unknown dataset 'x'",
        )
        with pytest.raises(ClientError) as caught:
            client.datasets()
        assert (caught.value.status, caught.value.code) == (502, "http_error")
    assert client.http.is_closed


def test_client_paths_are_percent_encoded() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.raw_path.decode())
        return httpx.Response(404, json={"error": {"code": "not_found", "message": "no"}})

    with Client("http://coop.test", "cdp_k", transport=httpx.MockTransport(handler)) as client:
        for call in (lambda: client.release("../audit"), lambda: client.dataset("a/b?c")):
            with pytest.raises(ClientError):
                call()
    assert seen == ["/v1/queries/..%2Faudit", "/v1/datasets/a%2Fb%3Fc"]


def test_client_models_match_the_server_schemas() -> None:
    """The client's dataclasses carry exactly the fields of ``api/schemas.py``'s response models."""
    from dataclasses import fields

    from api import client, schemas

    pairs = [
        (client.QueryResult, schemas.QueryResult),
        (client.DatasetInfo, schemas.DatasetInfo),
        (client.ColumnInfo, schemas.ColumnInfo),
        (client.ReleaseSummary, schemas.ReleaseSummary),
        (client.BudgetStatus, schemas.BudgetStatusBody),
        (client.Buyer, schemas.BuyerBody),
        (client.CreatedKey, schemas.KeyCreated),
        (client.AuditEntry, schemas.AuditBody),
        (client.TransparencyEntry, schemas.TransparencyEntry),
        (client.TransparencyLog, schemas.TransparencyLog),
        (client.Cost, schemas.CostBody),
    ]
    for ours, theirs in pairs:
        assert [f.name for f in fields(ours)] == list(theirs.model_fields), ours.__name__
