"""Request and response bodies: inputs forbid unknown fields; outputs carry only public values."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from engine.keys import Role
from engine.result import CostBody, Result


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QueryRequest(_Input):
    dataset: str = Field(max_length=200)
    sql: str = Field(description="One SELECT over the dataset's table.")
    epsilon: float | None = Field(
        default=None,
        strict=True,
        description="Privacy budget this query may spend (validated against the policy); or give accuracy.",
    )
    delta: float | None = Field(default=None, strict=True, description="δ, needed by zcdp datasets.")
    dry_run: bool = Field(default=False, description="Cost and accuracy only: reads no data, charges nothing.")
    explain: bool = Field(
        default=False,
        description="Return the explanation (parts, bounds, sensitivity, noise, cost) instead: reads no data, "
        "charges nothing.",
    )
    weights: dict[Annotated[str, Field(max_length=200)], Annotated[float, Field(gt=0, allow_inf_nan=False)]] | None = (
        Field(
            default=None,
            max_length=100,
            description="Output column → weight: its share of ε relative to the others (default 1 each).",
        )
    )
    accuracy: dict[Annotated[str, Field(max_length=200)], float] | None = Field(
        default=None,
        max_length=100,
        description="Instead of epsilon: output column (COUNT or SUM) → the 95% half-width it needs; the query "
        "spends the least ε that meets every target, or is refused with the ε it would need.",
    )
    explain_bias: bool = Field(
        default=False,
        description="Also estimate the share of rows bounding removes (``bias`` in the result), for the policy's "
        "auto_share of the query's ε (always done where the policy's bounds are auto).",
    )

    @model_validator(mode="after")
    def _one_budget(self) -> QueryRequest:
        """Exactly one of epsilon and accuracy says what the query may spend (422 ``invalid_request`` otherwise)."""
        if (self.epsilon is None) == (self.accuracy is None):
            raise ValueError("give exactly one of epsilon or accuracy")
        return self


class QueryResult(Result):
    """A released result, or a dry run's cost and accuracy."""

    # The document is defined once, by engine.result.Result: this class only gives it its HTTP name.


class ReleaseSummary(BaseModel):
    query_id: str
    dataset: str
    sql: str
    cost: CostBody
    created_at: str


class ColumnInfo(BaseModel):
    name: str
    type: str
    bounds: tuple[float, float] | tuple[dt.date, dt.date] | Literal["auto"] | None = Field(
        description='numbers; for date and datetime columns, the declared range as ISO dates; "auto": chosen per '
        "query by DP inside range"
    )
    public_keys: list[str | bool] | None
    range: tuple[float, float] | None = Field(default=None, description='the hard outer range of bounds = "auto"')


class PublicTableInfo(BaseModel):
    """A public lookup table a query may JOIN on its key."""

    name: str
    key: str
    description: str
    columns: dict[str, str] = Field(description="column → type (text, int, float, bool, date)")


class DatasetInfo(BaseModel):
    name: str
    description: str
    privacy_unit: Literal["member", "row"]
    max_groups: int | Literal["auto"] | None
    max_rows_per_group: int | Literal["auto"] | None
    max_rows_per_member: int | Literal["auto"] | None = Field(
        default=None, description="rows one member may add over all groups (total mode); None where not allowed"
    )
    accounting: str
    max_epsilon_per_query: float
    columns: list[ColumnInfo]
    remaining: CostBody
    """What the caller may still spend here."""
    public_tables: list[PublicTableInfo] = []


class BudgetUpdate(_Input):
    epsilon: float = Field(gt=0, allow_inf_nan=False)
    delta: float = Field(ge=0, lt=1, allow_inf_nan=False)


class BudgetStatusBody(BaseModel):
    dataset: str
    budget: CostBody
    spent: CostBody
    remaining: CostBody


class BuyerCreate(_Input):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    purpose: str | None = Field(
        default=None, pattern=r"^[a-z0-9_-]{1,64}$", description="lower case, as in the policies"
    )


class BuyerBody(BaseModel):
    name: str
    purpose: str | None
    created_at: str
    revoked: bool


class KeyCreate(_Input):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    role: Role


class KeyCreated(BaseModel):
    id: str
    name: str
    role: Role
    key: str = Field(description="Shown once: only its hash is stored.")


class QuotaUpdate(_Input):
    """Replaces the buyer's stored quota on the dataset, both parts (the policy's no longer applies)."""

    epsilon: float | None = Field(gt=0, allow_inf_nan=False, description="null lifts the ε quota")
    delta: float | None = Field(
        default=None, ge=0, lt=1, allow_inf_nan=False, description="δ quota; null or absent: none"
    )


class KeyBody(BaseModel):
    """An API key as stewards see it: never its secret nor its hash."""

    id: str
    name: str
    role: Role
    created_at: str
    last_used_at: str | None = Field(description="to the minute: written at most once a minute per server process")
    revoked: bool


class AuditBody(BaseModel):
    at: str
    actor: str
    action: str
    detail: str


class TransparencyEntry(BaseModel):
    at: str
    buyer: str | None
    purpose: str | None
    sql: str
    cost: CostBody
    bounds: dict[str, Any] | None = Field(
        default=None,
        description="The contribution bounds the query chose by DP (auto), or ran with (explain_bias), and under "
        'value_bounds the clamp bounds it chose for bounds = "auto" columns.',
    )


class TransparencyLog(BaseModel):
    dataset: str
    budget: CostBody
    spent: CostBody
    remaining: CostBody
    releases: list[TransparencyEntry]
