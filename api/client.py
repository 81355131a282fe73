"""A small typed Python client for the coopdp HTTP API (httpx only; no server code imported).

>>> with Client("http://127.0.0.1:8000", api_key="cdp_…") as coop:  # doctest: +SKIP
...     result = coop.query("gig_work", "SELECT COUNT(*) AS n FROM gig_work", epsilon=0.5)
...     result.rows, result.accuracy["n"], result.remaining.epsilon

Responses are parsed into frozen dataclasses mirroring ``api/schemas.py``;
every error response raises :class:`ClientError` with the status and the
``{"error": {"code", "message"}}`` body's code and message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import quote

import httpx

Cell = str | int | float | bool | None
Role = Literal["buyer", "steward"]


class ClientError(Exception):
    """An error response: its HTTP ``status`` and the body's ``code`` and ``message``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Cost:
    """An (ε, δ) amount: a cost, a budget, what is spent or left."""

    epsilon: float
    delta: float

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Cost:
        return cls(float(data["epsilon"]), float(data["delta"]))


@dataclass(frozen=True)
class QueryResult:
    """A released (or dry-run, or stored-again) answer: the result JSON of the README."""

    query_id: str | None
    dataset: str
    buyer: str | None
    columns: list[str]
    rows: list[list[Cell]]
    accuracy: dict[str, float | None]
    cost: Cost
    remaining: Cost
    cached: bool
    dry_run: bool = False
    private_keys: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    rank_accuracy: dict[str, int] = field(default_factory=dict)
    """Quantile columns: rows of rank one cell may be off by (95%), beyond the candidate grid's own step."""
    accuracy_target: dict[str, float] = field(default_factory=dict)
    """The half-widths asked for instead of an ε; ``cost`` is the least ε that met them."""
    bounds: dict[str, int] = field(default_factory=dict)
    """Member level: the contribution bounds the query ran with (chosen by DP where the policy says auto)."""
    value_bounds: dict[str, list[float]] = field(default_factory=dict)
    """Columns with bounds = "auto": the clamp bounds the query chose by DP, [low, high]."""
    bias: dict[str, float] = field(default_factory=dict)
    """Per aggregate column, the estimated share of its rows (or value mass) that bounding removed."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QueryResult:
        return cls(
            query_id=data["query_id"],
            dataset=data["dataset"],
            buyer=data["buyer"],
            columns=list(data["columns"]),
            rows=[list(row) for row in data["rows"]],
            accuracy=dict(data["accuracy"]),
            cost=Cost.from_dict(data["cost"]),
            remaining=Cost.from_dict(data["remaining"]),
            cached=bool(data["cached"]),
            dry_run=bool(data.get("dry_run", False)),
            private_keys=list(data.get("private_keys", [])),
            notes=list(data.get("notes", [])),
            rank_accuracy=dict(data.get("rank_accuracy", {})),
            accuracy_target=dict(data.get("accuracy_target", {})),
            bounds=dict(data.get("bounds", {})),
            value_bounds=dict(data.get("value_bounds", {})),
            bias=dict(data.get("bias", {})),
        )


@dataclass(frozen=True)
class ColumnInfo:
    name: str
    type: str
    bounds: tuple[float, float] | tuple[str, str] | str | None
    """Numbers; ISO dates (text) for date and datetime columns; "auto" (chosen per query inside ``range``)."""
    public_keys: list[str | bool] | None
    range: tuple[float, float] | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ColumnInfo:
        bounds, outer = data["bounds"], data.get("range")
        pair = bounds if bounds is None or isinstance(bounds, str) else (bounds[0], bounds[1])
        return cls(
            data["name"], data["type"], pair, data["public_keys"], None if outer is None else (outer[0], outer[1])
        )


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset's public description, and what the caller may still spend on it."""

    name: str
    description: str
    privacy_unit: str
    max_groups: int | str | None
    max_rows_per_group: int | str | None
    max_rows_per_member: int | str | None
    """A number of rows or groups, or "auto" (chosen per query by DP); None where the policy does not offer it."""
    accounting: str
    max_epsilon_per_query: float
    columns: list[ColumnInfo]
    remaining: Cost
    public_tables: dict[str, dict[str, str]] = field(default_factory=dict)
    """Public lookup tables a query may JOIN: name → {column: type}."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetInfo:
        return cls(
            name=data["name"],
            description=data["description"],
            privacy_unit=data["privacy_unit"],
            max_groups=data["max_groups"],
            max_rows_per_group=data["max_rows_per_group"],
            max_rows_per_member=data.get("max_rows_per_member"),
            accounting=data["accounting"],
            max_epsilon_per_query=float(data["max_epsilon_per_query"]),
            columns=[ColumnInfo.from_dict(column) for column in data["columns"]],
            remaining=Cost.from_dict(data["remaining"]),
            public_tables={table["name"]: dict(table["columns"]) for table in data.get("public_tables", [])},
        )


@dataclass(frozen=True)
class ReleaseSummary:
    """One of the caller's past releases (no rows: fetch them with :meth:`Client.release`)."""

    query_id: str
    dataset: str
    sql: str
    cost: Cost
    created_at: str

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReleaseSummary:
        return cls(data["query_id"], data["dataset"], data["sql"], Cost.from_dict(data["cost"]), data["created_at"])


@dataclass(frozen=True)
class BudgetStatus:
    dataset: str
    budget: Cost
    spent: Cost
    remaining: Cost

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BudgetStatus:
        return cls(
            data["dataset"],
            Cost.from_dict(data["budget"]),
            Cost.from_dict(data["spent"]),
            Cost.from_dict(data["remaining"]),
        )


@dataclass(frozen=True)
class Buyer:
    name: str
    purpose: str | None
    created_at: str
    revoked: bool

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Buyer:
        return cls(data["name"], data["purpose"], data["created_at"], bool(data["revoked"]))


@dataclass(frozen=True)
class CreatedKey:
    """A new API key: ``key`` is shown only this once (the server keeps its hash); ``id`` names it for revoking."""

    id: str
    name: str
    role: str
    key: str

    def __repr__(self) -> str:  # keep the secret out of logs and tracebacks
        return f"CreatedKey(id={self.id!r}, name={self.name!r}, role={self.role!r}, key='…')"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CreatedKey:
        return cls(data["id"], data["name"], data["role"], data["key"])


@dataclass(frozen=True)
class ApiKey:
    """A key as stewards see it: never its secret."""

    id: str
    name: str
    role: str
    created_at: str
    last_used_at: str | None
    revoked: bool

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ApiKey:
        return cls(
            data["id"], data["name"], data["role"], data["created_at"], data["last_used_at"], bool(data["revoked"])
        )


@dataclass(frozen=True)
class AuditEntry:
    at: str
    actor: str
    action: str
    detail: str

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AuditEntry:
        return cls(data["at"], data["actor"], data["action"], data["detail"])


@dataclass(frozen=True)
class TransparencyEntry:
    """One release as members see it: when, who, why, what, at what cost; never a result."""

    at: str
    buyer: str | None
    purpose: str | None
    sql: str
    cost: Cost
    bounds: dict[str, Any] | None = None
    """The contribution bounds it chose by DP (auto), or ran with (its bias disclosed); chosen ``value_bounds``."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TransparencyEntry:
        cost = Cost.from_dict(data["cost"])
        return cls(data["at"], data["buyer"], data["purpose"], data["sql"], cost, data.get("bounds"))


@dataclass(frozen=True)
class TransparencyLog:
    dataset: str
    budget: Cost
    spent: Cost
    remaining: Cost
    releases: list[TransparencyEntry]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TransparencyLog:
        return cls(
            data["dataset"],
            Cost.from_dict(data["budget"]),
            Cost.from_dict(data["spent"]),
            Cost.from_dict(data["remaining"]),
            [TransparencyEntry.from_dict(entry) for entry in data["releases"]],
        )


def _segment(value: str) -> str:
    """A path segment, percent-encoded (a name can never escape its segment)."""
    return quote(value, safe="")


class Client:
    """The coopdp API as Python calls; ``api_key`` may be None for the public endpoints.

    Use as a context manager (or call :meth:`close`) to release the connection pool.
    ``http`` is the underlying :class:`httpx.Client` (base URL and key set) for raw calls.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout, transport=transport)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    # --- plumbing ---------------------------------------------------------------------

    def _call(self, method: str, path: str, *, json: Any = None, headers: dict[str, str] | None = None) -> Any:
        response = self.http.request(method, path, json=json, headers=headers)
        if response.is_error:
            raise _error(response)
        return response.json()

    # --- everyone ---------------------------------------------------------------------

    def health(self) -> dict[str, str]:
        """``GET /healthz``."""
        return self._call("GET", "/healthz")

    def transparency(self, dataset: str) -> TransparencyLog:
        """A dataset's public release log and budget (no key needed)."""
        return TransparencyLog.from_dict(self._call("GET", f"/v1/transparency/{_segment(dataset)}"))

    def datasets(self) -> list[DatasetInfo]:
        """Every dataset's public description, with what the caller may still spend."""
        return [DatasetInfo.from_dict(item) for item in self._call("GET", "/v1/datasets")]

    def dataset(self, name: str) -> DatasetInfo:
        """One dataset's public description."""
        return DatasetInfo.from_dict(self._call("GET", f"/v1/datasets/{_segment(name)}"))

    # --- buyers ------------------------------------------------------------------------

    def query(
        self,
        dataset: str,
        sql: str,
        epsilon: float | None = None,
        delta: float | None = None,
        dry_run: bool = False,
        idempotency_key: str | None = None,
        weights: dict[str, float] | None = None,
        accuracy: dict[str, float] | None = None,
        explain_bias: bool = False,
    ) -> QueryResult:
        """Ask a query, charged ``(epsilon, delta)`` first (nothing when dry, cached or a keyed retry).

        ``weights`` split ε across output columns (column → weight, default 1 each). ``accuracy`` (column → 95%
        half-width), instead of ``epsilon``, spends the least ε that meets every target. ``explain_bias`` also
        estimates what bounding removed (``bias``), for a share of the ε.
        """
        body: dict[str, Any] = {"dataset": dataset, "sql": sql, "dry_run": dry_run, "explain_bias": explain_bias}
        if epsilon is not None:
            body["epsilon"] = epsilon
        if accuracy is not None:
            body["accuracy"] = accuracy
        if delta is not None:
            body["delta"] = delta
        if weights is not None:
            body["weights"] = weights
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else None
        return QueryResult.from_dict(self._call("POST", "/v1/queries", json=body, headers=headers))

    def releases(self) -> list[ReleaseSummary]:
        """The caller's past releases."""
        return [ReleaseSummary.from_dict(item) for item in self._call("GET", "/v1/queries")]

    def release(self, query_id: str) -> QueryResult:
        """One of the caller's releases again, free."""
        return QueryResult.from_dict(self._call("GET", f"/v1/queries/{_segment(query_id)}"))

    # --- stewards ----------------------------------------------------------------------

    def set_budget(self, dataset: str, epsilon: float, delta: float) -> BudgetStatus:
        """Set a dataset's total budget (refused below what is spent)."""
        body = {"epsilon": epsilon, "delta": delta}
        return BudgetStatus.from_dict(self._call("PUT", f"/v1/datasets/{_segment(dataset)}/budget", json=body))

    def create_buyer(self, name: str, purpose: str | None = None) -> Buyer:
        """Create a buyer, or set its purpose (restores a revoked buyer; its old keys stay revoked)."""
        return Buyer.from_dict(self._call("POST", "/v1/buyers", json={"name": name, "purpose": purpose}))

    def buyers(self) -> list[Buyer]:
        return [Buyer.from_dict(item) for item in self._call("GET", "/v1/buyers")]

    def revoke_buyer(self, name: str) -> Buyer:
        """Revoke a buyer and all its keys."""
        return Buyer.from_dict(self._call("DELETE", f"/v1/buyers/{_segment(name)}"))

    def create_key(self, name: str, role: Role = "buyer") -> CreatedKey:
        """A new key for ``name``; the returned ``key`` is never shown again."""
        return CreatedKey.from_dict(self._call("POST", "/v1/keys", json={"name": name, "role": role}))

    def keys(self) -> list[ApiKey]:
        """Every key, live and revoked, oldest first."""
        return [ApiKey.from_dict(item) for item in self._call("GET", "/v1/keys")]

    def revoke_key(self, key_id: str) -> ApiKey:
        """Revoke one key, a buyer's or a steward's (never the last live steward key: 409)."""
        return ApiKey.from_dict(self._call("DELETE", f"/v1/keys/{_segment(key_id)}"))

    def set_quota(self, dataset: str, buyer: str, epsilon: float | None, delta: float | None = None) -> float | None:
        """Set a buyer's quota on a dataset, ε and δ (None lifts each); returns the ε quota now in force."""
        path = f"/v1/datasets/{_segment(dataset)}/quotas/{_segment(buyer)}"
        return self._call("PUT", path, json={"epsilon": epsilon, "delta": delta})["epsilon"]

    def audit(self) -> list[AuditEntry]:
        """The governance audit log, oldest first."""
        return [AuditEntry.from_dict(item) for item in self._call("GET", "/v1/audit")]


def _error(response: httpx.Response) -> ClientError:
    """The error body's code and message, or the status line where the body is not ours."""
    try:
        error = response.json()["error"]
        return ClientError(response.status_code, str(error["code"]), str(error["message"]))
    except (ValueError, KeyError, TypeError):
        return ClientError(response.status_code, "http_error", response.reason_phrase or response.text[:200])
