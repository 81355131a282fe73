"""The accuracy suite's console tables (rich): errors beside the oracle and bounds, then the target checks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.bounds import bounds_label


def print_bounds_table(console: Console, entries: Sequence[dict[str, Any]]) -> None:
    """One query's entries: per ε and system, the error, the oracle's, the bounds used and the bias shares."""
    if not entries:
        return
    table = Table(title=entries[0]["query"], title_justify="left")
    for header in ("ε", "system", "error", "oracle", "÷ oracle", "bounds", "oracle bounds", "true bias", "reported"):
        table.add_column(header, justify="left" if header in ("system", "bounds", "oracle bounds") else "right")
    for entry in sorted(entries, key=lambda entry: (entry["epsilon"], entry["system"])):
        error, oracle = entry.get("relative_error"), entry.get("oracle_error")
        table.add_row(
            f"{entry['epsilon']:g}",
            entry["system"],
            _fraction(error),
            _fraction(oracle),
            f"{error / oracle:.2f}" if error is not None and oracle else "",
            bounds_label(entry.get("bounds")),
            bounds_label(entry.get("oracle_bounds")) if oracle is not None else "",
            _fraction(entry.get("true_bias")),
            _fraction(entry.get("reported_bias")),
        )
    console.print(table)


def print_checks_table(console: Console, checks: Sequence[dict[str, Any]]) -> None:
    """The targets of issue 13 per query: measured, target, and ok / MISSED / n/a."""
    table = Table(title="accuracy targets (issue 13)", title_justify="left")
    for header in ("query", "check", "measured", "target", ""):
        table.add_column(header)
    for check in checks:
        table.add_row(check["query"], check["name"], check["measured"], check["target"], mark(check["ok"]))
    console.print(table)


def print_oracle_table(console: Console, entries: Sequence[dict[str, Any]]) -> None:
    """Per pool size, query and ε: the oracle's error and bounds, and the fixed policy's expected error."""
    table = Table(title="oracle: the least error of any fixed bounds (pure DP)", title_justify="left")
    for header in ("rows", "query", "ε", "oracle", "oracle bounds", "removed", "policy bounds", "policy error"):
        table.add_column(header, justify="left" if "bounds" in header or header == "query" else "right")
    for entry in entries:
        table.add_row(
            f"{entry['rows']:,}",
            entry["query"],
            f"{entry['epsilon']:g}",
            _fraction(entry["oracle_error"]),
            bounds_label(entry["oracle_bounds"]),
            _fraction(entry["oracle_removed_share"]),
            bounds_label(entry.get("policy_bounds")),
            _fraction(entry.get("policy_error")),
        )
    console.print(table)


def mark(ok: bool | None) -> str:
    return "n/a" if ok is None else "ok" if ok else "MISSED"


def _fraction(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"
