"""Request and response bodies: inputs forbid unknown fields; outputs carry only public values."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.auth import Role

Cell = str | int | float | bool | None


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CostBody(BaseModel):
    epsilon: float
    delta: float


class QueryRequest(_Input):
    dataset: str = Field(max_length=200)
    sql: str = Field(description="One SELECT over the dataset's table.")
    epsilon: float = Field(
        strict=True, description="Privacy budget this query may spend (validated against the policy)."
    )
    delta: float | None = Field(default=None, strict=True, description="δ, needed by zcdp datasets.")
    dry_run: bool = Field(default=False, description="Cost and accuracy only: reads no data, charges nothing.")
    weights: dict[Annotated[str, Field(max_length=200)], Annotated[float, Field(gt=0, allow_inf_nan=False)]] | None = (
        Field(
            default=None,
            max_length=100,
            description="Output column → weight: its share of ε relative to the others (default 1 each).",
        )
    )


class QueryResult(BaseModel):
    query_id: str | None
    dataset: str
    buyer: str | None
    columns: list[str]
    rows: list[list[Cell]]
    accuracy: dict[str, float | None]
    cost: CostBody
    remaining: CostBody
    cached: bool
    dry_run: bool = False
    private_keys: list[str] = Field(default=[], description="GROUP BY columns whose keys passed a DP threshold")
    notes: list[str] = Field(default=[], description="substitutions made, e.g. MIN answered as a DP quantile")
    rank_accuracy: dict[str, int] = Field(
        default={}, description="quantile columns: rows of rank a cell may be off by (95%), beyond one grid step"
    )


class ReleaseSummary(BaseModel):
    query_id: str
    dataset: str
    sql: str
    cost: CostBody
    created_at: str


class ColumnInfo(BaseModel):
    name: str
    type: str
    bounds: tuple[float, float] | tuple[dt.date, dt.date] | None = Field(
        description="numbers; for date and datetime columns, the declared range as ISO dates"
    )
    public_keys: list[str | bool] | None


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
    max_groups: int | None
    max_rows_per_group: int | None
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


class TransparencyLog(BaseModel):
    dataset: str
    budget: CostBody
    spent: CostBody
    remaining: CostBody
    releases: list[TransparencyEntry]
