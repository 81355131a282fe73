"""Stewards govern: budgets, buyers, keys, quotas, and the audit log."""

from __future__ import annotations

from fastapi import APIRouter, status

from api.auth import CurrentSteward, EngineDep
from api.schemas import (
    AuditBody,
    BudgetStatusBody,
    BudgetUpdate,
    BuyerBody,
    BuyerCreate,
    CostBody,
    KeyBody,
    KeyCreate,
    KeyCreated,
    QuotaUpdate,
)

router = APIRouter(prefix="/v1", tags=["governance"])


@router.put("/datasets/{name}/budget", response_model=BudgetStatusBody)
def set_budget(name: str, body: BudgetUpdate, engine: EngineDep, steward: CurrentSteward) -> BudgetStatusBody:
    """Set a dataset's total budget; refused (400) below what is already spent."""
    status_ = engine.set_budget(name, epsilon=body.epsilon, delta=body.delta, actor=steward.name)
    return BudgetStatusBody(
        dataset=name,
        budget=CostBody(**status_.budget.to_dict()),
        spent=CostBody(**status_.spent.to_dict()),
        remaining=CostBody(**status_.remaining.to_dict()),
    )


@router.post("/buyers", response_model=BuyerBody, status_code=status.HTTP_201_CREATED)
def create_buyer(body: BuyerCreate, engine: EngineDep, steward: CurrentSteward) -> BuyerBody:
    """Create a buyer (or set its purpose; a revoked buyer is restored, its old keys stay revoked)."""
    return BuyerBody(**engine.upsert_buyer(body.name, body.purpose, steward.name).__dict__)


@router.get("/buyers", response_model=list[BuyerBody])
def list_buyers(engine: EngineDep, _: CurrentSteward) -> list[BuyerBody]:
    return [BuyerBody(**record.__dict__) for record in engine.buyers()]


@router.delete("/buyers/{name}", response_model=BuyerBody)
def revoke_buyer(name: str, engine: EngineDep, steward: CurrentSteward) -> BuyerBody:
    """Revoke a buyer and every buyer key of that name (a steward's key is revoked by id, DELETE /v1/keys/{id})."""
    return BuyerBody(**engine.revoke_buyer(name, steward.name).__dict__)


@router.post("/keys", response_model=KeyCreated, status_code=status.HTTP_201_CREATED)
def create_api_key(body: KeyCreate, engine: EngineDep, steward: CurrentSteward) -> KeyCreated:
    """A new key; the response is the only time it is shown. A name is a buyer's or a steward's, never both (409)."""
    issued = engine.create_key(body.name, body.role, steward.name)
    return KeyCreated(id=issued.record.id, name=body.name, role=body.role, key=issued.secret)


@router.get("/keys", response_model=list[KeyBody])
def list_keys(engine: EngineDep, _: CurrentSteward) -> list[KeyBody]:
    """Every key, live and revoked: never a secret nor a hash."""
    return [KeyBody(**record.__dict__) for record in engine.keys()]


@router.delete("/keys/{key_id}", response_model=KeyBody)
def revoke_key(key_id: str, engine: EngineDep, steward: CurrentSteward) -> KeyBody:
    """Revoke one key of either role; the last live steward key is refused (409)."""
    return KeyBody(**engine.revoke_key(key_id, steward.name).__dict__)


@router.put("/datasets/{name}/quotas/{buyer}", response_model=QuotaUpdate)
def set_quota(name: str, buyer: str, body: QuotaUpdate, engine: EngineDep, steward: CurrentSteward) -> QuotaUpdate:
    engine.set_quota(name, buyer, epsilon=body.epsilon, delta=body.delta, actor=steward.name)
    return body


@router.get("/audit", response_model=list[AuditBody])
def audit(engine: EngineDep, _: CurrentSteward) -> list[AuditBody]:
    return [AuditBody(**entry.__dict__) for entry in engine.audit()]
