"""The first SQL subset: what is answered, and what is refused (with its code, for free)."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest

from engine import Engine
from engine.errors import CoopdpError
from engine.planner import plan_query
from engine.sql import parse

REFUSED = [
    ("SELEC COUNT(*) FROM shifts", "invalid_sql"),
    ("SELECT COUNT(* FROM shifts", "invalid_sql"),
    ("", "invalid_sql"),
    ("SELECT * FROM shifts", "policy_violation"),
    ("SELECT hours FROM shifts", "invalid_sql"),
    ("SELECT region, hours, COUNT(*) FROM shifts GROUP BY region", "invalid_sql"),
    ("SELECT region FROM shifts GROUP BY region", "policy_violation"),
    ("SELECT 1 FROM shifts", "policy_violation"),
    ("SELECT member_id, COUNT(*) FROM shifts GROUP BY member_id", "policy_violation"),
    ("SELECT city, COUNT(*) FROM shifts GROUP BY city", "policy_violation"),
    ("SELECT COUNT(*) OVER () FROM shifts", "unsupported"),
    ("SELECT SUM(hours) OVER (PARTITION BY region) FROM shifts", "unsupported"),
    ("SELECT COUNT(*) FROM shifts UNION SELECT COUNT(*) FROM shifts", "unsupported"),
    ("SELECT COUNT(*) FROM shifts INTERSECT SELECT COUNT(*) FROM shifts", "unsupported"),
    ("SELECT COUNT(*) FROM shifts EXCEPT SELECT COUNT(*) FROM shifts", "unsupported"),
    ("SELECT COUNT(*) FROM shifts a JOIN shifts b ON a.member_id = b.member_id", "policy_violation"),
    ("SELECT COUNT(*) FROM (SELECT region, COUNT(*) FROM shifts GROUP BY region) t", "unsupported"),
    ("SELECT COUNT(*) FROM (SELECT hours * 2 AS h FROM shifts) t", "unsupported"),
    ("SELECT COUNT(*) FROM (SELECT * FROM shifts LIMIT 10) t", "unsupported"),
    ("SELECT COUNT(*) FROM (SELECT * FROM shifts ORDER BY hours) t", "unsupported"),
    ("SELECT COUNT(*) FROM (SELECT * FROM shifts a JOIN shifts b ON a.member_id = b.member_id) t", "unsupported"),
    ("SELECT COUNT(*) FROM (SELECT DISTINCT member_id FROM shifts) t", "unsupported"),
    ("SELECT COUNT(*) FROM (SELECT * FROM other) t", "unknown_table"),
    ("SELECT SUM(hours) FROM (SELECT age AS h FROM shifts) t", "unknown_column"),
    ("SELECT COUNT(*) FROM (SELECT region FROM shifts) t WHERE age > 3", "unknown_column"),
    (
        "WITH x AS (SELECT region FROM shifts) SELECT region, COUNT(*) FROM x GROUP BY region UNION SELECT 1",
        "unsupported",
    ),
    ("WITH RECURSIVE x AS (SELECT region FROM shifts) SELECT COUNT(*) FROM x", "unsupported"),
    ("SELECT COUNT(*) FROM shifts WHERE age IN (SELECT age FROM shifts)", "unsupported"),
    (
        "WITH x AS (SELECT member_id, SUM(hours) AS h FROM shifts GROUP BY member_id) SELECT SUM(h) FROM x",
        "unsupported",
    ),
    ("WITH x AS (SELECT region FROM shifts) SELECT COUNT(*) FROM y", "unknown_table"),
    ("SELECT COUNT(*) FROM other", "unknown_table"),
    ("SELECT COUNT(*) FROM public.shifts", "unknown_table"),
    ("SELECT COUNT(*) FROM read_parquet('/etc/passwd')", "unsupported"),
    ("SELECT COUNT(*) FROM 'data/shifts.parquet'", "unknown_table"),
    ("SELECT COUNT(salary) FROM shifts", "unknown_column"),
    ("SELECT COUNT(*) FROM shifts WHERE salary > 3", "unknown_column"),
    ("SELECT COUNT(*) FROM shifts GROUP BY nope", "unknown_column"),
    ("SELECT SUM(city) FROM shifts", "policy_violation"),
    ("SELECT SUM(age / hours) FROM shifts", "unsupported"),
    ("SELECT SUM(hours / 0) FROM shifts", "unsupported"),
    ("SELECT SUM(CASE region WHEN 'north' THEN hours END) FROM shifts", "unsupported"),
    ("SELECT SUM(UPPER(city)) FROM shifts", "unsupported"),
    ("SELECT AVG(CASE WHEN hours > 1 THEN city END) FROM shifts", "policy_violation"),
    ("SELECT AVG(member_id) FROM shifts", "policy_violation"),
    ("SELECT COUNT(*) FROM shifts; SELECT COUNT(*) FROM shifts", "invalid_sql"),
    ("SELECT COUNT(*) FROM shifts; DROP TABLE shifts", "invalid_sql"),
    ("DELETE FROM shifts", "unsupported"),
    ("SELECT COUNT(DISTINCT region) FROM shifts", "unsupported"),
    ("SELECT DISTINCT COUNT(*) FROM shifts", "unsupported"),
    ("SELECT COUNT(*) FROM shifts WHERE region = 3", "invalid_sql"),
    ("SELECT COUNT(*) FROM shifts WHERE age = 'old'", "invalid_sql"),
    ("SELECT COUNT(*) FROM shifts WHERE age", "invalid_sql"),
    ("SELECT COUNT(*) FROM shifts WHERE UPPER(region) = 'NORTH'", "unsupported"),
    ("SELECT COUNT(*) FROM shifts WHERE COUNT(*) > 1", "invalid_sql"),
    ("SELECT region, COUNT(*) FROM shifts GROUP BY region HAVING region LIKE 'n%'", "unsupported"),
    ("SELECT region, COUNT(*) FROM shifts GROUP BY region HAVING region > 3", "invalid_sql"),
    ("SELECT region, COUNT(*) FROM shifts GROUP BY region HAVING hours > 3", "invalid_sql"),
    ("SELECT COUNT(*) AS n, SUM(age) AS n FROM shifts", "invalid_sql"),
    ("SELECT COUNT(*) FROM shifts LIMIT -1", "invalid_sql"),
    ("SELECT COUNT(*) FROM shifts ORDER BY 3", "invalid_sql"),
    ("SELECT " + "(" * 60 + "1" + ")" * 60 + ", COUNT(*) FROM shifts", "unsupported"),
    ("SELECT COUNT(*) FROM shifts WHERE age > " + "+".join(["1"] * 5000), "unsupported"),
    ("SELECT COUNT(*) FROM shifts WHERE " + " OR ".join(["age = 1"] * 400), "unsupported"),
    ("SELECT COUNT(*) FROM shifts -- " + "x" * 30_000, "unsupported"),
    ("SELECT CASE WHEN age < 30 THEN city END AS b, COUNT(*) FROM shifts GROUP BY b", "unsupported"),
    ("SELECT CASE WHEN age < 30 THEN 'a' ELSE 1 END AS b, COUNT(*) FROM shifts GROUP BY b", "invalid_sql"),
    ("SELECT COUNT(*) FROM shifts GROUP BY age + 1", "unsupported"),
    ("SELECT COUNT(*) FROM shifts GROUP BY FLOOR(age / 10) * 2.5", "unsupported"),
    ("SELECT COUNT(*) FROM shifts GROUP BY FLOOR(age) + FLOOR(hours)", "unsupported"),
    ("SELECT COUNT(*) FROM shifts GROUP BY FLOOR(age / 10) / 2", "unsupported"),
    ("SELECT COUNT(*) FROM shifts GROUP BY FLOOR(hours * 100000)", "unsupported"),
    ("SELECT COUNT(*) FROM shifts GROUP BY FLOOR(city)", "policy_violation"),
    ("SELECT COUNT(*) FROM shifts GROUP BY 5", "invalid_sql"),
    ("SELECT QUANTILE(hours, 1.5) FROM shifts", "invalid_sql"),
    ("SELECT QUANTILE(hours, 0) FROM shifts", "invalid_sql"),
    ("SELECT PERCENTILE_CONT(0.5) WITHIN GROUP (ORDER BY hours DESC) FROM shifts", "unsupported"),
    ("SELECT MEDIAN(city) FROM shifts", "policy_violation"),
]


@pytest.mark.parametrize(("sql", "code"), REFUSED)
def test_refused_queries_cost_nothing(engine: Engine, sql: str, code: str) -> None:
    with pytest.raises(CoopdpError) as raised:
        engine.query("shifts", sql, epsilon=1.0)
    assert raised.value.code == code, raised.value.message
    assert engine.ledger.spent("shifts").dataset.epsilon == 0
    assert engine.ledger.releases() == []


@pytest.mark.parametrize("epsilon", [0, -1, math.nan, math.inf, 1e308, 2.5, "abc", True])
def test_bad_epsilon_is_refused_for_free(engine: Engine, epsilon: object) -> None:
    with pytest.raises(CoopdpError) as raised:
        engine.query("shifts", "SELECT COUNT(*) FROM shifts", epsilon=epsilon)  # type: ignore[arg-type]
    assert raised.value.code == "policy_violation"
    assert engine.ledger.spent("shifts").dataset.epsilon == 0


ANSWERED = [
    "select count(*) from shifts",
    'SELECT COUNT(*) FROM "shifts"',
    "SELECT COUNT(*) FROM SHIFTS WHERE AGE >= 25",
    "SELECT COUNT(*) /* a comment */ FROM shifts -- trailing comment",
    "SELECT COUNT(*) FROM shifts;",
    'SELECT "region", COUNT(*) FROM shifts GROUP BY "region"',
    "SELECT s.region, COUNT(s.hours) FROM shifts AS s GROUP BY s.region",
    "SELECT region, member_flag, COUNT(*) FROM shifts GROUP BY region, member_flag",
    "SELECT COUNT(*) FROM shifts WHERE age BETWEEN 20 AND 40 AND NOT region = 'north'",
    "SELECT COUNT(*) FROM shifts WHERE region IN ('north', 'east') OR hours IS NULL",
    "SELECT COUNT(*) FROM shifts WHERE region NOT IN ('north') AND hours IS NOT NULL",
    "SELECT COUNT(*) FROM shifts WHERE city LIKE 'a%' OR city ILIKE 'B_' OR region NOT LIKE '%th'",
    "SELECT COUNT(*) FROM shifts WHERE hours * 2 + 1 > age / 10 AND -age < -20",
    "SELECT COUNT(*) FROM shifts WHERE member_id = 7 OR member_id IN (1, 2, '3')",
    "SELECT COUNT(*) FROM shifts WHERE member_flag AND NOT member_flag = FALSE",
    "SELECT SUM(hours) / COUNT(*) AS mean, SUM(age) - 3 * COUNT(age) FROM shifts",
    "SELECT region, AVG(hours) AS h FROM shifts GROUP BY region ORDER BY h DESC, region LIMIT 2",
    "SELECT region, COUNT(*) FROM shifts GROUP BY region ORDER BY COUNT(*) ASC LIMIT 3 OFFSET 1",
    "SELECT region, COUNT(*) FROM shifts GROUP BY region ORDER BY 2 DESC",
    "SELECT COUNT(1) FROM shifts",
]


@pytest.mark.parametrize("sql", ANSWERED)
def test_supported_queries_are_answered_and_charged(engine: Engine, sql: str) -> None:
    result = engine.query("shifts", sql, epsilon=0.5)
    assert result.rows
    assert result.cost.epsilon == Decimal("0.5")
    assert engine.ledger.spent("shifts").dataset.epsilon == Decimal("0.5")


def test_group_by_public_keys_lists_every_key_even_empty_ones(engine: Engine) -> None:
    result = engine.query(
        "shifts", "SELECT region, COUNT(*) AS n FROM shifts WHERE region = 'north' GROUP BY region", epsilon=1.0
    )
    assert sorted(row[0] for row in result.rows) == ["east", "north", "south", "west"]


def test_group_by_two_public_columns_gives_the_cross_product(engine: Engine) -> None:
    result = engine.query(
        "shifts", "SELECT region, member_flag, COUNT(*) FROM shifts GROUP BY region, member_flag", epsilon=1.0
    )
    assert len(result.rows) == 8


def test_order_and_limit_apply_after_noise(engine: Engine) -> None:
    result = engine.query(
        "shifts", "SELECT region, COUNT(*) AS n FROM shifts GROUP BY region ORDER BY n DESC LIMIT 2", epsilon=1.0
    )
    counts = [row[1] for row in result.rows]
    assert len(counts) == 2 and counts == sorted(counts, reverse=True)


def test_arithmetic_on_aggregates_uses_the_noisy_values(engine: Engine) -> None:
    result = engine.query(
        "shifts", "SELECT COUNT(*) AS n, COUNT(*) * 2 AS twice, -COUNT(*) AS neg FROM shifts", epsilon=1.0
    )
    ((n, twice, neg),) = result.rows
    assert twice == 2 * n and neg == -n
    assert set(result.accuracy) == {"n", "twice", "neg"}
    assert result.accuracy["twice"] is None


def test_error_messages_never_contain_data_values(engine: Engine) -> None:
    with pytest.raises(CoopdpError) as raised:
        engine.query("shifts", "SELECT city, COUNT(*) FROM shifts GROUP BY city", epsilon=1.0)
    for city in ("'a'", "'b'", "'c'"):
        assert city not in raised.value.message


def test_having_filters_the_noisy_rows(engine: Engine) -> None:
    everything = engine.query(
        "shifts", "SELECT region, COUNT(*) AS n FROM shifts GROUP BY region HAVING n >= 0", epsilon=0.5
    )
    assert len(everything.rows) == 4
    nothing = engine.query(
        "shifts", "SELECT region, COUNT(*) AS n FROM shifts GROUP BY region HAVING COUNT(*) < 0", epsilon=0.5
    )
    assert nothing.rows == []
    some = engine.query(
        "shifts",
        "SELECT region, AVG(age) AS a FROM shifts GROUP BY region "
        "HAVING (region = 'north' OR region IN ('south')) AND NOT SUM(hours) BETWEEN -1e9 AND -1",
        epsilon=0.5,
    )
    assert sorted(row[0] for row in some.rows) == ["north", "south"]
    assert engine.ledger.spent("shifts").dataset.epsilon == 1.5


DERIVED = [
    "WITH x AS (SELECT * FROM shifts WHERE age > 30) SELECT region, COUNT(*) FROM x GROUP BY region",
    "SELECT t.region, AVG(t.h) AS mean FROM (SELECT region, hours AS h FROM shifts) AS t GROUP BY t.region",
    "WITH a AS (SELECT hours AS age, region FROM shifts), b AS (SELECT age AS x FROM a WHERE age < 5) SELECT SUM(x) FROM b",
]


@pytest.mark.parametrize("sql", DERIVED)
def test_row_level_ctes_and_derived_tables_are_inlined(engine: Engine, sql: str) -> None:
    assert engine.query("shifts", sql, epsilon=0.5).rows


def test_group_by_an_output_alias_over_a_cte_groups_by_its_expression(engine: Engine) -> None:
    policy = engine.policy("shifts")
    direct = plan_query(parse("SELECT region AS k, COUNT(*) AS n FROM shifts GROUP BY region"), policy)
    for sql in (
        "WITH t AS (SELECT * FROM shifts) SELECT region AS k, COUNT(*) AS n FROM t GROUP BY k",
        "SELECT r AS k, COUNT(*) AS n FROM (SELECT region AS r FROM shifts) t GROUP BY k",
    ):
        plan = plan_query(parse(sql), policy)
        assert [key.values for key in plan.group_keys] == [key.values for key in direct.group_keys], sql
        assert [column.name for column in plan.output] == ["k", "n"]


def test_a_renamed_column_keeps_the_bounds_of_its_source_not_of_its_name(engine: Engine) -> None:
    # ``age`` here is ``hours`` renamed: its bounds are hours' [0, 60], never age's [18, 80].
    sql = "WITH a AS (SELECT hours AS age FROM shifts) SELECT AVG(age) AS m, SUM(age) AS s FROM a"
    plan = plan_query(parse(sql), engine.policy("shifts"))
    assert {aggregate.value.column for aggregate in plan.aggregates} == {"hours"}
    assert [column.name for column in plan.output] == ["m", "s"]
    unnamed = plan_query(parse("SELECT SUM(x) FROM (SELECT hours AS x FROM shifts) AS t"), engine.policy("shifts"))
    assert [column.name for column in unnamed.output] == ["sum(x)"]


def test_expressions_inside_aggregates_get_bounds_by_interval_arithmetic(engine: Engine) -> None:
    policy = engine.policy("shifts")
    cases = {
        "SUM(hours * 1.5 + 2)": (2.0, 92.0),
        "SUM(-hours)": (-60.0, 0.0),
        "SUM(hours - age)": (-80.0, 42.0),
        "SUM(hours / 4)": (0.0, 15.0),
        "SUM(LEAST(GREATEST(hours, 5), 10))": (5.0, 10.0),
        "SUM(CASE WHEN age > 40 THEN hours WHEN age > 30 THEN 100 END)": (0.0, 100.0),
        "SUM(COALESCE(hours, -1))": (-1.0, 60.0),
        "SUM(1)": (1.0, 1.0),
        "SUM(hours / age)": (
            0.0,
            60 / 18,
        ),  # age's bounds [18, 80] exclude 0  # a constant: widened by one fixed-point unit, which is sound
    }
    for aggregate, (low, high) in cases.items():
        plan = plan_query(parse(f"SELECT {aggregate} FROM shifts"), policy)
        (value,) = [a.value for a in plan.aggregates]
        assert (value.lower / value.scale, value.upper / value.scale) == pytest.approx((low, high), abs=1e-5), aggregate
        assert plan.output[0].name.startswith(aggregate.lower()[:50])  # long names are shortened with …


def test_expressions_clamp_their_columns_first(dataset) -> None:
    import polars as pl

    frame = pl.DataFrame(
        {
            "member_id": [1, 2],
            "region": ["north"] * 2,
            "city": ["a"] * 2,
            "hours": [500.0, -3.0],
            "age": [30, 30],
            "member_flag": [True, True],
        }
    )
    engine = Engine.from_policies(dataset(frame, privacy='unit = "row"'), ledger="sqlite:///:memory:")
    plan = plan_query(
        parse("SELECT SUM(hours * 2), COUNT(CASE WHEN hours > 59 THEN 1 END) FROM shifts"), engine.policy("shifts")
    )
    from engine.backends.polars import PolarsBackend

    parts = PolarsBackend().execute(plan, seed=1).parts
    (total,), (count,) = parts
    assert total / plan.parts[0].value.scale == pytest.approx(120.0)  # 500 clamps to 60, -3 to 0
    assert count == 1


def test_variance_and_standard_deviation_track_the_truth(dataset) -> None:
    import polars as pl

    from tests.conftest import small_pool

    frame = small_pool(rows=5000, members=2000)
    engine = Engine.from_policies(
        dataset(frame, privacy='unit = "row"', epsilon=1000.0, max_epsilon_per_query=100.0), ledger="sqlite:///:memory:"
    )
    sql = "SELECT VAR_POP(hours) AS vp, VARIANCE(hours) AS vs, VAR(hours) AS v, STDDEV(age) AS s, STDDEV_POP(age) AS sp FROM shifts"
    ((var_pop, var_samp, var, std, std_pop),) = engine.query("shifts", sql, epsilon=50.0).rows
    truth = frame.select(
        pl.col("hours").var(ddof=0).alias("vp"), pl.col("hours").var().alias("vs"), pl.col("age").std().alias("s")
    ).row(0)
    assert var_pop == pytest.approx(truth[0], rel=0.02) and var_samp == pytest.approx(truth[1], rel=0.02)
    assert var == var_samp and std == pytest.approx(truth[2], rel=0.02) and std_pop <= std
    small = engine.query("shifts", "SELECT STDDEV(hours) AS s FROM shifts WHERE age > 1000", epsilon=0.1)
    assert small.rows[0][0] is None or 0 <= small.rows[0][0] <= 30  # clamped into range, NULL when the count is tiny


BANDS = "CASE WHEN age < 30 THEN 'young' WHEN age < 60 THEN 'middle' ELSE 'older' END"


@pytest.mark.parametrize(
    "sql",
    [
        f"SELECT {BANDS} AS band, COUNT(*) AS n FROM shifts GROUP BY {BANDS}",
        f"SELECT {BANDS} AS band, COUNT(*) AS n FROM shifts GROUP BY band",
        f"SELECT {BANDS} AS band, COUNT(*) AS n FROM shifts GROUP BY 1 ORDER BY band",
    ],
)
def test_case_keys_release_every_literal_label(engine: Engine, sql: str) -> None:
    result = engine.query("shifts", sql, epsilon=0.5)
    assert result.columns == ["band", "n"]
    assert sorted(row[0] for row in result.rows) == ["middle", "older", "young"]


def test_case_keys_without_else_drop_unmatched_rows_and_mix_with_columns(engine: Engine) -> None:
    sql = "SELECT region, CASE WHEN hours > 8 THEN 1 WHEN hours > 4 THEN 2 END AS k, COUNT(*) FROM shifts GROUP BY region, k HAVING k = 1"
    result = engine.query("shifts", sql, epsilon=0.5)
    assert sorted((row[0], row[1]) for row in result.rows) == [
        (r, 1) for r in sorted(["north", "south", "east", "west"])
    ]
    plan = plan_query(
        parse("SELECT CASE WHEN hours > 8 THEN 1 END AS k, COUNT(*) FROM shifts GROUP BY k"), engine.policy("shifts")
    )
    assert plan.group_keys[0].values == (1,)


def test_quantiles_land_near_the_truth(dataset) -> None:
    import polars as pl

    from tests.conftest import small_pool

    frame = small_pool(rows=20_000, members=5_000)
    engine = Engine.from_policies(
        dataset(frame, privacy='unit = "row"', epsilon=1000.0, max_epsilon_per_query=10.0), ledger="sqlite:///:memory:"
    )
    truth = frame.select(
        pl.col("hours").median().alias("m"),
        pl.col("age").quantile(0.9).alias("q"),
        pl.col("hours").quantile(0.25).alias("p"),
    ).row(0)
    close = 0
    for attempt in range(10):
        sql = (
            "SELECT MEDIAN(hours) AS m, APPROX_QUANTILE(age, 0.9) AS q, "
            f"PERCENTILE_CONT(0.25) WITHIN GROUP (ORDER BY hours) AS p FROM shifts WHERE age > {-attempt}"
        )
        result = engine.query("shifts", sql, epsilon=1.0)
        median, q90, p25 = result.rows[0]
        close += abs(median - truth[0]) <= 1.0 and abs(q90 - truth[1]) <= 2 and abs(p25 - truth[2]) <= 1.0
        assert result.accuracy == {"m": None, "q": None, "p": None}
    assert close >= 9


@pytest.mark.parametrize("accounting", ["pure", "zcdp"])
def test_grouped_member_level_quantiles_fit_the_budget(dataset, accounting: str) -> None:
    from engine.accounting import PrivacyRequest, zcdp_to_epsilon
    from engine.mechanisms import calibrate

    engine = Engine.from_policies(dataset(accounting=accounting), ledger="sqlite:///:memory:")
    policy = engine.policy("shifts")
    sql = "SELECT region, MEDIAN(hours) AS m, COUNT(*) AS n FROM shifts GROUP BY region"
    request = PrivacyRequest.validate(1.0, 1e-7 if accounting == "zcdp" else None, policy.budget)
    noise = calibrate(plan_query(parse(sql), policy), request)
    spent = noise.loss if accounting == "pure" else zcdp_to_epsilon(noise.loss, 1e-7)
    assert 0.99 <= spent <= 1.0
    result = engine.query("shifts", sql, epsilon=1.0, delta=1e-7 if accounting == "zcdp" else None)
    assert len(result.rows) == 4 and all(0 <= row[1] <= 60 for row in result.rows)


def test_min_and_max_are_answered_as_dp_quantiles_with_a_note(engine: Engine) -> None:
    result = engine.query(
        "shifts", "SELECT region, MIN(hours) AS lo, MAX(age) AS hi FROM shifts GROUP BY region", epsilon=1.0
    )
    assert all(0 <= row[1] <= 60 and 18 <= row[2] <= 80 for row in result.rows)
    assert result.notes == [
        "MIN(hours) is answered as the 0.05 quantile by a DP mechanism, not as the exact extreme",
        "MAX(age) is answered as the 0.95 quantile by a DP mechanism, not as the exact extreme",
    ]
    assert result.to_dict()["notes"] == result.notes
    dry = engine.query("shifts", "SELECT MIN(hours) FROM shifts", epsilon=1.0, dry_run=True)
    assert dry.notes and dry.accuracy == {"min(hours)": None}


def test_floor_and_ceil_bins_release_every_bin_the_bounds_allow(engine: Engine) -> None:
    result = engine.query(
        "shifts", "SELECT FLOOR(age / 10) * 10 AS decade, COUNT(*) AS n FROM shifts GROUP BY decade", epsilon=0.5
    )
    assert [row[0] for row in result.rows] == [10, 20, 30, 40, 50, 60, 70, 80]  # age is bounded to [18, 80]
    plan = plan_query(
        parse("SELECT CEIL(hours / 15) - 1 AS b, COUNT(*) FROM shifts GROUP BY 1"), engine.policy("shifts")
    )
    assert plan.group_keys[0].values == (-1, 0, 1, 2, 3)


def test_round_and_numeric_casts_inside_aggregates(engine: Engine) -> None:
    policy = engine.policy("shifts")
    cases = {
        "SUM(ROUND(hours))": (0.0, 60.0),
        "SUM(ROUND(hours / 7, 1))": (0.0, 8.6),
        "SUM(CAST(hours * 0.55 AS INT))": (0.0, 33.0),
        "AVG(CAST(age AS DOUBLE))": (18.0, 80.0),
    }
    for aggregate, (low, high) in cases.items():
        plan = plan_query(parse(f"SELECT {aggregate} FROM shifts"), policy)
        value = plan.aggregates[0].value
        assert (value.lower / value.scale, value.upper / value.scale) == pytest.approx((low, high), abs=1e-5), aggregate
    result = engine.query(
        "shifts", "SELECT SUM(ROUND(hours)) AS r, AVG(CAST(age AS DOUBLE)) AS a FROM shifts", epsilon=1.0
    )
    assert 18 <= result.rows[0][1] <= 80
    with pytest.raises(CoopdpError, match="CAST to a number"):
        engine.query("shifts", "SELECT SUM(CAST(hours AS TEXT)) FROM shifts", epsilon=1.0)
