"""Bearer API keys (made and verified by :mod:`engine.keys`): who is calling, and in which role."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from engine import Engine
from engine.errors import Forbidden, Unauthorized
from engine.keys import Role


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role
    key_id: str


_bearer = HTTPBearer(auto_error=False, description="An API key from `coopdp keys create`.")


def engine_of(request: Request) -> Engine:
    return request.app.state.engine


EngineDep = Annotated[Engine, Depends(engine_of)]


def current_principal(
    engine: EngineDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("send an API key as 'Authorization: Bearer <key>'")
    record = engine.authenticate(credentials.credentials)
    return Principal(record.name, Role(record.role), record.id)


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
