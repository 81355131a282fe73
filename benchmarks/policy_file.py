"""Policy TOML for a generated pool, written from a list of columns.

The column list is data, not text: a column the engine learns to read (a date,
say) is one more ``PolicyColumn`` in the caller's list.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROW_LEVEL = "row"


@dataclass(frozen=True)
class PolicyColumn:
    """One ``[columns.NAME]`` table: its type, and bounds or public keys where it has them."""

    name: str
    type: str
    bounds: tuple[float, float] | tuple[str, str] | None = None
    values: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Contribution:
    """The ``[privacy]`` section: a unit column with its bounds, or row-level."""

    unit: str = ROW_LEVEL
    max_groups: int | None = None
    max_rows_per_group: int | None = None


def policy_toml(dataset: str, source: str, contribution: Contribution, columns: Sequence[PolicyColumn]) -> str:
    """A policy whose budget never binds (benchmarks run thousands of queries), with δ for private keys."""
    privacy = [f"unit = {_toml(contribution.unit)}"]
    if contribution.max_groups is not None:
        privacy.append(f"max_groups = {contribution.max_groups}")
    if contribution.max_rows_per_group is not None:
        privacy.append(f"max_rows_per_group = {contribution.max_rows_per_group}")
    lines = [
        "[dataset]",
        f"name = {_toml(dataset)}",
        f"source = {_toml(source)}",
        "",
        "[privacy]",
        *privacy,
        "",
        "[budget]",
        "epsilon = 1e9",
        "delta = 0.5",
        'accounting = "pure"',
        "max_epsilon_per_query = 1e9",
    ]
    for column in columns:
        lines += ["", f"[columns.{column.name}]", f"type = {_toml(column.type)}"]
        if column.bounds is not None:
            lines.append(f"bounds = [{_toml(column.bounds[0])}, {_toml(column.bounds[1])}]")
        if column.values is not None:
            lines.append(f"values = [{', '.join(_toml(value) for value in column.values)}]")
    return "\n".join(lines) + "\n"


def write_policy(
    path: Path, dataset: str, source: str, contribution: Contribution, columns: Sequence[PolicyColumn]
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(policy_toml(dataset, source, contribution, columns), encoding="utf-8")
    return path


def _toml(value: str | float) -> str:
    """A TOML scalar: JSON's string and number syntax is valid TOML for these."""
    return json.dumps(value)
