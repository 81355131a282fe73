"""What every measurement file records besides its numbers: when, where, with what, by which command.

Numbers without the machine, the load and the versions cannot be compared;
the report prints these fields next to every table.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex
import sys
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from benchmarks.core import machine

LIBRARIES = ("polars", "opendp", "sqlglot", "numpy")


@dataclass(frozen=True)
class Environment:
    date: str
    machine: str
    cores: int
    memory_gib: float
    load_before: tuple[float, float, float]
    versions: dict[str, str]
    command: str

    @classmethod
    def now(cls) -> Environment:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        return cls(
            date=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            machine=machine(),
            cores=os.cpu_count() or 0,
            memory_gib=round(memory, 1),
            load_before=os.getloadavg(),
            versions={name: _version(name) for name in LIBRARIES},
            command="python -m benchmarks " + shlex.join(sys.argv[1:]),
        )


def save(path: Path, environment: Environment, measurements: list[dict[str, Any]], **extra: Any) -> Path:
    """One JSON file per command: the environment, the load after, and one dict per measurement."""
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "environment": asdict(environment),
        "load_after": os.getloadavg(),
        **extra,
        "measurements": measurements,
    }
    path.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    return path


def load(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"
