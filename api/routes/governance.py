"""Stewards govern: budgets, buyers, keys, quotas, and the audit log."""

from __future__ import annotations

from fastapi import APIRouter, status

from api.auth import CurrentSteward, EngineDep, create_key
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
from engine.accounting import Cost, exact
from engine.errors import NotFound
from engine.ledger import Quota

router = APIRouter(prefix="/v1", tags=["governance"])


@router.put("/datasets/{name}/budget", response_model=BudgetStatusBody)
def set_budget(name: str, body: BudgetUpdate, engine: EngineDep, steward: CurrentSteward) -> BudgetStatusBody:
    """Set a dataset's total budget; refused (400) below what is already spent."""
    policy = engine.policy(name)
    engine.ledger.set_budget(policy.name, Cost(exact(body.epsilon), exact(body.delta)), steward.name)
    (status_,) = engine.budgets(policy.name)
    return BudgetStatusBody(
        dataset=name,
        budget=CostBody(**status_.budget.to_dict()),
        spent=CostBody(**status_.spent.to_dict()),
        remaining=CostBody(**status_.remaining.to_dict()),
    )


@router.post("/buyers", response_model=BuyerBody, status_code=status.HTTP_201_CREATED)
def create_buyer(body: BuyerCreate, engine: EngineDep, steward: CurrentSteward) -> BuyerBody:
    """Create a buyer (or set its purpose; a revoked buyer is restored, its old keys stay revoked)."""
    engine.ledger.upsert_buyer(body.name, body.purpose, steward.name)
    return _buyer(engine, body.name)


@router.get("/buyers", response_model=list[BuyerBody])
def list_buyers(engine: EngineDep, _: CurrentSteward) -> list[BuyerBody]:
    return [BuyerBody(**record.__dict__) for record in engine.ledger.buyers()]


@router.delete("/buyers/{name}", response_model=BuyerBody)
def revoke_buyer(name: str, engine: EngineDep, steward: CurrentSteward) -> BuyerBody:
    """Revoke a buyer and every buyer key of that name (a steward's key is revoked by id, DELETE /v1/keys/{id})."""
    _buyer(engine, name)
    engine.ledger.revoke_buyer(name, steward.name)
    return _buyer(engine, name)


@router.post("/keys", response_model=KeyCreated, status_code=status.HTTP_201_CREATED)
def create_api_key(body: KeyCreate, engine: EngineDep, steward: CurrentSteward) -> KeyCreated:
    """A new key; the response is the only time it is shown. A name is a buyer's or a steward's, never both (409)."""
    issued = create_key(engine, body.name, body.role, steward.name)
    return KeyCreated(id=issued.record.id, name=body.name, role=body.role, key=issued.secret)


@router.get("/keys", response_model=list[KeyBody])
def list_keys(engine: EngineDep, _: CurrentSteward) -> list[KeyBody]:
    """Every key, live and revoked: never a secret nor a hash."""
    return [KeyBody(**record.__dict__) for record in engine.ledger.keys()]


@router.delete("/keys/{key_id}", response_model=KeyBody)
def revoke_key(key_id: str, engine: EngineDep, steward: CurrentSteward) -> KeyBody:
    """Revoke one key of either role; the last live steward key is refused (409)."""
    return KeyBody(**engine.ledger.revoke_key(key_id, steward.name).__dict__)


@router.put("/datasets/{name}/quotas/{buyer}", response_model=QuotaUpdate)
def set_quota(name: str, buyer: str, body: QuotaUpdate, engine: EngineDep, steward: CurrentSteward) -> QuotaUpdate:
    policy = engine.policy(name)
    _buyer(engine, buyer)
    engine.ledger.set_quota(policy.name, buyer, Quota.of(body.epsilon, body.delta), steward.name)
    return body


@router.get("/audit", response_model=list[AuditBody])
def audit(engine: EngineDep, _: CurrentSteward) -> list[AuditBody]:
    return [AuditBody(**entry.__dict__) for entry in engine.ledger.audit()]


def _buyer(engine: EngineDep, name: str) -> BuyerBody:
    record = engine.ledger.buyer(name)
    if record is None:
        raise NotFound(f"no buyer {name!r}")
    return BuyerBody(**record.__dict__)
