"""coopdp: differentially private SQL over a data cooperative's pool.

Modules, in the order a query meets them:

- :mod:`engine.policy` — dataset policies (TOML) as strict models
- :mod:`engine.sql` — parsing with sqlglot, size and nesting guards
- :mod:`engine.planner` — AST + policy → typed QueryPlan, a pipeline of small passes
- :mod:`engine.plan` — the QueryPlan IR (:mod:`engine.plan_rows`, :mod:`engine.plan_parts`)
- :mod:`engine.sensitivity` — sensitivities, fixed-point scales, overflow checks
- :mod:`engine.backends` — QueryPlan → exact bounded aggregates (Polars)
- :mod:`engine.mechanisms` / :mod:`engine.accounting` — OpenDP noise and costs
- :mod:`engine.ledger` — the durable budget ledger and release log
- :mod:`engine.postprocess` — noisy parts → released table
- :mod:`engine.engine` — :class:`Engine`, tying the steps together
"""

from engine.engine import Engine
from engine.errors import CoopdpError
from engine.result import Result

__all__ = ["CoopdpError", "Engine", "Result"]
