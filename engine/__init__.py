"""coopdp: differentially private SQL over a data cooperative's pool.

Modules, in the order a query meets them:

- :mod:`engine.policy` — dataset policies (TOML) as strict models
- :mod:`engine.sql` — parsing with sqlglot, size and nesting guards
- :mod:`engine.planner` — AST + policy → typed QueryPlan, a pipeline of small passes
- :mod:`engine.plan` — the QueryPlan IR (:mod:`engine.plan_rows`, :mod:`engine.plan_parts`)
- :mod:`engine.sensitivity` — sensitivities, fixed-point scales, overflow checks
- :mod:`engine.backends` — QueryPlan → exact bounded aggregates (Polars)
- :mod:`engine.mechanisms` / :mod:`engine.accounting` — OpenDP noise and costs
- :mod:`engine.ledger` — the durable ledger (charges and releases) and the stewards' governance records
- :mod:`engine.postprocess` — noisy parts → released table
- :mod:`engine.explain` — a query's plan, sensitivity, noise and cost, read by people (``coopdp explain``)
- :mod:`engine.result` — the result document
- :mod:`engine.engine` — :class:`Engine`, tying the steps together and offering governance
- :mod:`engine.keys` — API key roles and hashing

The interfaces, :mod:`api` (HTTP) and :mod:`cli` (the ``coopdp`` command), call
:class:`Engine`; nothing here imports them.
"""

from engine.engine import Engine
from engine.errors import CoopdpError
from engine.result import Result

__all__ = ["CoopdpError", "Engine", "Result"]
