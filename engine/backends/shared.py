"""What every backend does the same way, written once: LIKE patterns, key types, internal names, plan facts."""

from __future__ import annotations

import datetime as dt
import operator
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from engine import plan as ir
from engine.errors import PolicyError


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


BOOL_TEXTS: dict[str, bool] = {
    **dict.fromkeys(("true", "t", "yes", "y", "1"), True),
    **dict.fromkeys(("false", "f", "no", "n", "0"), False),
}
"""The texts a bool column stored as text reads (trimmed, in any letter case); any other text is NULL."""


SAME_TYPE_ARITHMETIC: dict[ir.ArithOp, Callable[[Any, Any], Any]] = {
    ir.ArithOp.ADD: operator.add,
    ir.ArithOp.SUB: operator.sub,
    ir.ArithOp.MUL: operator.mul,
}
"""+, -, × as Python operators; division differs between engines, each backend adds its own."""

T = TypeVar("T")


def check_columns(plan: ir.QueryPlan, stored: Mapping[str, T], readable: Callable[[T, ir.ColumnKind], bool]) -> None:
    """Every column the plan reads exists (by its exact name) and its stored type ``T`` reads as its declared kind.

    Raises before anything is charged, naming the column and never a value.
    """
    missing = [name for name, _ in plan.source.columns if name not in stored]
    if missing:
        raise PolicyError(f"the pool of {plan.dataset} has no column {', '.join(missing)} declared in its policy")
    for name, kind in plan.source.columns:
        if not readable(stored[name], kind):
            raise PolicyError(
                f"column {name} of {plan.dataset} is stored as {stored[name]}, which cannot be read as {kind.value}"
                " on this dataset's backend"
            )


# --- names and plan facts both backends use ----------------------------------------


def fixed_name(column: str) -> str:
    """The column holding ``column`` clamped to fixed point."""
    return f"__fixed_{column}"


def part_name(index: int) -> str:
    return f"__part_{index}"


def value_columns(plan: ir.QueryPlan) -> dict[str, ir.FixedPoint]:
    """The columns a part sums or samples, with their fixed-point bounds."""
    return {part.value.column: part.value for part in plan.parts if part.value is not None}
