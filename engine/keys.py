"""API keys: the two roles, and how a key is made and verified (shown once, stored only as a SHA-256 hash).

Shared by the HTTP API (which authenticates with them) and the CLI (which issues them).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from enum import StrEnum

from engine.ledger import KeyRecord

KEY_PREFIX = "cdp_"


class Role(StrEnum):
    STEWARD = "steward"
    BUYER = "buyer"


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
