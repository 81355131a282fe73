"""OpenDP's Polars Context API answers one benchmark query (run inside its own venv; see child.py)."""

from __future__ import annotations

import math

import opendp.prelude as dp
import polars as pl
from child import PUBLIC_KEYS, Cells, Request, cells_from_rows, serve

dp.enable_features("contrib")


def prepare(request: Request) -> pl.LazyFrame:
    return pl.scan_parquet(request["parts"])


def answer(data: pl.LazyFrame, request: Request, epsilon: float, delta: float) -> Cells:
    query, bounds = request["query"], request["bounds"]
    keys: list[str] = query["keys"]
    margins = [dp.polars.Margin(max_length=request["rows"])]
    if keys:
        if query["private_keys"]:
            margins.append(dp.polars.Margin(by=keys, max_length=request["rows"]))
        else:  # public keys: their number is public too (OpenDP needs it for grouped float sums)
            groups = math.prod(len(PUBLIC_KEYS[key]) for key in keys)
            margins.append(dp.polars.Margin(by=keys, invariant="keys", max_length=request["rows"], max_groups=groups))
    context = dp.Context.compositor(
        data=data,
        privacy_unit=dp.unit_of(contributions=1, identifier=pl.col(request["unit"])),
        privacy_loss=dp.loss_of(epsilon=epsilon, delta=delta or None),
        split_evenly_over=1,
        margins=margins,
    )
    frame = context.query()
    if query["where"]:
        where = query["where"]
        frame = frame.filter(  # OpenDP 0.16.0 rejects is_between: two comparisons instead
            (pl.col("age") >= where["age_low"]) & (pl.col("age") <= where["age_high"]) & pl.col("consent_research")
        )
    if query["column"] is not None:  # SQL skips NULLs in SUM, AVG and MEDIAN
        frame = frame.filter(pl.col(query["column"]).is_not_null())
    frame = frame.truncate_per_group(bounds["max_rows_per_group"], by=keys)
    if keys:
        # Two workarounds for OpenDP 0.16.0's truncate_num_groups: keep="sample" fails ("multiple fields
        # with name ... found": its struct of (hash, keys) repeats a key's name), so the groups kept are
        # the first in key order; and it keeps k - 1 groups (a dense rank from 1, filtered "< k"), so we
        # ask for one more than the bound. Its noise is then calibrated for that many groups.
        frame = frame.truncate_num_groups(bounds["max_groups"] + 1, by=keys, keep="first")
    aggregates = [_aggregate(query, request)]
    if keys and query["column"] is not None:  # truncation drops the key margin: keys are released through a count
        aggregates.append(dp.len(signed=False).alias("rows"))
    released = (frame.group_by(keys).agg(aggregates) if keys else frame.select(aggregates)).release().collect()
    return cells_from_rows(released.select([*keys, "value"]).rows(), keys)


def _aggregate(query: Request, request: Request) -> pl.Expr:
    if query["column"] is None:
        return dp.len(signed=False).alias("value")
    low, high = request["value_bounds"]
    column = pl.col(query["column"]).fill_null(0.0).fill_nan(0.0)
    name = query["aggregate"]
    if name == "SUM":
        return column.dp.sum((low, high)).alias("value")
    if name == "AVG":
        return column.dp.mean((low, high)).alias("value")
    if name == "MEDIAN":
        candidates = [low + (high - low) * i / 1000 for i in range(1001)]
        return column.dp.median(candidates).alias("value")
    raise ValueError(f"no OpenDP Polars form for {name}")


if __name__ == "__main__":
    serve(prepare, answer)
