"""Tumult Analytics on local Spark answers one benchmark query (run inside its own venv; see child.py).

Per-group bounds are Tumult's ``MaxGroupsPerID`` and ``MaxRowsPerGroupPerID``,
which take one grouping column; a query with several keys gets
``MaxRowsPerID(max_groups × max_rows_per_group)`` instead, and a request with
``max_rows_per_member`` gets ``MaxRowsPerID`` of it. Private keys are
first released with ``get_groups`` on half the budget. Spark starts once, untimed.
"""

from __future__ import annotations

import os
import sys
import tempfile

from child import PUBLIC_KEYS, Cells, Request, cells_from_rows, serve
from pyspark.sql import DataFrame, SparkSession
from tmlt.analytics import (
    AddRowsWithID,
    ApproxDPBudget,
    KeySet,
    MaxGroupsPerID,
    MaxRowsPerGroupPerID,
    MaxRowsPerID,
    PureDPBudget,
    QueryBuilder,
    Session,
)

SOURCE = "pool"


def prepare(request: Request) -> DataFrame:
    os.environ["PYSPARK_PYTHON"] = sys.executable  # Spark's Python workers must see this venv's tmlt
    spark = (
        SparkSession.builder.master("local[2]")
        .config("spark.driver.memory", "8g")
        .config("spark.sql.shuffle.partitions", "8")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.warehouse.dir", tempfile.mkdtemp(prefix="tumult-warehouse-"))
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    columns = ["member_id", "region", "sector", "postcode", "hours", "earnings", "age", "consent_research"]
    frame = spark.read.parquet(*request["parts"]).select(*columns)
    return frame.withColumn("consent_research", frame["consent_research"].cast("int"))  # Tumult has no booleans


def answer(data: DataFrame, request: Request, epsilon: float, delta: float) -> Cells:
    query, bounds = request["query"], request["bounds"]
    keys: list[str] = query["keys"]
    budget = ApproxDPBudget(epsilon, delta) if query["private_keys"] else PureDPBudget(epsilon)
    session = Session.from_dataframe(budget, SOURCE, data, protected_change=AddRowsWithID(request["unit"]))
    builder = QueryBuilder(SOURCE)
    if query["where"]:
        where = query["where"]
        builder = builder.filter(f"age >= {where['age_low']} AND age <= {where['age_high']} AND consent_research = 1")
    if bounds.get("max_rows_per_member"):
        builder = builder.enforce(MaxRowsPerID(bounds["max_rows_per_member"]))
    elif len(keys) == 1:
        builder = builder.enforce(MaxGroupsPerID(keys[0], bounds["max_groups"]))
        builder = builder.enforce(MaxRowsPerGroupPerID(keys[0], bounds["max_rows_per_group"]))
    else:
        builder = builder.enforce(MaxRowsPerID(bounds["max_groups"] * bounds["max_rows_per_group"]))
    if query["private_keys"]:
        half = ApproxDPBudget(epsilon / 2, delta)
        groups = session.evaluate(builder.get_groups(keys), half)
        keyset = KeySet.from_dataframe(groups)
        budget = PureDPBudget(epsilon / 2)
    else:
        keyset = KeySet.from_dict({key: PUBLIC_KEYS[key] for key in keys})
    grouped = builder.groupby(keyset)
    released = session.evaluate(_aggregate(grouped, query, request), budget)
    return cells_from_rows([tuple(row) for row in released.select(*keys, "value").collect()], keys)


def _aggregate(grouped, query: Request, request: Request):
    if query["column"] is None:
        return grouped.count(name="value")
    low, high = request["value_bounds"]
    column = query["column"]
    if query["aggregate"] == "SUM":
        return grouped.sum(column, low, high, name="value")
    if query["aggregate"] == "AVG":
        return grouped.average(column, low, high, name="value")
    if query["aggregate"] == "MEDIAN":
        return grouped.median(column, low, high, name="value")
    raise ValueError(f"no Tumult form for {query['aggregate']}")


if __name__ == "__main__":
    serve(prepare, answer)
