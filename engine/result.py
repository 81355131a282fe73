"""The released result: what a buyer receives, and its JSON document, defined once.

The HTTP API serves this model as it is (``api.schemas.QueryResult`` only
renames it), the CLI prints its document, and the ledger stores it for reuse.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, PlainSerializer, PlainValidator

from engine.accounting import ZERO, Cost, exact
from engine.postprocess import Value


class CostBody(BaseModel):
    """An (ε, δ) privacy cost or budget, as JSON numbers."""

    epsilon: float
    delta: float


def _exact_cost(value: object) -> Cost:
    """A :class:`Cost` as it is, or a document's cost read back as the decimals it shows."""
    if isinstance(value, Cost):
        return value
    body = CostBody.model_validate(value)
    return Cost(exact(body.epsilon), exact(body.delta))


def _cost_body(cost: Cost) -> CostBody:
    return CostBody(**cost.to_dict())


ExactCost = Annotated[
    Cost,
    PlainValidator(_exact_cost, json_schema_input_type=CostBody),
    PlainSerializer(_cost_body, return_type=CostBody),
]
"""An exact :class:`Cost` in the engine, a :class:`CostBody` in the document."""


class Result(BaseModel):
    """What a buyer receives: the noisy table, its accuracy, its cost, and what the buyer may still spend."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    query_id: str | None
    """None for a dry run (nothing was released)."""
    dataset: str
    buyer: str | None
    columns: list[str]
    rows: list[list[Value]]
    accuracy: dict[str, float | None]
    """Per noisy column, the half-width of a 95% interval for one cell."""
    cost: ExactCost
    remaining: ExactCost
    cached: bool
    """A stored release handed over again, at no cost (always in the document)."""
    dry_run: bool = False
    private_keys: list[str] = []
    """GROUP BY columns whose keys were released by a DP threshold (not listed in the policy)."""
    notes: list[str] = []
    """Substitutions the buyer should know of (e.g. MIN answered as a DP quantile)."""
    rank_accuracy: dict[str, int] = {}
    """Quantile columns: with 95% probability a cell's rank is off by at most this many rows (beyond one grid step)."""
    accuracy_target: dict[str, float] = {}
    """The 95% half-widths the query asked for instead of an ε (as asked); ``cost`` is the least ε that meets them."""
    bounds: dict[str, int] = {}
    """Member level: the contribution bounds the query ran with (chosen by DP where the policy says ``"auto"``)."""
    value_bounds: dict[str, list[float]] = {}
    """Columns with ``bounds = "auto"``: the clamp bounds the query chose by DP, [low, high]."""
    bias: dict[str, float] = {}
    """Per aggregate column, the estimated share (0–1) of its rows or value mass that bounding removed (a DP
    estimate: with ``"auto"`` bounds, or when asked for with ``explain_bias``)."""

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
            accuracy_target=document.get("accuracy_target", {}),
            bounds=document.get("bounds", {}),
            value_bounds=document.get("value_bounds", {}),
            bias=document.get("bias", {}),
        )

    def to_dict(self) -> dict[str, Any]:
        """The document: the fields that are always there, and the optional ones only where they say something."""
        return self.model_dump(exclude_defaults=True)
