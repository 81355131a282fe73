"""Parsing buyer SQL with sqlglot, behind guards against hostile input.

Size and nesting are capped *before* the text reaches sqlglot (whose parser
recurses) and again on the tree, so a pathological query ends as a clean
``invalid_sql`` / ``unsupported`` error, never a crash or a hang downstream.
"""

from __future__ import annotations

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.optimizer.normalize_identifiers import normalize_identifiers

from engine.errors import InvalidSQL, Unsupported

MAX_SQL_LENGTH = 20_000
"""Characters in one query."""
MAX_PAREN_NESTING = 24
"""Parentheses open at once; sqlglot's recursive parser fails at about 50."""
MAX_NODES = 1_000
"""Syntax-tree nodes in one query."""
MAX_DEPTH = 48
"""Syntax-tree depth (a flat ``a+1+1+…`` chain is a deep tree)."""


def fragment(node: exp.Expression, limit: int = 80) -> str:
    """The SQL text of a node, shortened, for error messages (the query's own text, never data)."""
    try:
        text = node.sql()
    except (SqlglotError, RecursionError):
        text = node.key
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse(sql: str) -> exp.Select:
    """Parse exactly one SELECT statement, or raise a typed error."""
    if not isinstance(sql, str) or not sql.strip():
        raise InvalidSQL("the query is empty")
    if len(sql) > MAX_SQL_LENGTH:
        raise Unsupported(f"the query is {len(sql)} characters long; the limit is {MAX_SQL_LENGTH}")
    _check_paren_nesting(sql)
    try:
        statements = [statement for statement in sqlglot.parse(sql) if statement is not None]
    except SqlglotError as error:
        raise InvalidSQL(f"cannot parse the query: {_first_line(error)}") from None
    except RecursionError:
        raise Unsupported("the query is nested too deeply") from None
    if len(statements) != 1:
        raise InvalidSQL(f"expected exactly one statement, found {len(statements)}")
    (statement,) = statements
    _check_size(statement)
    if isinstance(statement, exp.SetOperation):
        raise Unsupported(
            f"{statement.key.upper()} is not supported: each SELECT is a separate release; run them as separate queries"
        )
    if not isinstance(statement, exp.Select):
        raise Unsupported(f"only SELECT queries are supported, not {statement.key.upper()}")
    return statement


def default_name(node: exp.Expression) -> str:
    """The output name of an unaliased SELECT item: a column's name, else its SQL in lower case."""
    if isinstance(node, exp.Column):
        return node.name
    return fragment(node, limit=60).lower()


def normalised(select: exp.Select) -> str:
    """Canonical SQL text: case-insensitive identifiers lowered, keywords and spacing uniform, comments dropped.

    Two requests that differ only in comments are the same release (a repeat is free, never fresh noise).
    """
    return normalize_identifiers(select.copy()).sql(comments=False)


def _first_line(error: SqlglotError) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else error.__class__.__name__


def _check_paren_nesting(sql: str) -> None:
    depth = 0
    for char in sql:
        if char == "(":
            depth += 1
            if depth > MAX_PAREN_NESTING:
                raise Unsupported(f"the query nests more than {MAX_PAREN_NESTING} parentheses")
        elif char == ")":
            depth = max(depth - 1, 0)


def _check_size(root: exp.Expr) -> None:
    """Count nodes and depth iteratively (no recursion on a hostile tree)."""
    stack: list[tuple[exp.Expr, int]] = [(root, 1)]
    nodes = 0
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise Unsupported(f"the query has more than {MAX_NODES} syntax nodes")
        if depth > MAX_DEPTH:
            raise Unsupported(f"the query's expressions are nested more than {MAX_DEPTH} levels deep")
        stack.extend((child, depth + 1) for child in node.iter_expressions())
