"""The ``coopdp`` command: an operator's interface to :class:`engine.Engine`, beside the HTTP API (:mod:`api`).

- :mod:`cli.commands` — the typer app and its commands; errors become exit codes there and only there
"""

from cli.commands import app

__all__ = ["app"]
