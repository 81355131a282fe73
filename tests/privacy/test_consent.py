"""Consent: a buyer whose purpose needs consent reads exactly the consenting rows, whatever the query's shape.

The oracle is a second pool holding only the consenting rows: for any WHERE,
public lookup join, CTE or derived table, the exact bounded aggregates under
the consent filter equal those of the same query, unfiltered, over that pool
(same seed, so the same random choices of groups and values). And a stored
release is reused only under the same consent filter, shared releases or not.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from engine import Engine
from engine.backends.base import ExactAggregates
from engine.backends.polars import PolarsBackend
from engine.planner import plan_query
from engine.policy import Policy, load_policies
from engine.sql import parse
from tests.conftest import small_pool, write_dataset

CONSENT = "member_flag"
PURPOSES = f'\n[purposes.commercial]\nconsent_column = "{CONSENT}"\n'
ZONES = '\n[public_tables.zones]\nsource = "../data/zones.csv"\nkey = "region"\n'
ZONES_TABLE = pl.DataFrame({"region": ["north", "south", "east", "west"], "zone": ["NS", "NS", "E", "W"]})
SEED = 11

WHERES = (
    "",
    "WHERE hours > 5",
    "WHERE age < 40 OR region = 'north'",
    f"WHERE NOT {CONSENT}",
    f"WHERE {CONSENT} OR hours > 3",
    f"WHERE {CONSENT} = false OR {CONSENT} = true",
    "WHERE city IN ('a', 'b') AND hours IS NOT NULL",
    "WHERE hours IS NULL",
)
"""Row filters, some of them naming the consent column to try to undo it."""
SHAPES = (
    "SELECT region, COUNT(*), SUM(hours) FROM shifts {where} GROUP BY region",
    "SELECT COUNT(*), AVG(age), MEDIAN(hours) FROM shifts {where}",
    "SELECT zone, COUNT(*), SUM(age) FROM shifts JOIN zones USING (region) {where} GROUP BY zone",
    "SELECT COUNT(*) FROM shifts LEFT JOIN zones USING (region) {where}",
    "WITH t AS (SELECT * FROM shifts {where}) SELECT region, COUNT(*), AVG(hours) FROM t GROUP BY region",
    "SELECT COUNT(*), SUM(h) FROM (SELECT hours AS h, region FROM shifts {where}) AS s",
    "SELECT city, COUNT(*) FROM shifts {where} GROUP BY city",
)
"""Plain, grouped, joined to a public table, through a CTE, through a derived table, with private keys."""


@dataclass(frozen=True)
class Pools:
    everyone: Policy
    consenting: Policy


def _policy(root: Path, frame: pl.DataFrame) -> Policy:
    policies = write_dataset(root, frame, extra=PURPOSES + ZONES)
    ZONES_TABLE.write_csv(root / "data" / "zones.csv")
    return load_policies(policies)["shifts"]


@pytest.fixture(scope="module")
def pools(tmp_path_factory: pytest.TempPathFactory) -> Pools:
    pool = small_pool()
    assert 0 < pool.filter(pl.col(CONSENT)).height < pool.height
    return Pools(
        everyone=_policy(tmp_path_factory.mktemp("everyone"), pool),
        consenting=_policy(tmp_path_factory.mktemp("consenting"), pool.filter(pl.col(CONSENT))),
    )


def _comparable(exact: ExactAggregates) -> tuple[list[Any], list[list[Any]]]:
    """Keys and parts as plain lists (a quantile part holds one array of values per group)."""
    parts = [[sorted(v.tolist()) if hasattr(v, "tolist") else v for v in part] for part in exact.parts]
    return exact.keys, parts


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(shape=SHAPES[0], where="WHERE hours > 5")
@example(shape=SHAPES[2], where=f"WHERE {CONSENT} OR hours > 3")
@example(shape=SHAPES[4], where="WHERE age < 40 OR region = 'north'")
@given(shape=st.sampled_from(SHAPES), where=st.sampled_from(WHERES))
def test_consent_holds_under_any_where_join_or_cte(pools: Pools, shape: str, where: str) -> None:
    sql = shape.format(where=where)
    filtered = plan_query(parse(sql), pools.everyone, consent_column=CONSENT)
    oracle = plan_query(parse(sql), pools.consenting)
    backend = PolarsBackend()
    assert _comparable(backend.execute(filtered, seed=SEED)) == _comparable(backend.execute(oracle, seed=SEED)), sql


def _engine(root: Path, shared: bool) -> Engine:
    buyers = (
        '\n[buyers.a]\npurpose = "commercial"\n[buyers.b]\npurpose = "research"\n[buyers.c]\npurpose = "commercial"\n'
    )
    releases = f"\n[releases]\nshared = {'true' if shared else 'false'}\n"
    policies = write_dataset(root, small_pool(), extra=PURPOSES + buyers + releases)
    return Engine.from_policies(policies, ledger=f"sqlite:///{root / 'ledger.db'}")


@pytest.mark.parametrize("shared", [True, False])
def test_a_release_is_reused_only_under_the_same_consent_filter(tmp_path: Path, shared: bool) -> None:
    """b (no consent filter) never gets a's release; c (a's filter) gets it exactly when releases are shared."""
    engine = _engine(tmp_path, shared)
    sql = "SELECT region, COUNT(*) FROM shifts WHERE hours > 2 GROUP BY region"
    first = engine.query("shifts", sql, epsilon=0.5, buyer="a")
    other_filter = engine.query("shifts", sql, epsilon=0.5, buyer="b")
    same_filter = engine.query("shifts", sql, epsilon=0.5, buyer="c")
    again = engine.query("shifts", sql, epsilon=0.5, buyer="a")
    engine.close()
    assert not first.cached and not other_filter.cached
    assert other_filter.query_id != first.query_id
    assert same_filter.cached is shared and (same_filter.query_id == first.query_id) is shared
    assert again.cached and again.query_id == first.query_id
