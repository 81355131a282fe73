"""What members may see: every release (when, who, why, what, at what cost), never a result."""

from __future__ import annotations

import json

from fastapi import APIRouter

from api.auth import EngineDep
from api.schemas import CostBody, TransparencyEntry, TransparencyLog
from engine.errors import UnknownTable

router = APIRouter(prefix="/v1/transparency", tags=["transparency"])


@router.get("/{dataset}", response_model=TransparencyLog)
def transparency(dataset: str, engine: EngineDep) -> TransparencyLog:
    """Public: no key needed; an unknown dataset is a plain 404 that names no other."""
    if dataset not in engine.policies:
        raise UnknownTable(f"unknown dataset {dataset!r}")
    (status,) = engine.budgets(dataset)
    return TransparencyLog(
        dataset=dataset,
        budget=CostBody(**status.budget.to_dict()),
        spent=CostBody(**status.spent.to_dict()),
        remaining=CostBody(**status.remaining.to_dict()),
        releases=[
            TransparencyEntry(
                at=r.created_at,
                buyer=r.buyer,
                purpose=r.purpose,
                sql=r.sql,
                cost=CostBody(**r.cost.to_dict()),
                bounds=json.loads(r.bounds) if r.bounds else None,
            )
            for r in engine.releases(dataset)
        ],
    )
