"""The protocol a peer's adapter speaks: one JSON request on stdin, one JSON line of answers on stdout.

Standard library only: it runs inside each peer's venv. A request names the
pool's Parquet parts, the member-level bounds, one query (its fields mirror
``benchmarks.queries.BenchQuery``) and a list of runs, each an (ε, δ) total.
The answer gives, per run, the seconds it took and the released cells as
``{json.dumps([key, ...]): value}``.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

Request = dict[str, Any]
PUBLIC_KEYS = {
    "region": ["north", "south", "east", "west"],
    "sector": [f"sector_{i:02d}" for i in range(50)],
}
"""The generator's public keys (``benchmarks.generate``), repeated here because this module cannot import it."""
Cells = dict[str, float]


def serve(prepare: Callable[[Request], Any], answer: Callable[[Any, Request, float, float], Cells]) -> None:
    """Read the request, ``prepare`` once (untimed: loading data, starting Spark), then time each run."""
    request = json.load(sys.stdin)
    try:
        state = prepare(request)
        seconds, releases = [], []
        for run in request["runs"]:
            start = time.perf_counter()
            cells = answer(state, request, run["epsilon"], run["delta"])
            seconds.append(time.perf_counter() - start)
            releases.append({key: float(value) for key, value in cells.items() if value is not None})
        output: dict[str, Any] = {"seconds": seconds, "releases": releases}
    except Exception as error:  # noqa: BLE001 - the parent records why a peer could not answer
        traceback.print_exc(file=sys.stderr)
        message = (getattr(error, "message", None) or str(error) or repr(error)).strip().splitlines()
        output = {"error": f"{error.__class__.__name__}: {message[0][:300] if message else ''}"}
    print(json.dumps(output))


def cell_key(values: list[Any]) -> str:
    return json.dumps(
        [value if isinstance(value, (str, int, bool)) or value is None else str(value) for value in values]
    )


def cells_from_rows(rows: list[tuple[Any, ...]], keys: list[str]) -> Cells:
    """Rows of (key..., value) as cells."""
    return {cell_key(list(row[: len(keys)])): row[len(keys)] for row in rows}
