"""End to end against a real ``coopdp serve --workers 3``: no overspending, no lost charges, idempotent retries.

Each test starts the real server (uvicorn, three worker processes sharing one
ledger) on a free loopback port, with the ledger on SQLite and then on
PostgreSQL, and talks to it over HTTP from many threads at once. Only
127.0.0.1 is ever contacted; every request and every wait has a timeout.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.accounting import Cost
from engine.ledger import Ledger, open_ledger
from tests.api.conftest import REPOSITORY
from tests.conftest import small_pool, write_dataset
from tests.pg_server import free_port

REQUEST_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
START_TIMEOUT = 120.0
"""Seconds for a server's workers to start (each imports polars and OpenDP)."""


def _coopdp() -> list[str]:
    """The ``coopdp`` console script next to this interpreter, or the same entry point through it."""
    script = Path(sys.executable).parent / "coopdp"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from engine.cli import app; app()"]


def _environment() -> dict[str, str]:
    """No ``COOPDP_*`` settings of ours leak in, and the processes run this checkout's code."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COOPDP_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPOSITORY), env.get("PYTHONPATH")]))
    return env


def _client() -> httpx.Client:
    return httpx.Client(timeout=REQUEST_TIMEOUT, trust_env=False)  # trust_env off: never through a proxy


class Server:
    """``coopdp serve --workers N`` in its own process group, so that all its processes can be killed together."""

    def __init__(self, policies: Path, ledger: str, log: Path, workers: int = 3) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = _environment()
        env["COOPDP_MAX_CONCURRENT_QUERIES_PER_KEY"] = "100"  # this test is about the ledger, not the rate limit
        with log.open("ab") as output:
            self.process = subprocess.Popen(
                [
                    *_coopdp(),
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--workers",
                    str(workers),
                    "--policies",
                    str(policies),
                    "--ledger",
                    ledger,
                ],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=policies.parent,
                start_new_session=True,
            )
        try:
            self._wait_ready(workers)
        except BaseException:
            self.kill()
            raise

    def _wait_ready(self, workers: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        with httpx.Client(timeout=httpx.Timeout(5.0), trust_env=False) as client:
            while True:
                if self.process.poll() is not None:
                    pytest.fail(f"the server exited with {self.process.returncode}:\n{self._log_tail()}")
                try:
                    if client.get(f"{self.base}/healthz").status_code == 200 and self._started() >= workers:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"the server did not start in {START_TIMEOUT} s:\n{self._log_tail()}")
                time.sleep(0.2)

    def _started(self) -> int:
        """How many workers have finished starting (uvicorn logs one line each)."""
        return self.log.read_text(errors="replace").count("Application startup complete")

    def _log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-5000:] if self.log.exists() else ""

    def kill(self) -> None:
        """SIGKILL every process of the server at once: no shutdown, no cleanup."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        # Workers the master did not reap would still hold the ledger: make sure none is left.
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    """``shifts``: budget ε 5.0, at most ε 1.0 per query."""
    return write_dataset(tmp_path, small_pool(), epsilon=5.0, max_epsilon_per_query=1.0)


@pytest.fixture
def key(policies: Path, ledger_url: str) -> str:
    """A buyer key for ``lab``, made with ``coopdp keys create`` before the server starts."""
    result = subprocess.run(
        [
            *_coopdp(),
            "keys",
            "create",
            "--buyer",
            "lab",
            "--role",
            "buyer",
            "--policies",
            str(policies),
            "--ledger",
            ledger_url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=_environment(),
    )
    assert result.returncode == 0, result.stderr
    printed = result.stdout.strip().splitlines()[-1]
    assert printed.startswith("cdp_")
    return printed


@pytest.fixture
def start_server(policies: Path, ledger_url: str, tmp_path: Path) -> Iterator[Any]:
    """``start_server()`` starts ``coopdp serve --workers 3`` (again, after a kill); all are stopped at the end."""
    servers: list[Server] = []

    def start() -> Server:
        server = Server(policies, ledger_url, tmp_path / "server.log")
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def _post(base: str, key: str, sql: str, epsilon: float, idempotency_key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    with _client() as client:
        return client.post(
            f"{base}/v1/queries", json={"dataset": "shifts", "sql": sql, "epsilon": epsilon}, headers=headers
        )


def _code(response: httpx.Response) -> str | None:
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return None


def _check_books(ledger: Ledger) -> list[Any]:
    """Every release has its charge: the release log adds up to the dataset's and the buyer's spend, exactly."""
    releases = ledger.releases("shifts")
    total = Cost(Decimal(0), Decimal(0))
    for record in releases:
        total = total + record.cost
    spent = ledger.spent("shifts", "lab")
    assert total == spent.dataset, f"releases add up to {total}, the ledger says {spent.dataset} was spent"
    assert spent.buyer == spent.dataset  # lab is the only buyer
    assert len({record.query_id for record in releases}) == len(releases)
    return releases


@pytest.mark.slow
def test_parallel_queries_on_three_workers_never_overspend(start_server: Any, key: str, ledger_url: str) -> None:
    server = start_server()
    barrier = threading.Barrier(64, timeout=60)

    def fire(i: int) -> httpx.Response:
        barrier.wait()
        # Different SQL texts: an identical query would be answered from the release cache.
        return _post(server.base, key, f"SELECT COUNT(*) FROM shifts WHERE age > {i}", 0.5)

    with ThreadPoolExecutor(max_workers=64) as pool:
        responses = list(pool.map(fire, range(64), timeout=180))

    statuses = Counter(response.status_code for response in responses)
    assert statuses == {201: 10, 409: 54}, [
        (r.status_code, r.text[:200]) for r in responses if r.status_code not in (201, 409)
    ]
    assert {_code(r) for r in responses if r.status_code == 409} == {"budget_exhausted"}
    answered = [r.json() for r in responses if r.status_code == 201]
    assert all(document["cost"]["epsilon"] == 0.5 and document["rows"] for document in answered)
    assert len({document["query_id"] for document in answered}) == 10

    ledger = open_ledger(ledger_url)
    try:
        assert ledger.spent("shifts").dataset.epsilon == Decimal("5.0")
        releases = _check_books(ledger)
        assert {r.query_id for r in releases} == {document["query_id"] for document in answered}
        assert all(r.result is not None for r in releases)
    finally:
        ledger.close()


@pytest.mark.slow
def test_killing_the_server_mid_load_loses_no_charge(start_server: Any, key: str, ledger_url: str) -> None:
    """SIGKILL all of ``coopdp serve`` while queries are being answered; restart it; the books still balance."""
    epsilon = 0.05  # 100 queries fit the budget of 5.0: plenty still to answer when the server dies
    server = start_server()
    answered: dict[str, dict[str, Any]] = {}
    lock = threading.Lock()
    enough = threading.Event()
    failures: Counter[str] = Counter()

    def fire(i: int) -> None:
        try:
            response = _post(server.base, key, f"SELECT COUNT(*) FROM shifts WHERE age > {i}", epsilon)
        except httpx.TransportError as error:  # the server died under this request
            with lock:
                failures[type(error).__name__] += 1
            return
        with lock:
            if response.status_code == 201:
                document = response.json()
                answered[document["query_id"]] = document
                if len(answered) >= 20:
                    enough.set()
            else:
                failures[f"{response.status_code} {_code(response)}"] += 1

    with ThreadPoolExecutor(max_workers=16) as pool:
        futures = [pool.submit(fire, i) for i in range(300)]
        assert enough.wait(timeout=120), f"fewer than 20 queries answered: {failures}"
        server.kill()
        for future in futures:
            future.result(timeout=120)
    assert 20 <= len(answered) < 100, f"the kill came too late to be mid-load: {len(answered)} answered"
    assert not any(code[0].isdigit() for code in failures), failures  # only requests cut off by the kill

    if ledger_url.startswith("sqlite:///"):
        with sqlite3.connect(ledger_url.removeprefix("sqlite:///")) as check:
            assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        check.close()

    ledger = open_ledger(ledger_url)
    try:
        releases = {r.query_id: r for r in _check_books(ledger)}
        # Every answer the buyer received was charged and recorded before it was sent.
        assert set(answered) <= set(releases)
        assert all(releases[query_id].result is not None for query_id in answered)
        before = ledger.spent("shifts").dataset.epsilon
        assert before == Decimal("0.05") * len(releases) <= Decimal("5.0")
    finally:
        ledger.close()

    restarted = start_server()
    with _client() as client:
        some = next(iter(answered))
        again = client.get(f"{restarted.base}/v1/queries/{some}", headers={"Authorization": f"Bearer {key}"})
        assert again.status_code == 200 and again.json()["rows"] == answered[some]["rows"] and again.json()["cached"]
    # Spend the rest: exactly what was left is granted, nothing more.
    granted_after = 0
    for i in range(300, 500):
        response = _post(restarted.base, key, f"SELECT COUNT(*) FROM shifts WHERE age > {i}", epsilon)
        if response.status_code == 409:
            assert _code(response) == "budget_exhausted"
            break
        assert response.status_code == 201, response.text
        granted_after += 1
    else:
        pytest.fail("the budget was never exhausted")

    ledger = open_ledger(ledger_url)
    try:
        releases_after = _check_books(ledger)
        assert ledger.spent("shifts").dataset.epsilon == Decimal("5.0")
        assert len(releases_after) == 100 == len(releases) + granted_after
    finally:
        ledger.close()


@pytest.mark.slow
def test_an_idempotent_retry_gets_the_same_release_and_one_charge(start_server: Any, key: str, ledger_url: str) -> None:
    server = start_server()
    sql = "SELECT COUNT(*) FROM shifts WHERE age > 40"
    first = _post(server.base, key, sql, 0.5, idempotency_key="retry-1")
    assert first.status_code == 201, first.text
    retry = _post(server.base, key, sql, 0.5, idempotency_key="retry-1")
    assert retry.status_code == 200, retry.text
    assert retry.json()["query_id"] == first.json()["query_id"]
    assert retry.json()["rows"] == first.json()["rows"] and retry.json()["cached"]

    # A burst of retries with one new key, at once, across the three workers: one charge, one release.
    barrier = threading.Barrier(12, timeout=60)

    def fire(_: int) -> httpx.Response:
        barrier.wait()
        return _post(server.base, key, "SELECT COUNT(*) FROM shifts WHERE age > 50", 0.5, idempotency_key="burst")

    with ThreadPoolExecutor(max_workers=12) as pool:
        burst = list(pool.map(fire, range(12), timeout=120))
    statuses = Counter(r.status_code for r in burst)
    assert statuses[201] == 1 and set(statuses) <= {200, 201, 409}, [(r.status_code, r.text[:200]) for r in burst]
    assert {_code(r) for r in burst if r.status_code == 409} <= {"conflict"}  # "still being answered; retry shortly"
    ids = {r.json()["query_id"] for r in burst if r.status_code in (200, 201)}
    assert len(ids) == 1
    final = _post(server.base, key, "SELECT COUNT(*) FROM shifts WHERE age > 50", 0.5, idempotency_key="burst")
    assert final.status_code == 200 and final.json()["query_id"] in ids

    ledger = open_ledger(ledger_url)
    try:
        assert ledger.spent("shifts").dataset.epsilon == Decimal("1.0")
        releases = _check_books(ledger)
        assert sorted(r.query_id for r in releases) == sorted([first.json()["query_id"], *ids])
    finally:
        ledger.close()


@pytest.mark.slow
def test_identical_queries_in_flight_on_three_workers_are_charged_once(
    start_server: Any, key: str, ledger_url: str
) -> None:
    """A burst of one query (no Idempotency-Key) across the workers: one charge; every other gets that release."""
    server = start_server()
    sql = "SELECT region, SUM(hours) AS h FROM shifts GROUP BY region"
    barrier = threading.Barrier(12, timeout=60)

    def fire(_: int) -> httpx.Response:
        barrier.wait()
        return _post(server.base, key, sql, 0.5)

    with ThreadPoolExecutor(max_workers=12) as pool:
        burst = list(pool.map(fire, range(12), timeout=120))
    statuses = Counter(r.status_code for r in burst)
    assert statuses == Counter({201: 1, 200: 11}), [(r.status_code, r.text[:200]) for r in burst]
    assert len({(r.json()["query_id"], str(r.json()["rows"])) for r in burst}) == 1
    assert sum(r.json()["cached"] for r in burst) == 11
    ledger = open_ledger(ledger_url)
    try:
        assert ledger.spent("shifts").dataset.epsilon == Decimal("0.5")
        assert len(_check_books(ledger)) == 1
    finally:
        ledger.close()
