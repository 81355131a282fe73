"""Throughput of the HTTP API under a bounded local load (loopback only).

    python -m benchmarks.http_load [--workers 2] [--clients 8] [--requests 400]

Starts ``coopdp serve`` on a free loopback port over the demo pool and a fresh
SQLite ledger, then sends a fixed number of dry runs and of small released
queries (each with its own SQL, so none is answered from the release cache)
from ``--clients`` threads, and prints requests per second and p50/p99
latency for each.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from engine.demo import ensure_demo


@dataclass(frozen=True)
class LoadResult:
    name: str
    requests: int
    seconds: float
    latencies: list[float]
    statuses: dict[int, int]

    def row(self) -> str:
        ordered = sorted(self.latencies)
        p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
        return (
            f"| {self.name} | {self.requests} | {self.requests / self.seconds:,.0f} | "
            f"{statistics.median(ordered) * 1000:.1f} | {p99 * 1000:.1f} | {dict(sorted(self.statuses.items()))} |"
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _coopdp(*args: str, env: dict[str, str]) -> str:
    command = [str(Path(sys.executable).parent / "coopdp"), *args]
    return subprocess.run(command, env=env, check=True, capture_output=True, text=True, timeout=120).stdout.strip()


def _load(
    name: str, total: int, clients: int, send: Callable[[httpx.Client, int], httpx.Response], url: str
) -> LoadResult:
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    def one(index: int, client: httpx.Client) -> None:
        started = time.perf_counter()
        response = send(client, index)
        latencies.append(time.perf_counter() - started)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

    with httpx.Client(base_url=url, timeout=30, limits=httpx.Limits(max_connections=clients)) as client:
        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(lambda index: one(index, client), range(total)))
        seconds = time.perf_counter() - started
    return LoadResult(name, total, seconds, latencies, statuses)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=400)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="coopdp-load-"))
    policies = root / "policies"
    ensure_demo(policies)
    policy = policies / "gig_work.toml"
    text = (
        policy.read_text()
        .replace("epsilon = 10.0", "epsilon = 100000.0")
        .replace("[buyers.uni_lab]\nepsilon = 3.0", "[buyers.uni_lab]")
    )
    policy.write_text(text)
    env = {
        **os.environ,
        "COOPDP_POLICIES": str(policies),
        "COOPDP_LEDGER": f"sqlite:///{root / 'ledger.db'}",
        "COOPDP_MAX_CONCURRENT_QUERIES_PER_KEY": str(args.clients),
    }
    key = _coopdp("keys", "create", "--buyer", "uni_lab", env=env)
    port = _free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "coopdp"), "serve", "--port", str(port), "--workers", str(args.workers)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        headers = {"Authorization": f"Bearer {key}"}
        sql = "SELECT region, COUNT(*) AS n, AVG(hours) AS h FROM gig_work WHERE age > {} GROUP BY region"

        def dry_run(client: httpx.Client, index: int) -> httpx.Response:
            body = {"dataset": "gig_work", "sql": sql.format(index % 50), "epsilon": 0.01, "dry_run": True}
            return client.post("/v1/queries", json=body, headers=headers)

        def released(client: httpx.Client, index: int) -> httpx.Response:
            body = {"dataset": "gig_work", "sql": sql.format(index), "epsilon": 0.01}
            return client.post("/v1/queries", json=body, headers=headers)

        results = [
            _load("dry run", args.requests, args.clients, dry_run, url),
            _load("released query (300k-row pool, member level)", args.requests // 4, args.clients, released, url),
        ]
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"workers={args.workers} clients={args.clients} cores={os.cpu_count()}")
    print("| request | n | req/s | p50 ms | p99 ms | statuses |")
    print("|---|---|---|---|---|---|")
    for result in results:
        print(result.row())


if __name__ == "__main__":
    main()
