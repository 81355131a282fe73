"""The durable ledger, in two halves on one database (SQLite or PostgreSQL).

- :mod:`engine.ledger.charges` — :class:`Ledger`: charges, spend, in-flight reuse and the release log
- :mod:`engine.ledger.governance` — :class:`Governance`: buyers, API keys, budgets, quotas, the audit log
- :mod:`engine.ledger.tables` — the schema both share, and the reads both make
- :mod:`engine.ledger.database` — SQLite and PostgreSQL behind one small interface
"""

from engine.ledger.charges import (
    ChargeReceipt,
    ChargeRequest,
    Ledger,
    ReleaseRecord,
    Spent,
    StoredRelease,
    open_ledger,
)
from engine.ledger.governance import UNLIMITED, AuditEntry, BuyerRecord, Governance, KeyRecord, Quota

__all__ = [
    "UNLIMITED",
    "AuditEntry",
    "BuyerRecord",
    "ChargeReceipt",
    "ChargeRequest",
    "Governance",
    "KeyRecord",
    "Ledger",
    "Quota",
    "ReleaseRecord",
    "Spent",
    "StoredRelease",
    "open_ledger",
]
