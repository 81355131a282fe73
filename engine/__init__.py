"""coopdp: differentially private SQL over a data cooperative's pool.

Modules, in the order a query meets them:

- :mod:`engine.policy` — dataset policies (TOML) as strict models
- :mod:`engine.sql` — parsing with sqlglot, size and nesting guards
- :mod:`engine.planner` / :mod:`engine.plan` — AST + policy → typed QueryPlan
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
