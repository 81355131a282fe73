"""The accuracy suite of issue 13: bounds as results report them, target checks, policies, peers with our bounds.

Peers run here through a fake runner (no peer venvs needed); the engine is the real one.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from benchmarks import accuracy
from benchmarks.accuracy import BoundsMode, our_entries, peer_entries, run_accuracy, suite_policies
from benchmarks.bounds import Bounds, bounds_from_result, bounds_label, median_bounds, policy_bounds
from benchmarks.checks import target_checks
from benchmarks.generate import AUTO_MEMBER_BOUNDS, MEMBER_BOUNDS, PoolSpec, generate_pool
from benchmarks.measure import Environment, save
from benchmarks.peers.compare import ALL, OURS, Answers, Selection, exact_cells, peer_bounds, request
from benchmarks.policy_file import AUTO, Contribution, PolicyColumn, policy_toml
from benchmarks.queries import QUERIES
from benchmarks.report import write_report

COUNT, SUM_BY_SECTOR, FILTERED = QUERIES[0], QUERIES[1], QUERIES[4]


# --- bounds as results report them -------------------------------------------------------------


def test_bounds_from_a_result_document() -> None:
    assert bounds_from_result({"max_rows_per_member": 37}, COUNT) == Bounds(max_rows_per_member=37)
    assert bounds_from_result({"max_groups": 2, "max_rows_per_group": 12}, COUNT) == Bounds(None, 2, 12)
    # fields it leaves out are the policy's; a sum keeps the column's policy clamp unless told another
    assert bounds_from_result({"max_rows_per_group": 5}, SUM_BY_SECTOR) == Bounds(None, 1, 5, 0.0, 500.0)
    for clamp in (
        {"value_bounds": [0, 125]},
        {"earnings": [0, 125]},
        {"range": {"earnings": [0, 125]}},
        {"columns": {"earnings": {"range": [0, 125]}}},
    ):
        chosen = bounds_from_result({"max_rows_per_member": 64, **clamp}, SUM_BY_SECTOR)
        assert chosen == Bounds(64, None, None, 0.0, 125.0)
    assert bounds_from_result({}, COUNT) is None and bounds_from_result(None, COUNT) is None
    assert policy_bounds(FILTERED) == Bounds(None, 1, 10, 0.0, 24.0)


def test_median_bounds_takes_the_most_common_mode() -> None:
    runs = [Bounds(max_rows_per_member=c) for c in (30, 40, 50)] + [Bounds(None, 2, 12)]
    assert median_bounds(runs) == Bounds(max_rows_per_member=40)
    # the lower median of each field: a value some run chose
    assert median_bounds([Bounds(None, 1, 10), Bounds(None, 2, 13)]) == Bounds(None, 1, 10)
    assert median_bounds([]) is None


def test_bounds_labels() -> None:
    assert bounds_label({"max_rows_per_member": 37, "value_bounds": [0.0, 12.5]}) == "C=37 [0, 12.5]"
    assert bounds_label({"max_groups": 2, "max_rows_per_group": 12}) == "G=2 R=12"
    assert bounds_label(None) == "—"
    assert Bounds(None, 2, 12, 0.0, 24.0).to_dict() == {
        "max_groups": 2,
        "max_rows_per_group": 12,
        "value_bounds": [0.0, 24.0],
    }


# --- target checks -----------------------------------------------------------------------------


def _entry(epsilon: float, error: float | None, oracle: float | None, bias: list | None = None) -> dict[str, Any]:
    return {
        "query": "q",
        "system": OURS,
        "epsilon": epsilon,
        "relative_error": error,
        "oracle_error": oracle,
        "bias_runs": bias or [],
    }


def _checks(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {check["name"]: check for check in target_checks(entries)}


def test_oracle_ratio_at_epsilon_one() -> None:
    checks = _checks([_entry(0.1, 0.5, 0.2), _entry(1.0, 0.03, 0.02)])
    assert checks["error at ε=1 vs oracle"]["ok"] is True  # 1.5×: on the line
    checks = _checks([_entry(1.0, 0.031, 0.02)])
    assert checks["error at ε=1 vs oracle"]["ok"] is False
    assert "1.55×" in checks["error at ε=1 vs oracle"]["measured"]
    assert _checks([_entry(0.1, 0.5, 0.2)])["error at ε=1 vs oracle"]["ok"] is None  # no run at ε = 1
    assert _checks([_entry(1.0, 0.5, None)])["error at ε=1 vs oracle"]["ok"] is None  # no oracle


def test_error_where_the_oracle_is_small() -> None:
    entries = [_entry(0.1, 0.9, 0.5), _entry(1.0, 0.14, 0.1), _entry(10.0, 0.01, 0.01)]
    assert _checks(entries)["error where oracle ≤ 0.1"]["ok"] is True  # ε = 0.1 does not count
    entries[1] = _entry(1.0, 0.16, 0.1)
    check = _checks(entries)["error where oracle ≤ 0.1"]
    assert check["ok"] is False and "ε=1: 0.1600" in check["measured"]
    assert _checks([_entry(1.0, 0.9, 0.5)])["error where oracle ≤ 0.1"]["ok"] is None


def test_bias_share_within_tolerance_in_ninety_percent_of_runs() -> None:
    close = [[0.30, 0.32]] * 9
    assert _checks([_entry(1.0, 0.1, 0.1, [*close, [0.1, 0.3]])])["reported bias vs true"]["ok"] is True
    assert (
        _checks([_entry(1.0, 0.1, 0.1, [*close[:8], [0.1, 0.3], [0.5, 0.3]])])["reported bias vs true"]["ok"] is False
    )
    unreported = _checks([_entry(1.0, 0.1, 0.1, [[None, 0.3]])])["reported bias vs true"]
    assert unreported["ok"] is None and unreported["measured"] == "the engine reports no bias"


# --- policies ----------------------------------------------------------------------------------


def test_policies_write_a_total_bound_and_auto_values() -> None:
    total = policy_toml("d", "x.parquet", Contribution("member_id", max_rows_per_member=37), [])
    assert tomllib.loads(total)["privacy"] == {"unit": "member_id", "max_rows_per_member": 37}
    auto = tomllib.loads(policy_toml("d", "x.parquet", AUTO_MEMBER_BOUNDS, []))["privacy"]
    assert auto == {"unit": "member_id", "max_rows_per_member": AUTO, "max_groups": AUTO, "max_rows_per_group": AUTO}
    assert AUTO_MEMBER_BOUNDS.automatic and not MEMBER_BOUNDS.automatic
    fixed = tomllib.loads(policy_toml("d", "x.parquet", MEMBER_BOUNDS, []))["privacy"]
    assert fixed == {"unit": "member_id", "max_groups": 1, "max_rows_per_group": 10}
    column = PolicyColumn("hours", "float", bounds=AUTO, range=(0.0, 24.0))
    assert tomllib.loads(policy_toml("d", "x.parquet", Contribution(), [column]))["columns"]["hours"] == {
        "type": "float",
        "bounds": "auto",
        "range": [0.0, 24.0],
    }


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory):
    return generate_pool(PoolSpec(rows=6_000, seed=11, chunk_rows=6_000), tmp_path_factory.mktemp("pool"), False)


def test_auto_policy_is_used_or_refused_with_a_note(pool, tmp_path: Path) -> None:
    """Whichever the engine does today: automatic bounds taken, or refused, said why, and the fixed policy written."""
    policies = suite_policies(pool, BoundsMode.AUTO, tmp_path)
    written = tomllib.loads((tmp_path / "pool_members.toml").read_text())["privacy"]
    if policies.mode is BoundsMode.AUTO:
        assert policies.note is None and written["max_groups"] == AUTO
    else:
        assert policies.note is not None and "refused automatic member bounds" in policies.note
        assert written == {"unit": "member_id", "max_groups": 1, "max_rows_per_group": 10}
    fixed = suite_policies(pool, BoundsMode.FIXED, tmp_path / "fixed")
    assert fixed.mode is BoundsMode.FIXED and fixed.note is None


def test_engine_refusal_falls_back_to_fixed(pool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accuracy, "engine_refusal", lambda directory: "PolicyError: no auto here")
    policies = suite_policies(pool, BoundsMode.AUTO, tmp_path)
    assert policies.mode is BoundsMode.FIXED and "PolicyError: no auto here" in (policies.note or "")


# --- our entries and the peers with our bounds ------------------------------------------------


def _exact(pool) -> dict[str, float]:
    return exact_cells(COUNT, pool)


def test_our_entries_record_chosen_bounds_and_true_and_reported_bias(pool) -> None:
    import polars as pl

    from benchmarks.oracle import contributions, removed_share, search

    exact = _exact(pool)
    table = contributions(COUNT, pl.scan_parquet([str(p) for p in pool.parts]), "member_id")
    oracle = search(table, [1.0])
    runs = [1.0, 1.0, 1.0]
    reported = [{"max_rows_per_member": c} for c in (20, 30, 40)]
    answers = Answers([0.1] * 3, [exact] * 3, bounds=reported, bias=[{"value": 0.1}, {"value": 0.2}, {}])
    entries, chosen = our_entries(6_000, COUNT, runs, answers, exact, table, oracle)
    (entry,) = entries
    assert entry["relative_error"] == 0.0 and entry["bounds_source"] == "result"
    assert entry["bounds"] == {"max_rows_per_member": 30} and chosen == {1.0: Bounds(max_rows_per_member=30)}
    assert entry["true_bias"] == pytest.approx(removed_share(table, Bounds(max_rows_per_member=30)))
    assert entry["reported_bias"] == pytest.approx(0.15)
    truths = [removed_share(table, Bounds(max_rows_per_member=c)) for c in (20, 30, 40)]
    assert entry["bias_runs"] == [[0.1, truths[0]], [0.2, truths[1]], [None, truths[2]]]
    assert entry["oracle_error"] == oracle[1.0].error
    # an engine that reports no bounds: the policy's, said so
    silent = Answers([0.1], [exact], bounds=[{}], bias=[{}])
    (entry,), chosen = our_entries(6_000, COUNT, [1.0], silent, exact, table, oracle)
    assert entry["bounds_source"] == "policy" and entry["bounds"] == {"max_groups": 1, "max_rows_per_group": 10}
    assert entry["reported_bias"] is None and chosen == {1.0: policy_bounds(COUNT)}


class FakePeer:
    """Stands in for ``peer_answers``: remembers the bounds asked, answers the exact cells."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[float], dict[str, Any] | None]] = []

    def __call__(self, peer, python, query, pool, runs, bounds=None) -> Answers:  # noqa: ANN001 - peer_answers' shape
        self.calls.append((query.name, list(runs), bounds))
        return Answers([0.0] * len(runs), [exact_cells(query, pool)] * len(runs))


def test_peers_run_with_our_bounds_where_ours_differ_from_the_policy(pool, monkeypatch: pytest.MonkeyPatch) -> None:
    exact = _exact(pool)
    fake = FakePeer()
    monkeypatch.setattr(accuracy, "peer_answers", fake)
    chosen = {0.1: policy_bounds(COUNT), 1.0: Bounds(max_rows_per_member=64)}
    notes: list[str] = []
    entries = peer_entries(6_000, COUNT, "fake", Path("python"), pool, [0.1, 1.0], 2, exact, chosen, notes)
    assert fake.calls == [
        (COUNT.name, [0.1, 0.1, 1.0, 1.0], None),
        (COUNT.name, [1.0, 1.0], {"max_rows_per_member": 64}),
    ]
    systems = [(entry["system"], entry["epsilon"]) for entry in entries]
    assert systems == [("fake", 0.1), ("fake", 1.0), ("fake (our bounds)", 1.0)]
    assert entries[-1]["bounds"] == {"max_groups": 1, "max_rows_per_group": 64} and not notes  # fake: no total bound
    assert all(entry["cells_released"] == entry["cells_exact"] == 4 for entry in entries)


def test_peer_bounds_total_or_its_per_group_equivalent(pool) -> None:
    assert peer_bounds("tumult", None) == {"max_groups": 1, "max_rows_per_group": 10}
    total = {"max_rows_per_member": 64, "value_bounds": [0.0, 125.0]}
    assert peer_bounds("smartnoise", total) == {"max_rows_per_member": 64, "max_groups": 1, "max_rows_per_group": 64}
    assert peer_bounds("opendp_polars", total) == {"max_groups": 1, "max_rows_per_group": 64}
    assert peer_bounds("tumult", {"max_groups": 2, "max_rows_per_group": 12}) == {
        "max_groups": 2,
        "max_rows_per_group": 12,
    }
    sent = request(SUM_BY_SECTOR, pool, [1.0], "opendp_polars", total)
    assert sent["bounds"] == {"max_groups": 1, "max_rows_per_group": 64} and sent["value_bounds"] == [0.0, 125.0]
    assert request(SUM_BY_SECTOR, pool, [1.0])["value_bounds"] == (0.0, 500.0)
    assert request(COUNT, pool, [1.0], "tumult", total)["value_bounds"] is None


def test_the_suite_end_to_end_with_a_fake_peer(pool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two queries, ours with the real engine, a fake peer; the JSON holds errors, bounds, oracle and checks."""
    data = tmp_path / "data"
    monkeypatch.setattr(accuracy, "installed_peers", lambda peers_dir, only=None: ({"fake": Path("python")}, {}))
    monkeypatch.setattr(accuracy, "peer_versions", lambda installed: {"fake": "fake==1"})
    monkeypatch.setattr(accuracy, "peer_answers", FakePeer())
    results = tmp_path / "results"
    selection = Selection(("count_by_region", "filtered_sum"), None, "")
    run_accuracy(6_000, 2, tmp_path / "peers", data, results, (1.0, 10.0), selection, BoundsMode.FIXED, 1)
    document = json.loads((results / "accuracy.json").read_text())
    ours = [entry for entry in document["measurements"] if entry["system"] == OURS]
    assert {(entry["query"], entry["epsilon"]) for entry in ours} == {
        (query, epsilon) for query in ("count_by_region", "filtered_sum") for epsilon in (1.0, 10.0)
    }
    assert all(entry["oracle_error"] > 0 and 0 < entry["true_bias"] < 1 for entry in ours)
    assert all(entry["cells_released"] == entry["cells_exact"] == 4 for entry in ours)  # public regions: all four
    assert document["bounds_mode"] == "fixed" and document["repetitions"] == 2 and document["peer_repetitions"] == 1
    assert {entry["query"] for entry in document["oracle"]} == {"count_by_region", "filtered_sum"}
    assert len(document["checks"]) == 6
    peers = [entry for entry in document["measurements"] if entry["system"] == "fake"]
    assert len(peers) == 4 and all(entry["relative_error"] == 0.0 for entry in peers)  # it answers exactly
    out = tmp_path / "RESULTS.md"
    write_report(results, out)
    text = out.read_text()
    assert "| count_by_region | oracle |" in text and "Targets of issue 13" in text
    assert "| count_by_region | 1 |" in text and "G=1 R=10" in text  # as the engine reports them
    assert (tmp_path / "plots" / "accuracy_error_vs_epsilon.png").exists()


def test_report_says_where_fewer_cells_were_released(tmp_path: Path) -> None:
    environment = Environment("2026-12-01 10:00 UTC", "2 cores", 2, 23.5, (0.1, 0.2, 0.3), {}, "python -m benchmarks")
    entry = {"query": "q", "system": "p", "epsilon": 1.0, "relative_error": 0.1, "cells_released": 1.0}
    save(tmp_path / "results" / "accuracy.json", environment, [entry | {"cells_exact": 4}])
    write_report(tmp_path / "results", tmp_path / "RESULTS.md")
    assert "p on q at ε=1: 1.0 of 4" in (tmp_path / "RESULTS.md").read_text()


def test_oracle_report_section(tmp_path: Path) -> None:
    environment = Environment("2026-12-01 10:00 UTC", "2 cores", 2, 23.5, (0.1, 0.2, 0.3), {}, "python -m benchmarks")
    entry = {
        "rows": 200_000,
        "query": "count_by_region",
        "epsilon": 1.0,
        "oracle_error": 0.0206,
        "oracle_bounds": {"max_rows_per_member": 1024},
        "oracle_removed_share": 0.0,
        "candidates": 100,
        "policy_bounds": {"max_groups": 1, "max_rows_per_group": 10},
        "policy_error": 0.786,
    }
    save(tmp_path / "results" / "oracle.json", environment, [entry])
    out = tmp_path / "RESULTS.md"
    write_report(tmp_path / "results", out)
    assert "| 200K | count_by_region | 1 | 0.0206 | C=1024 | 0.0000 | G=1 R=10 | 0.7860 |" in out.read_text()


def test_selection_defaults() -> None:
    assert ALL.queries is None and ALL.file("accuracy") == "accuracy.json"
