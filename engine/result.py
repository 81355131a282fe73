"""The released result: what a buyer receives, and its JSON form."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.accounting import ZERO, Cost
from engine.postprocess import Value


@dataclass(frozen=True)
class Result:
    query_id: str | None
    """None for a dry run (nothing was released)."""
    dataset: str
    buyer: str | None
    columns: list[str]
    rows: list[list[Value]]
    accuracy: dict[str, float | None]
    cost: Cost
    remaining: Cost
    cached: bool = False
    dry_run: bool = False
    private_keys: list[str] = field(default_factory=list)
    """GROUP BY columns whose keys were released by a DP threshold (not listed in the policy)."""
    notes: list[str] = field(default_factory=list)
    """Substitutions the buyer should know of (e.g. MIN answered as a DP quantile)."""
    rank_accuracy: dict[str, int] = field(default_factory=dict)
    """Quantile columns: with 95% probability a cell's rank is off by at most this many rows (beyond one grid step)."""

    @classmethod
    def from_dict(cls, document: dict[str, Any], *, buyer: str | None, remaining: Cost, cached: bool) -> Result:
        """A stored release, handed to ``buyer`` again; this hand-over costs nothing."""
        return cls(
            query_id=document["query_id"],
            dataset=document["dataset"],
            buyer=buyer,
            columns=document["columns"],
            rows=document["rows"],
            accuracy=document["accuracy"],
            cost=ZERO,
            remaining=remaining,
            cached=cached,
            private_keys=document.get("private_keys", []),
            notes=document.get("notes", []),
            rank_accuracy=document.get("rank_accuracy", {}),
        )

    def to_dict(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "query_id": self.query_id,
            "dataset": self.dataset,
            "buyer": self.buyer,
            "columns": self.columns,
            "rows": self.rows,
            "accuracy": self.accuracy,
            "cost": self.cost.to_dict(),
            "remaining": self.remaining.to_dict(),
            "cached": self.cached,
        }
        if self.dry_run:
            document["dry_run"] = True
        if self.private_keys:
            document["private_keys"] = self.private_keys
        if self.notes:
            document["notes"] = self.notes
        if self.rank_accuracy:
            document["rank_accuracy"] = self.rank_accuracy
        return document
