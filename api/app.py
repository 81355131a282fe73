"""The FastAPI application, built by a factory from validated settings (nothing happens at import)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import errors
from api.errors import PayloadTooLarge, RequestTimeout, error_response
from api.routes import datasets, governance, queries, transparency
from api.settings import Settings
from engine import Engine


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.engine = Engine.from_policies(settings.policies, ledger=settings.ledger)
        app.state.in_flight = queries.InFlightLimit(settings.max_concurrent_queries_per_key)
        yield
        app.state.engine.close()

    app = FastAPI(
        title="coopdp",
        summary="Differentially private SQL over a data cooperative's pool.",
        version="0.1.0",
        lifespan=lifespan,
    )
    errors.install(app)
    for module in (datasets, queries, governance, transparency):
        app.include_router(module.router)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s)
    return app


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413, whether declared up front or sent in chunks, and
    bodies not wholly received within ``timeout_s`` with 408 (a client trickling a body cannot hold a worker).

    The body is read here (at most ``max_bytes`` of it) and replayed to the app.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        messages: list[Message] = []
        size = 0
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.0))
            except TimeoutError:
                timeout = RequestTimeout(f"the request body was not received within {self.timeout_s:g} s")
                await error_response(timeout)(scope, receive, send)
                return
            messages.append(message)
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            if message["type"] != "http.request" or not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(PayloadTooLarge(f"the request body is over {self.max_bytes} bytes"))
        await response(scope, receive, send)
