"""A real coopdp server (uvicorn in a subprocess, on a free loopback port) over small pools.

Starting one costs about 1.5 s, so the main server is session-scoped; tests
keep out of each other's way by using their own buyers (``fresh_buyer``) and,
where they move a dataset's budget, their own datasets.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import httpx
import polars as pl
import pytest
from typer.testing import CliRunner

from api.client import Client
from cli import app as cli
from tests.bounds_pools import heavy_tail_pool
from tests.conftest import small_pool, write_dataset

REPOSITORY = Path(__file__).resolve().parents[2]
"""This checkout: the server must run its code, not whatever copy the environment installed."""

CONSENT = '[purposes.commercial]\nconsent_column = "member_flag"\n'

MAIN_DATASETS: dict[str, dict[str, object]] = {
    # name: write_dataset keywords (the pool is small_pool() unless "frame" is given)
    "shifts": {"epsilon": 1000.0, "max_epsilon_per_query": 2.0, "extra": CONSENT},
    "tiny": {"epsilon": 1.0, "max_epsilon_per_query": 1.0},
    "total": {
        "epsilon": 100.0,
        "max_epsilon_per_query": 1.0,
        "privacy": 'unit = "member_id"\nmax_rows_per_member = 12',
    },
    "governed": {"epsilon": 5.0, "max_epsilon_per_query": 1.0},
    "quotas": {"epsilon": 100.0, "max_epsilon_per_query": 1.0},
    "refusals": {"epsilon": 100.0, "max_epsilon_per_query": 1.0},
    "restricted": {
        "epsilon": 100.0,
        "max_epsilon_per_query": 1.0,
        "extra": '[buyers.uni_lab]\nepsilon = 3.0\npurpose = "research"\n',
    },
    "noconsent": {
        "epsilon": 100.0,
        "max_epsilon_per_query": 1.0,
        "extra": CONSENT,
        "frame": small_pool().with_columns(pl.lit(False).alias("member_flag")),
    },
    "dated": {
        "epsilon": 100.0,
        "max_epsilon_per_query": 1.0,
        "extra": '[columns.day]\ntype = "date"\nbounds = ["2024-01-01", "2024-03-31"]\n\n'
        '[public_tables.zones]\nsource = "../data/zones.csv"\nkey = "region"\ndescription = "zones"\n',
        "frame": small_pool().with_columns(pl.lit(date(2024, 2, 1)).alias("day")),
        "tables": {"zones": pl.DataFrame({"region": ["north", "south"], "zone": ["N", "S"], "rate": [1.5, 2.0]})},
    },
    "auto": {
        "epsilon": 100.0,
        "max_epsilon_per_query": 1.0,
        "privacy": 'unit = "member_id"\nmax_groups = "auto"\nmax_rows_per_group = "auto"\nauto_limit = 256',
        "extra": '[columns.pay]\ntype = "float"\nbounds = "auto"\nrange = [0.0, 1000.0]\n',
        "frame": heavy_tail_pool().with_columns(pl.lit(20.0).alias("pay")),
    },
}


class BuyerClient(Client):
    """A buyer's client that knows the buyer's name."""

    def __init__(self, base_url: str, api_key: str, name: str) -> None:
        super().__init__(base_url, api_key, timeout=30.0)
        self.name = name


@dataclass(frozen=True)
class LiveServer:
    url: str
    root: Path
    policies: Path
    ledger_path: Path
    steward_key: str
    """Made with ``coopdp keys create --role steward`` before the server started."""
    buyer_key: str
    """The buyer ``alice``'s key, made with ``coopdp keys create`` before the server started."""
    log: Path

    @property
    def ledger_url(self) -> str:
        return f"sqlite:///{self.ledger_path}"

    def client(self, key: str | None = None) -> Client:
        return Client(self.url, key, timeout=30.0)

    def steward(self) -> Client:
        return self.client(self.steward_key)


def cli_create_key(policies: Path, ledger_url: str, name: str, role: str) -> str:
    """``coopdp keys create --buyer NAME --role ROLE``: the key is its only output line."""
    result = CliRunner().invoke(
        cli, ["keys", "create", "--buyer", name, "--role", role, "--policies", str(policies), "--ledger", ledger_url]
    )
    assert result.exit_code == 0, result.output
    (key,) = result.stdout.split()
    return key


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"coopdp server exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"coopdp server did not become healthy in {timeout} s:\n{log.read_text()}")


@contextmanager
def running_server(
    root: Path, datasets: dict[str, dict[str, object]], settings: dict[str, str] | None = None
) -> Iterator[LiveServer]:
    """Write the pools and policies under ``root``, make keys with the CLI, serve; stop on exit.

    ``settings`` are extra ``COOPDP_*`` environment variables for the server.
    """
    policies = root / "policies"
    for name, options in datasets.items():
        options = dict(options)
        frame = options.pop("frame", None)
        for table, contents in dict(options.pop("tables", {})).items():  # type: ignore[call-overload]
            (root / "data").mkdir(parents=True, exist_ok=True)
            contents.write_csv(root / "data" / f"{table}.csv")
        policies = write_dataset(root, small_pool() if frame is None else frame, name=name, **options)  # type: ignore[arg-type]
    ledger_path = root / "ledger.db"
    ledger_url = f"sqlite:///{ledger_path}"
    steward_key = cli_create_key(policies, ledger_url, "steward", "steward")
    buyer_key = cli_create_key(policies, ledger_url, "alice", "buyer")
    env = {name: value for name, value in os.environ.items() if not name.startswith("COOPDP_")}
    env |= {"COOPDP_POLICIES": str(policies), "COOPDP_LEDGER": ledger_url, "PYTHONUNBUFFERED": "1"}
    env |= {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPOSITORY), env.get("PYTHONPATH")]))} | (settings or {})
    log = root / "server.log"
    for attempt in itertools.count():
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        with log.open("wb") as output:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "api.app:create_app",
                    "--factory",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--log-level",
                    "warning",
                    "--no-access-log",
                ],
                env=env,
                cwd=root,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        try:
            try:
                _wait_healthy(url, process, log)
            except RuntimeError:
                if attempt < 2 and "address already in use" in log.read_text().lower():
                    continue  # lost the race for the port: try another
                raise
            yield LiveServer(url, root, policies, ledger_path, steward_key, buyer_key, log)
            return
        finally:
            _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The session's server over ``MAIN_DATASETS``."""
    with running_server(tmp_path_factory.mktemp("coopdp_http"), MAIN_DATASETS) as live:
        yield live


@pytest.fixture(scope="session")
def steward(server: LiveServer) -> Iterator[Client]:
    with server.steward() as client:
        yield client


@pytest.fixture(scope="session")
def alice(server: LiveServer) -> Iterator[Client]:
    """The buyer ``alice`` (key made by the CLI)."""
    with server.client(server.buyer_key) as client:
        yield client


@pytest.fixture
def fresh_buyer(server: LiveServer, steward: Client) -> Iterator[Callable[..., BuyerClient]]:
    """``fresh_buyer(purpose=None)``: a new buyer with its own key (made through the steward API)."""
    counter = itertools.count()
    opened: list[BuyerClient] = []

    def make(purpose: str | None = None) -> BuyerClient:
        name = f"buyer_{time.monotonic_ns()}_{next(counter)}"
        steward.create_buyer(name, purpose)
        client = BuyerClient(server.url, steward.create_key(name, "buyer").key, name)
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.close()
