"""Hypothesis strategies for SQL against the planted pools: valid, nearly valid, and hostile.

*Valid* queries are built from the grammar the engine answers (aggregates of
bounded expressions, filters, public, private and computed keys, HAVING,
ORDER BY, LIMIT, CTEs). *Nearly valid* ones are valid queries with a token
dropped, doubled, swapped or replaced by something an attacker would write.
*Hostile* ones are token soup from SQL's keywords, the pool's names, and
quoting, comment and number edge cases.
"""

from __future__ import annotations

from hypothesis import strategies as st

COLUMNS = ("member_id", "region", "city", "hours", "age", "member_flag", "email")
NUMERIC = ("hours", "age")
KEYS = (
    "region",
    "city",
    "member_flag",
    "email",
    "FLOOR(age / 10) * 10",
    "CASE WHEN hours > 8 THEN 'long' ELSE 'short' END",
)
LITERALS = (
    "0",
    "1",
    "-1",
    "8.5",
    "1e308",
    "-1e308",
    "'north'",
    "'ZZLEAK42'",
    "NULL",
    "TRUE",
    "'%a%'",
    "9223372036854775808",
)
LIKE_PATTERNS = ("'%a%'", "'z%'", "'%'", "'_'", "'%(%'")
HOSTILE_TOKENS = (
    "SELECT", "FROM", "WHERE", "GROUP BY", "HAVING", "ORDER BY", "LIMIT", "OFFSET", "UNION", "UNION ALL", "JOIN",
    "CROSS JOIN", "ON", "WITH", "AS", "OVER", "PARTITION BY", "DISTINCT", "COUNT(*)", "SUM(", "AVG(", "MEDIAN(",
    "MAX(", "QUANTILE(", "*", "(", ")", ",", ";", "--", "/*", "*/", "'", '"', "`", "=", "<>", "<", ">", "AND", "OR",
    "NOT", "IN", "LIKE", "IS NULL", "CASE", "WHEN", "THEN", "ELSE", "END", "NaN", "Infinity", "\x00", "\\", "shifts",
    "tiny", "t", "read_parquet('x')", "sqlite_master", *COLUMNS, *LITERALS,
)  # fmt: skip


@st.composite
def row_expressions(draw: st.DrawFn, depth: int = 2) -> str:
    """A numeric expression of the bounded columns, as aggregates take."""
    if depth == 0 or draw(st.booleans()):
        return draw(st.sampled_from(NUMERIC))
    left = draw(row_expressions(depth=depth - 1))
    choice = draw(st.integers(0, 3))
    if choice == 0:
        return f"{left} {draw(st.sampled_from(['+', '-', '*']))} {draw(st.sampled_from(['2', '0.5', '10', 'age']))}"
    if choice == 1:
        return f"{left} / {draw(st.sampled_from(['2', '3.5', '-4']))}"
    if choice == 2:
        return f"CASE WHEN age < {draw(st.integers(18, 80))} THEN {left} ELSE 0 END"
    return f"LEAST(GREATEST({left}, 0), {draw(st.integers(1, 100))})"


@st.composite
def aggregates(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["COUNT(*)", "COUNT", "SUM", "AVG", "MEDIAN", "MIN", "MAX", "VAR_POP", "STDDEV", "Q"]))
    if kind == "COUNT(*)":
        return kind
    if kind == "COUNT":
        return f"COUNT({draw(st.sampled_from(COLUMNS))})"
    if kind == "Q":
        return f"QUANTILE({draw(st.sampled_from(NUMERIC))}, {draw(st.sampled_from(['0.1', '0.5', '0.99']))})"
    if kind in ("MEDIAN", "MIN", "MAX"):
        return f"{kind}({draw(st.sampled_from(NUMERIC))})"
    return f"{kind}({draw(row_expressions())})"


@st.composite
def predicates(draw: st.DrawFn) -> str:
    column = draw(st.sampled_from(COLUMNS))
    form = draw(st.integers(0, 4))
    if form == 0:
        return f"{column} {draw(st.sampled_from(['=', '<>', '<', '>=']))} {draw(st.sampled_from(LITERALS))}"
    if form == 1:
        return f"{column} IS {draw(st.sampled_from(['NULL', 'NOT NULL']))}"
    if form == 2:
        return f"{column} IN ({', '.join(draw(st.lists(st.sampled_from(LITERALS), min_size=1, max_size=3)))})"
    if form == 3:
        return f"{column} LIKE {draw(st.sampled_from(LIKE_PATTERNS))}"
    return f"NOT ({draw(st.sampled_from(NUMERIC))} BETWEEN {draw(st.integers(-5, 40))} AND {draw(st.integers(0, 90))})"


@st.composite
def valid_queries(draw: st.DrawFn) -> str:
    keys = draw(st.lists(st.sampled_from(KEYS), max_size=2, unique=True))
    measured = draw(st.lists(aggregates(), min_size=1, max_size=3, unique=True))
    items = [f"{key} AS k{i}" for i, key in enumerate(keys)] + [f"{agg} AS a{i}" for i, agg in enumerate(measured)]
    table = draw(st.sampled_from(["shifts", "t"]))
    sql = f"SELECT {', '.join(items)} FROM {table}"
    if draw(st.booleans()):
        conditions = draw(st.lists(predicates(), min_size=1, max_size=3))
        sql += " WHERE " + f" {draw(st.sampled_from(['AND', 'OR']))} ".join(conditions)
    if keys:
        sql += " GROUP BY " + ", ".join(f"k{i}" for i in range(len(keys)))
        if draw(st.booleans()):
            sql += f" HAVING a0 > {draw(st.integers(-10, 100))}"
    if draw(st.booleans()):
        sql += f" ORDER BY a0 {draw(st.sampled_from(['ASC', 'DESC']))}"
    if draw(st.booleans()):
        sql += f" LIMIT {draw(st.integers(0, 5))}"
    if table == "t":
        sql = f"WITH t AS (SELECT * FROM shifts WHERE {draw(predicates())}) {sql}"
    return sql


@st.composite
def nearly_valid_queries(draw: st.DrawFn) -> str:
    tokens = draw(valid_queries()).split(" ")
    for _ in range(draw(st.integers(1, 3))):
        position = draw(st.integers(0, len(tokens) - 1))
        mutation = draw(st.integers(0, 3))
        if mutation == 0 and len(tokens) > 1:
            del tokens[position]
        elif mutation == 1:
            tokens.insert(position, tokens[position])
        elif mutation == 2:
            other = draw(st.integers(0, len(tokens) - 1))
            tokens[position], tokens[other] = tokens[other], tokens[position]
        else:
            tokens[position] = draw(st.sampled_from(HOSTILE_TOKENS))
    return " ".join(tokens)


def hostile_queries() -> st.SearchStrategy[str]:
    soup = st.lists(st.sampled_from(HOSTILE_TOKENS), min_size=1, max_size=40).map(" ".join)
    return st.one_of(soup, st.text(max_size=200), st.builds("SELECT {} FROM shifts".format, st.text(max_size=60)))


def any_queries() -> st.SearchStrategy[str]:
    return st.one_of(valid_queries(), nearly_valid_queries(), hostile_queries())


HUGE_NUMBERS = ("1e308", "-1e308", "1e-320", "9223372036854775807", "9223372036854775808", "1" + "0" * 40, "0", "0.0")
EXOTIC_CLAUSES = (
    "TABLESAMPLE (1 ROWS)", "FOR SYSTEM_TIME AS OF '2020-01-01'", "WITH (NOLOCK)", "TIMESTAMP AS OF '2020-01-01'",
    "VERSION AS OF 1", "USING SAMPLE 10", "QUALIFY 1 = 1", "FOR UPDATE", "WINDOW w AS (PARTITION BY region)",
    "DISTRIBUTE BY region", "SORT BY region", "CLUSTER BY region", "LIMIT 1, 2", "FETCH FIRST 1 ROWS ONLY",
)  # fmt: skip
"""Clauses the engine must honour or refuse by name, appended after ``FROM <table>``."""


@st.composite
def totality_queries(draw: st.DrawFn) -> str:
    """Valid queries with one hostile piece: a huge constant, ROUND digits, a long LIKE pattern, an exotic clause."""
    number = draw(st.sampled_from(HUGE_NUMBERS))
    column = draw(st.sampled_from(NUMERIC))
    pieces = {
        "constant": f"SELECT COUNT(*) * {number} AS x, SUM({column} * {number}) AS y FROM shifts",
        "post": f"SELECT COUNT(*) {draw(st.sampled_from(['*', '/', '+']))} {number} AS x FROM shifts",
        "round": f"SELECT SUM(ROUND({column}, {draw(st.integers(-500, 500))})) AS x FROM shifts",
        "bin": f"SELECT FLOOR({column}) * {number} AS b, COUNT(*) FROM shifts GROUP BY b",
        "filter": f"SELECT COUNT(*) FROM shifts WHERE {column} {draw(st.sampled_from(['+', '*', '/']))} {number} > 1",
        "like": "SELECT COUNT(*) FROM shifts WHERE city "
        + draw(st.sampled_from(["LIKE", "NOT LIKE", "ILIKE"]))
        + " '"
        + draw(st.sampled_from(["_", "%", "a%", "%_", "ß"])) * draw(st.integers(1, 9000))
        + "'",
        "clause": f"SELECT COUNT(*), SUM(hours) FROM shifts {draw(st.sampled_from(EXOTIC_CLAUSES))}",
        "derived": "SELECT SUM(hours) FROM (SELECT * "
        + draw(st.sampled_from(["EXCEPT (age)", "REPLACE (hours * 1000 AS hours)", "EXCLUDE (age)", ""]))
        + " FROM shifts) AS t",
    }
    return pieces[draw(st.sampled_from(sorted(pieces)))]
