"""The FastAPI app served in process (lifespan included) to an httpx client holding a buyer's key."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import httpx
from fastapi import FastAPI

from api.auth import Role, create_key
from engine import Engine

Scenario = Callable[[httpx.AsyncClient, Engine, dict[str, str]], Awaitable[None]]
"""What to do with the client, the app's engine, and the buyer ``lab``'s Authorization header."""


def serve(app: FastAPI, scenario: Scenario) -> None:
    """Run ``scenario`` against ``app`` in process, without a server."""

    async def main() -> None:
        async with app.router.lifespan_context(app):
            engine: Engine = app.state.engine
            headers = {"Authorization": f"Bearer {create_key(engine, 'lab', Role.BUYER, actor='test').secret}"}
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://coopdp.test") as client:
                await scenario(client, engine, headers)

    asyncio.run(main())
