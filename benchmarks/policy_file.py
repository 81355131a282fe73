"""Policy TOML for a generated pool, written from a list of columns.

The column list is data, not text: a column the engine learns to read (a date,
say) is one more ``PolicyColumn`` in the caller's list.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

ROW_LEVEL = "row"
AUTO: Final = "auto"
"""A bound the engine chooses per query, spending a share of its ε on a DP histogram of contributions."""
Bound = int | Literal["auto"] | None


@dataclass(frozen=True)
class PolicyColumn:
    """One ``[columns.NAME]`` table: its type, and bounds or public keys where it has them.

    ``bounds = "auto"`` asks the engine to choose the value clamp by DP within
    ``range`` (the declared widest bounds).
    """

    name: str
    type: str
    bounds: tuple[float, float] | tuple[str, str] | Literal["auto"] | None = None
    values: tuple[str, ...] | None = None
    range: tuple[float, float] | None = None


@dataclass(frozen=True)
class Contribution:
    """The ``[privacy]`` section: a unit column with its bounds, or row-level.

    A member-level policy bounds each member either per group (``max_groups``
    groups, ``max_rows_per_group`` rows in each) or in total
    (``max_rows_per_member`` rows across all groups); any bound may be ``"auto"``.
    """

    unit: str = ROW_LEVEL
    max_groups: Bound = None
    max_rows_per_group: Bound = None
    max_rows_per_member: Bound = None

    @property
    def automatic(self) -> bool:
        return AUTO in (self.max_groups, self.max_rows_per_group, self.max_rows_per_member)

    def privacy_lines(self) -> list[str]:
        """The ``[privacy]`` keys, each bound only where it is set."""
        lines = [f"unit = {_toml(self.unit)}"]
        for name in ("max_rows_per_member", "max_groups", "max_rows_per_group"):
            value = getattr(self, name)
            if value is not None:
                lines.append(f"{name} = {_toml(value)}")
        return lines


def policy_toml(dataset: str, source: str, contribution: Contribution, columns: Sequence[PolicyColumn]) -> str:
    """A policy whose budget never binds (benchmarks run thousands of queries), with δ for private keys."""
    privacy = contribution.privacy_lines()
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
        if isinstance(column.bounds, str):
            lines.append(f"bounds = {_toml(column.bounds)}")
        elif column.bounds is not None:
            lines.append(f"bounds = [{_toml(column.bounds[0])}, {_toml(column.bounds[1])}]")
        if column.range is not None:
            lines.append(f"range = [{_toml(column.range[0])}, {_toml(column.range[1])}]")
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
