"""SmartNoise SQL answers one benchmark query (run inside its own venv; see child.py).

SmartNoise bounds a member's rows in total (``max_ids``), not per group, so it
gets ``max_rows_per_member`` when the request has one, else
``max_groups × max_rows_per_group`` rows per member. The queried column's
clamp is the request's ``value_bounds``. Its ε is per
aggregate column, so each run's ε is scaled until the reader's own odometer
reports the requested total. The pool is loaded into pandas once, untimed.
"""

from __future__ import annotations

import pandas as pd
import snsql
from child import Cells, Request, cells_from_rows, serve
from snsql import Privacy

TABLE = "pool.pool"


def prepare(request: Request) -> pd.DataFrame:
    columns = ["member_id", "region", "sector", "postcode", "hours", "earnings", "age", "consent_research"]
    return pd.concat([pd.read_parquet(part, columns=columns) for part in request["parts"]], ignore_index=True)


def metadata(request: Request) -> dict:
    query, bounds = request["query"], request["bounds"]
    total = bounds.get("max_rows_per_member") or bounds["max_groups"] * bounds["max_rows_per_group"]
    table = {
        "max_ids": total,
        "row_privacy": False,
        "censor_dims": bool(query["private_keys"]),  # public keys: no threshold
        "member_id": {"type": "int", "private_id": True},
        "region": {"type": "string"},
        "sector": {"type": "string"},
        "postcode": {"type": "string"},
        "hours": {"type": "float", "lower": 0.0, "upper": 24.0, "nullable": True},
        "earnings": {"type": "float", "lower": 0.0, "upper": 500.0, "nullable": True},
        "age": {"type": "int", "lower": 18, "upper": 80},
        "consent_research": {"type": "boolean"},
    }
    if query["column"] is not None and request.get("value_bounds"):
        low, high = request["value_bounds"]
        table[query["column"]] |= {"lower": float(low), "upper": float(high)}
    return {"pool": {"pool": {"pool": table}}}


def sql(request: Request) -> str:
    query = request["query"]
    keys = query["keys"]
    aggregate = query["aggregate"]
    argument = query["column"] or "*"
    select = [*keys, f"{aggregate}({argument}) AS value"]
    text = f"SELECT {', '.join(select)} FROM {TABLE}"
    if query["where"]:
        where = query["where"]
        text += f" WHERE age >= {where['age_low']} AND age <= {where['age_high']} AND consent_research = TRUE"
    if keys:
        text += f" GROUP BY {', '.join(keys)}"
    return text


def answer(data: pd.DataFrame, request: Request, epsilon: float, delta: float) -> Cells:
    text = sql(request)
    meta = metadata(request)
    unit_cost = snsql.from_df(data, privacy=Privacy(epsilon=1.0, delta=delta), metadata=meta).get_privacy_cost([text])
    reader = snsql.from_df(data, privacy=Privacy(epsilon=epsilon / unit_cost[0], delta=delta), metadata=meta)
    rows = reader.execute(text)
    keys = request["query"]["keys"]
    return cells_from_rows([tuple(row) for row in rows[1:]], keys)


if __name__ == "__main__":
    serve(prepare, answer)
