"""Refusals of whole constructs, before any name is resolved."""

from __future__ import annotations

from sqlglot import exp

from engine.errors import Unsupported
from engine.sql import fragment

_REFUSED = {
    exp.Subquery: "subqueries are not supported yet",
    exp.With: "WITH (common table expressions) is not supported yet",
}


def refuse_constructs(select: exp.Select) -> None:
    """Refuse, by name, what inlining left that would read other data (the allow-list has refused the rest)."""
    for node in select.walk():
        for construct, reason in _REFUSED.items():
            if isinstance(node, construct):
                raise Unsupported(f"{reason}: {fragment(node)}")
        if isinstance(node, exp.Select) and node is not select:
            raise Unsupported(f"subqueries are not supported yet: {fragment(node)}")
    if select.args.get("distinct"):
        raise Unsupported("SELECT DISTINCT is not supported: GROUP BY the columns instead")
