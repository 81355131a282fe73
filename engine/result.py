"""The released result: what a buyer receives, and its JSON form."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.accounting import Cost
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
        return document
