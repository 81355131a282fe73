"""Leaks beside the answer: logs, ledger tables, error bodies and server output never carry data.

The planted pools (``pools.py``) hold a lone member's city ``ZZLEAK42``, an
e-mail per member and 987654.321 hours. A mix of answered and refused
queries runs through the engine (logging captured at DEBUG, and both output
streams at the file-descriptor level), the CLI and a live server; then every
log line, every table of the ledger, every response body and the server's
own log are searched for the planted values and for the exact (un-noised)
aggregates the backend computed. The noise must come from OpenDP's samplers:
with Python's and NumPy's generators made to raise, every mechanism still
releases, and no engine module imports them.
"""

from __future__ import annotations

import ast
import json
import logging
import random
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest

import engine as engine_package
from engine import Engine
from engine.errors import CoopdpError
from engine.planner import plan_query
from engine.sql import parse
from tests.api.conftest import LiveServer, running_server
from tests.conftest import write_dataset
from tests.privacy.channels import CliChannel, Request
from tests.privacy.pools import EXTRA_COLUMNS, PLANTED, PLANTED_DATASETS, planted_pool

ANSWERED = [
    ("SELECT COUNT(*) AS n, SUM(hours) AS h, AVG(hours) AS a FROM shifts", None),
    ("SELECT city, COUNT(*) FROM shifts GROUP BY city", 1e-7),
    ("SELECT email, SUM(hours) FROM shifts GROUP BY email", 1e-7),
    ("SELECT region, MEDIAN(hours), MAX(age) FROM shifts GROUP BY region", None),
    ("SELECT VAR_POP(hours), STDDEV(age) FROM shifts WHERE hours > 100", None),
]
REFUSED = [
    "SELECT * FROM shifts",
    "SELECT email FROM shifts",
    "SELECT city, hours FROM shifts",
    "SELECT MAX(email) FROM shifts",
    "SELECT SUM(CAST(email AS INT)) FROM shifts",
    "SELECT COUNT(*) FROM shifts WHERE email > 5",
    "SELECT member_id, COUNT(*) FROM shifts GROUP BY member_id",
    "SELECT SUM(hours) FROM shifts WHERE hours IN (SELECT hours FROM shifts)",
    "SELECT COUNT(DISTINCT city) FROM shifts",
    "SELECT SUM(hours) OVER (PARTITION BY city) FROM shifts",
]
EXACT_SQL = "SELECT COUNT(*) AS n, SUM(hours) AS h FROM shifts"
SYNTHETIC_DATA_MODULES = {"demo.py"}
"""Makes the demo pool with NumPy (made-up members, not noise); it never runs during a release."""
NO_TRUNCATION = 'unit = "member_id"\nmax_groups = 1\nmax_rows_per_group = 1000'
"""No member has this many rows: the backend's exact aggregates are deterministic, so the test can know them."""


def exact_strings(policies: Path) -> list[str]:
    """The backend's exact (bounded, un-noised) sum of hours, as a leak would print it."""
    probe = Engine.from_policies(policies, ledger="sqlite:///:memory:")
    plan = plan_query(parse(EXACT_SQL), probe.policy("shifts"))
    exact = probe.backend(probe.policy("shifts")).execute(plan)
    probe.close()
    (sum_part,) = [index for index, part in enumerate(plan.parts) if part.value is not None]
    units = int(exact.parts[sum_part][0])
    scale = plan.parts[sum_part].value.scale  # type: ignore[union-attr]
    assert units > 10**6, "the exact sum must be long enough not to match a noisy value by chance"
    return [str(units), f"{units / scale:.4f}"]


def assert_clean(text: str, where: str, secrets: list[str]) -> None:
    lowered = text.lower()
    for secret in secrets:
        assert secret.lower() not in lowered, f"{secret!r} found in {where}"


def ledger_text(ledger: Path) -> str:
    """Every row of every table of a SQLite ledger, as text."""
    with sqlite3.connect(ledger) as connection:
        tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return "\n".join(f"{table}: {connection.execute(f'SELECT * FROM {table}').fetchall()}" for table in tables)


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    return write_dataset(tmp_path, planted_pool(), privacy=NO_TRUNCATION, epsilon=1000.0, extra=EXTRA_COLUMNS)


def test_engine_logs_outputs_and_ledger_carry_no_data(
    policies: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    secrets = [*PLANTED, *exact_strings(policies)]
    ledger = tmp_path / "ledger.db"
    engine = Engine.from_policies(policies, ledger=f"sqlite:///{ledger}")
    shown: list[str] = []
    with caplog.at_level(logging.DEBUG):
        for sql, delta in ANSWERED:
            shown.append(json.dumps(engine.query("shifts", sql, epsilon=1.0, delta=delta).to_dict()))
        for sql in REFUSED:
            with pytest.raises(CoopdpError) as refused:
                engine.query("shifts", sql, epsilon=1.0)
            shown.append(json.dumps(refused.value.to_dict()))
    engine.close()
    captured = capfd.readouterr()
    assert_clean("\n".join(shown), "results and error bodies", secrets)
    assert_clean(caplog.text, "the log (DEBUG)", secrets)
    assert_clean(captured.out + captured.err, "stdout/stderr", secrets)
    assert_clean(ledger_text(ledger), "the ledger's tables", secrets)


def test_cli_output_carries_no_data(policies: Path, tmp_path: Path) -> None:
    secrets = [*PLANTED, *exact_strings(policies)]
    channel = CliChannel(policies, f"sqlite:///{tmp_path / 'ledger.db'}")
    for sql, delta in ANSWERED:
        outcome = channel.ask(Request("shifts", sql, 1.0, delta))
        assert outcome.code is None
        assert_clean(outcome.text, f"the CLI's output for {sql}", secrets)
    for sql in REFUSED:
        outcome = channel.ask(Request("shifts", sql, 1.0))
        assert outcome.code is not None
        assert_clean(outcome.text, f"the CLI's error for {sql}", secrets)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with running_server(tmp_path_factory.mktemp("leaks_http"), PLANTED_DATASETS) as server:
        yield server


def test_http_bodies_transparency_audit_and_server_log_carry_no_data(live: LiveServer) -> None:
    headers = {"Authorization": f"Bearer {live.buyer_key}"}
    bodies: list[str] = []
    with httpx.Client(base_url=live.url, timeout=30.0) as client:
        for sql, delta in ANSWERED:
            body = {"dataset": "shifts", "sql": sql, "epsilon": 1.0, "delta": delta}
            response = client.post("/v1/queries", json=body, headers=headers)
            assert response.status_code == 201, response.text
            bodies.append(response.text)
            bodies.append(client.get(f"/v1/queries/{response.json()['query_id']}", headers=headers).text)
        for sql in REFUSED:
            response = client.post(
                "/v1/queries", json={"dataset": "shifts", "sql": sql, "epsilon": 1.0}, headers=headers
            )
            assert response.status_code == 400, response.text
            bodies.append(response.text)
        bodies.append(client.get("/v1/queries", headers=headers).text)
        bodies.append(client.get("/v1/transparency/shifts").text)
        bodies.append(client.get("/v1/datasets/shifts", headers=headers).text)
        bodies.append(client.get("/v1/audit", headers={"Authorization": f"Bearer {live.steward_key}"}).text)
    assert_clean("\n".join(bodies), "HTTP bodies", list(PLANTED))
    assert_clean(live.log.read_text(), "the server's log", list(PLANTED))
    assert_clean(ledger_text(live.ledger_path), "the server's ledger", list(PLANTED))


# --- the noise comes from OpenDP, never from Python's or NumPy's generators ---------------------------


def _raiser(name: str) -> Callable[..., object]:
    def refuse(*args: object, **kwargs: object) -> object:
        raise AssertionError(f"{name} was called during a release: noise must come from OpenDP")

    return refuse


@contextmanager
def generators_forbidden() -> Iterator[None]:
    """Every public function of ``random`` and ``numpy.random`` raises inside this block."""
    with pytest.MonkeyPatch.context() as patch:
        for module, prefix in ((random, "random"), (np.random, "numpy.random")):
            for name in dir(module):
                value = getattr(module, name)
                if not name.startswith("_") and callable(value) and not isinstance(value, type):
                    patch.setattr(module, name, _raiser(f"{prefix}.{name}"))
        yield


@pytest.mark.parametrize("accounting", ["pure", "zcdp"])
def test_every_mechanism_releases_without_python_or_numpy_randomness(accounting: str, tmp_path: Path) -> None:
    policies = write_dataset(tmp_path, planted_pool(), accounting=accounting, epsilon=1000.0, extra=EXTRA_COLUMNS)
    engine = Engine.from_policies(policies, ledger=f"sqlite:///{tmp_path / 'ledger.db'}")
    with generators_forbidden():
        with pytest.raises(AssertionError, match="noise must come from OpenDP"):
            np.random.default_rng()  # the trap is set
        for sql, _ in ANSWERED:  # Laplace or Gaussian counts and sums, thresholds, quantiles, spreads
            result = engine.query("shifts", sql, epsilon=1.0, delta=1e-7)
            assert result.rows or result.private_keys
    engine.close()


def test_no_engine_module_imports_python_or_numpy_randomness() -> None:
    """A static check, for the code paths the runtime trap above does not reach."""
    offenders = []
    for path in Path(engine_package.__file__).parent.rglob("*.py"):
        if path.name in SYNTHETIC_DATA_MODULES:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Attribute) and node.attr == "random" and isinstance(node.value, ast.Name):
                names = [f"{node.value.id}.random"]
            offenders += [f"{path.name}: {name}" for name in names if name in ("random", "numpy.random", "np.random")]
    assert offenders == []
