"""The planning context: what every pass after FROM shares to translate expressions.

Built once the scope is known. Its only mutable state is ``Reads`` (the
columns read, the columns derived) and the joined-attribute cache of ``Names``;
each pass returns its own result as a frozen value.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlglot import exp

from engine.planner.intervals import Intervals
from engine.planner.names import Names
from engine.planner.rows import Rows
from engine.planner.scope import Reads, Scope
from engine.policy import Policy


@dataclass(frozen=True)
class PlanContext:
    names: Names
    rows: Rows
    intervals: Intervals

    @classmethod
    def of(cls, scope: Scope, reads: Reads, is_aggregate: Callable[[exp.Expression], bool]) -> PlanContext:
        names = Names(scope, reads)
        rows = Rows(names, is_aggregate)
        return cls(names, rows, Intervals(rows))

    @property
    def policy(self) -> Policy:
        return self.names.policy

    @property
    def reads(self) -> Reads:
        return self.names.reads
