"""One error tree with stable codes.

Every failure a caller can see is a :class:`CoopdpError` subclass carrying a
stable ``code`` (the ``error.code`` of the JSON error body). Exit codes and
HTTP statuses are assigned to these classes in one place each (the CLI and the
API), never at the raise site.

Messages name the offending SQL fragment, policy key or parameter, and never
a data value or an exact aggregate.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

log = logging.getLogger("coopdp")


class CoopdpError(Exception):
    """Root of every error coopdp raises on purpose."""

    code: ClassVar[str] = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


class QueryRejected(CoopdpError):
    """The query was refused before it touched data; nothing was charged."""


class InvalidSQL(QueryRejected):
    code = "invalid_sql"


class Unsupported(QueryRejected):
    code = "unsupported"


class UnknownTable(QueryRejected):
    code = "unknown_table"


class UnknownColumn(QueryRejected):
    code = "unknown_column"


class PolicyViolation(QueryRejected):
    code = "policy_violation"


class BudgetRefused(CoopdpError):
    """Spending this query's cost would break a budget; nothing was charged."""


class BudgetExhausted(BudgetRefused):
    code = "budget_exhausted"


class QuotaExhausted(BudgetRefused):
    code = "quota_exhausted"


class Unauthorized(CoopdpError):
    code = "unauthorized"


class Forbidden(CoopdpError):
    code = "forbidden"


class NotFound(CoopdpError):
    code = "not_found"


class Conflict(CoopdpError):
    """The request repeats one that is still being answered."""

    code = "conflict"


class PolicyError(CoopdpError):
    """A policy file is malformed; the message names the file, key and problem."""

    code = "invalid_policy"


class LedgerError(CoopdpError):
    """The ledger could not be read or written; nothing is released."""

    code = "ledger_unavailable"


class BackendUnavailable(CoopdpError):
    """The backend a dataset's policy names cannot run here (e.g. pyspark is not installed); nothing was charged."""

    code = "backend_unavailable"


class InternalError(CoopdpError):
    """A broken invariant inside the engine: this is a bug, please report it."""

    code = "internal"


def failed_after_charge(query_id: str, error: Exception) -> InternalError:
    """The scrubbed form of an unexpected failure after a charge: its class name and the query id, never its text.

    Polars and Spark quote data values in their messages, so the text is dropped from the error and the log alike.
    """
    log.error("query %s failed after its charge: %s (a bug; its charge stands)", query_id, error.__class__.__name__)
    return InternalError(
        f"query {query_id} failed after its charge ({error.__class__.__name__}); its charge stands. "
        "This is a bug, please report it with the query id"
    )
