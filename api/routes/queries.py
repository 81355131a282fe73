"""Buyers' queries: answer (charged first), list their releases, fetch one again for free."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import JSONResponse

from api.auth import CurrentBuyer, EngineDep
from api.errors import RateLimited
from api.schemas import CostBody, QueryRequest, QueryResult, ReleaseSummary

router = APIRouter(prefix="/v1/queries", tags=["queries"])


class InFlightLimit:
    """At most ``limit`` queries in flight per API key, so one buyer cannot starve the others."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._in_flight: dict[str, int] = defaultdict(int)

    @contextmanager
    def slot(self, key: str) -> Iterator[None]:
        with self._lock:
            if self._in_flight[key] >= self.limit:
                raise RateLimited(f"this key already has {self.limit} queries in flight; retry when one finishes")
            self._in_flight[key] += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_flight[key] -= 1


@router.post(
    "",
    response_model=QueryResult,
    response_model_exclude_defaults=True,
    status_code=201,
    responses={
        200: {"description": "Dry run, a stored release returned again (cached), or the explanation (explain: true)"}
    },
)
def post_query(
    body: QueryRequest,
    request: Request,
    response: Response,
    engine: EngineDep,
    buyer: CurrentBuyer,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> dict[str, Any] | JSONResponse:
    with request.app.state.in_flight.slot(buyer.key_id):
        if body.explain:
            explanation = engine.explain(
                body.dataset,
                body.sql,
                epsilon=body.epsilon,
                delta=body.delta,
                buyer=buyer.name,
                weights=body.weights,
                accuracy=body.accuracy,
            )
            return JSONResponse(explanation.to_dict())  # its own document, not a QueryResult
        result = engine.query(
            body.dataset,
            body.sql,
            epsilon=body.epsilon,
            delta=body.delta,
            buyer=buyer.name,
            dry_run=body.dry_run,
            idempotency_key=idempotency_key,
            weights=body.weights,
            accuracy=body.accuracy,
            explain_bias=body.explain_bias,
        )
    if result.dry_run or result.cached:
        response.status_code = 200
    return result.to_dict()


@router.get("", response_model=list[ReleaseSummary])
def list_queries(engine: EngineDep, buyer: CurrentBuyer) -> list[ReleaseSummary]:
    return [
        ReleaseSummary(
            query_id=record.query_id,
            dataset=record.dataset,
            sql=record.sql,
            cost=CostBody(**record.cost.to_dict()),
            created_at=record.created_at,
        )
        for record in engine.releases(buyer=buyer.name)
    ]


@router.get("/{query_id}", response_model=QueryResult, response_model_exclude_defaults=True)
def get_query(query_id: str, engine: EngineDep, buyer: CurrentBuyer) -> dict[str, Any]:
    """One of the caller's own releases, again, at no cost."""
    return engine.stored_release(query_id, buyer.name).to_dict()
