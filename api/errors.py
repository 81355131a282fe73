"""Typed engine errors → HTTP statuses, in one place, with DESIGN.md's one error body."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from engine.errors import (
    BackendUnavailable,
    BudgetExhausted,
    Conflict,
    CoopdpError,
    Forbidden,
    InvalidSQL,
    LedgerError,
    NotFound,
    PolicyViolation,
    QuotaExhausted,
    Unauthorized,
    UnknownColumn,
    UnknownTable,
    Unsupported,
)

STATUS: dict[type[CoopdpError], int] = {
    InvalidSQL: 400,
    Unsupported: 400,
    UnknownColumn: 400,
    PolicyViolation: 400,
    UnknownTable: 404,
    NotFound: 404,
    Unauthorized: 401,
    Forbidden: 403,
    BudgetExhausted: 409,
    Conflict: 409,
    QuotaExhausted: 429,
    LedgerError: 503,
    BackendUnavailable: 503,
}


class RateLimited(CoopdpError):
    code = "rate_limited"


class PayloadTooLarge(CoopdpError):
    code = "payload_too_large"


class RequestTimeout(CoopdpError):
    code = "request_timeout"


STATUS |= {RateLimited: 429, PayloadTooLarge: 413, RequestTimeout: 408}


def error_response(error: CoopdpError) -> JSONResponse:
    status = next((code for kind, code in STATUS.items() if isinstance(error, kind)), 500)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {"Connection": "close"} if status == 408 else None
    return JSONResponse(error.to_dict(), status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    """Every error leaves the server as ``{"error": {"code", "message"}}``; never a traceback or a data value."""

    @app.exception_handler(CoopdpError)
    async def _typed(_: Request, error: CoopdpError) -> JSONResponse:
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in issue['loc'] if part != 'body') or 'body'}: {issue['msg']}"
            for issue in error.errors()
        )
        return JSONResponse({"error": {"code": "invalid_request", "message": problems}}, status_code=422)

    @app.exception_handler(HTTPException)
    async def _http(_: Request, error: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "invalid_request")
        return JSONResponse({"error": {"code": code, "message": str(error.detail)}}, status_code=error.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, error: Exception) -> JSONResponse:
        body = {"error": {"code": "internal", "message": f"unexpected {error.__class__.__name__}; this is a bug"}}
        return JSONResponse(body, status_code=500)
