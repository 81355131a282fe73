"""The accuracy targets of issue 13, checked on the accuracy suite's entries (ours, with the oracle beside).

1. At ε = 1, our mean relative error is within 1.5× the oracle's.
2. Wherever the oracle's error is ≤ 0.1, ours is ≤ 0.15.
3. The bias share the engine reports is within ±0.05 of the true share in ≥ 90% of runs.

A check that cannot be made (no oracle for the query, no run at ε = 1, an
engine that reports no bias) is recorded with ``ok = None`` and says why.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from benchmarks.peers.compare import OURS

TARGET_EPSILON = 1.0
ORACLE_RATIO = 1.5
SMALL_ORACLE, SMALL_ERROR = 0.1, 0.15
BIAS_TOLERANCE, BIAS_RUNS = 0.05, 0.9


@dataclass(frozen=True)
class Check:
    query: str
    name: str
    measured: str
    target: str
    ok: bool | None
    """None when the check cannot be made (``measured`` says why)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def target_checks(entries: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The three checks per query that has our entries, in the order the queries first appear."""
    by_query: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in entries:
        if entry.get("system") == OURS:
            by_query[entry["query"]].append(entry)
    checks = []
    for query, ours in by_query.items():
        checks += [oracle_ratio(query, ours), small_oracle(query, ours), bias_share(query, ours)]
    return [check.to_dict() for check in checks]


def oracle_ratio(query: str, ours: list[dict[str, Any]]) -> Check:
    name, target = f"error at ε={TARGET_EPSILON:g} vs oracle", f"≤ {ORACLE_RATIO:g} × oracle"
    entry = next((entry for entry in ours if entry["epsilon"] == TARGET_EPSILON), None)
    if entry is None:
        return Check(query, name, f"no run at ε={TARGET_EPSILON:g}", target, None)
    error, oracle = entry.get("relative_error"), entry.get("oracle_error")
    if oracle is None:
        return Check(query, name, "no oracle for this query", target, None)
    if error is None:
        return Check(query, name, "no released cell", target, False)
    ratio = error / oracle if oracle > 0 else float("inf")
    return Check(query, name, f"{error:.4f} / {oracle:.4f} = {ratio:.2f}×", target, ratio <= ORACLE_RATIO)


def small_oracle(query: str, ours: list[dict[str, Any]]) -> Check:
    name, target = f"error where oracle ≤ {SMALL_ORACLE:g}", f"≤ {SMALL_ERROR:g}"
    small = [
        entry for entry in ours if (entry.get("oracle_error") is not None) and entry["oracle_error"] <= SMALL_ORACLE
    ]
    if not small:
        reason = (
            "no oracle for this query"
            if all(e.get("oracle_error") is None for e in ours)
            else "oracle > 0.1 at every ε"
        )
        return Check(query, name, reason, target, None)
    small.sort(key=lambda entry: entry["epsilon"])
    missed = [e for e in small if e.get("relative_error") is None or e["relative_error"] > SMALL_ERROR]
    shown = ", ".join(f"ε={e['epsilon']:g}: {_fraction(e.get('relative_error'))}" for e in small)
    return Check(query, name, shown, target, not missed)


def bias_share(query: str, ours: list[dict[str, Any]]) -> Check:
    name, target = "reported bias vs true", f"±{BIAS_TOLERANCE:g} in ≥ {BIAS_RUNS:.0%} of runs"
    pairs = [
        (reported, true)
        for entry in ours
        for reported, true in entry.get("bias_runs", [])
        if reported is not None and true is not None
    ]
    if not pairs:
        return Check(query, name, "the engine reports no bias", target, None)
    within = sum(abs(reported - true) <= BIAS_TOLERANCE for reported, true in pairs) / len(pairs)
    return Check(query, name, f"{within:.0%} of {len(pairs)} runs", target, within >= BIAS_RUNS)


def _fraction(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"
