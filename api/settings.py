"""Server settings, validated by pydantic-settings from ``COOPDP_*`` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COOPDP_", extra="forbid")

    policies: Path = Path("policies")
    """Directory of policy files."""
    ledger: str | None = None
    """Ledger URL; default ``sqlite:///coopdp.db`` beside the policies directory."""
    max_concurrent_queries_per_key: int = Field(default=4, ge=1)
    """Queries one API key may have in flight; more are refused with 429."""
    max_body_bytes: int = Field(default=1_000_000, ge=1_000)
    """Largest request body accepted (413 beyond)."""
    body_timeout_s: float = Field(default=10.0, gt=0, allow_inf_nan=False)
    """Seconds a client has to send a whole request body (408 and the connection closed beyond)."""
