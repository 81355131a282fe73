"""Bearer API keys: shown once at creation, stored only as SHA-256 hashes; roles steward and buyer."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from engine import Engine
from engine.errors import Forbidden, Unauthorized
from engine.ledger import KeyRecord

KEY_PREFIX = "cdp_"


class Role(StrEnum):
    STEWARD = "steward"
    BUYER = "buyer"


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role
    key_hash: str
    key_id: str


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """Keys are 256 random bits, so a plain SHA-256 is a safe (and constant-cost) verifier."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class IssuedKey:
    """A key just made: ``secret`` is shown to its holder once and stored nowhere."""

    record: KeyRecord
    secret: str

    def __repr__(self) -> str:  # keep the secret out of logs and tracebacks
        return f"IssuedKey(record={self.record!r}, secret='…')"


def create_key(engine: Engine, name: str, role: Role, actor: str) -> IssuedKey:
    """Make a key for ``name`` (a buyer is registered too); return it: the only time it is seen.

    Buyers and stewards are separate principals: a name held by one role is refused for the other (409).
    """
    buyer = engine.ledger.buyer(name) if role is Role.BUYER else None
    if role is Role.BUYER and buyer is None:
        engine.ledger.upsert_buyer(name, None, actor)
    if buyer is not None and buyer.revoked:
        raise Forbidden(f"buyer {name!r} is revoked; restore it (POST /v1/buyers) before giving it a key")
    key = new_key()
    return IssuedKey(engine.ledger.add_key(hash_key(key), name, role.value, actor), key)


_bearer = HTTPBearer(auto_error=False, description="An API key from `coopdp keys create`.")


def engine_of(request: Request) -> Engine:
    return request.app.state.engine


EngineDep = Annotated[Engine, Depends(engine_of)]


def current_principal(
    engine: EngineDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("send an API key as 'Authorization: Bearer <key>'")
    key_hash = hash_key(credentials.credentials)
    record = engine.ledger.key(key_hash)
    if record is None:
        raise Unauthorized("unknown or revoked API key")
    engine.ledger.key_used(record.id)
    return Principal(record.name, Role(record.role), key_hash, record.id)


def current_buyer(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
    if principal.role is not Role.BUYER:
        raise Forbidden("only buyers query; stewards govern")
    return principal


def current_steward(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
    if principal.role is not Role.STEWARD:
        raise Forbidden("this needs a steward's key")
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]
CurrentBuyer = Annotated[Principal, Depends(current_buyer)]
CurrentSteward = Annotated[Principal, Depends(current_steward)]
