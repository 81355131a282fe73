"""Rules every backend applies the same way, written once: LIKE patterns and the Python type of public keys."""

from __future__ import annotations

import datetime as dt
import re


def like_regex(pattern: str, case_sensitive: bool) -> str:
    r"""SQL LIKE as a regex anchored on the whole text; everything but ``%`` and ``_`` is literal.

    ``\A`` and ``\z`` (not ``^`` and ``$``) so that a trailing newline is never
    skipped, and ``u`` so that case folding is Unicode-aware: the same pattern
    means the same thing to Rust's regex (Polars) and to Java's (Spark).
    """
    pieces = [".*" if char == "%" else "." if char == "_" else re.escape(char) for char in pattern]
    return ("(?su)" if case_sensitive else "(?siu)") + r"\A" + "".join(pieces) + r"\z"


def key_type(values: tuple[object, ...]) -> type:
    """The one Python type a public key set is returned as: bool, int, float (ints widened), date or str."""
    if all(isinstance(value, bool) for value in values):
        return bool
    if all(isinstance(value, int) for value in values):
        return int
    if all(isinstance(value, int | float) for value in values):
        return float
    if all(isinstance(value, dt.date) for value in values):
        return dt.date
    return str
