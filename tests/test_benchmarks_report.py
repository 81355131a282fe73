"""The benchmark report: sections between markers, tables from measurement files, small PNG plots."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.measure import Environment, save
from benchmarks.report import END, START, replace_section, write_report

ENVIRONMENT = Environment(
    date="2026-11-24 10:00 UTC",
    machine="2 cores, 23.5 GiB RAM",
    cores=2,
    memory_gib=23.5,
    load_before=(0.1, 0.2, 0.3),
    versions={"polars": "2.1.0"},
    command="python -m benchmarks run --rows 1K,2K",
)


def _speed(results: Path) -> None:
    measurements = [
        {"rows": rows, "query": "count_by_region", "level": level, "engine": [0.2 * scale, 0.3], "plain": [0.1 * scale]}
        for rows, scale in ((10_000_000, 1.0), (50_000_000, 5.0))
        for level in ("row", "member")
    ]
    save(results / "speed.json", ENVIRONMENT, measurements, repeats=2)


def _accuracy(results: Path) -> None:
    measurements = [
        {
            "rows": 1000,
            "query": "count_by_region",
            "system": system,
            "epsilon": epsilon,
            "relative_error": 0.1 / epsilon,
        }
        for system in ("coopdp", "smartnoise")
        for epsilon in (0.1, 1.0, 10.0)
    ]
    save(results / "accuracy.json", ENVIRONMENT, measurements, repetitions=3, skipped={"tumult": "no java"})


def test_replace_section_keeps_what_is_outside_the_markers() -> None:
    first = replace_section("# Results\n\nold hand-written table\n", f"{START}\nA\n{END}")
    assert first.startswith("# Results\n\nold hand-written table\n") and first.endswith(f"{START}\nA\n{END}\n")
    second = replace_section(first + "\ntrailing note\n", f"{START}\nB\n{END}")
    assert "A" not in second.split(START)[1] and f"{START}\nB\n{END}" in second
    assert second.startswith("# Results\n\nold hand-written table\n") and second.endswith("\ntrailing note\n")


def test_report_tables_ratios_and_plots(tmp_path: Path) -> None:
    results = tmp_path / "results"
    _speed(results)
    _accuracy(results)
    out = tmp_path / "RESULTS.md"
    out.write_text("# Benchmark results\n\nearlier results\n")
    write_report(results, out)
    text = out.read_text()
    assert text.startswith("# Benchmark results\n\nearlier results\n")
    assert "| 10M | count_by_region | row | 0.200 | 0.100 | 2.00 | **MISSED** |" in text
    assert "| 50M | count_by_region | member | 0.300 | 0.500 | 0.60 | ok |" in text
    assert "`python -m benchmarks run --rows 1K,2K`" in text
    assert "**tumult** skipped: no java" in text
    assert "| count_by_region | smartnoise | 1.0000 | 0.1000 | 0.0100 |" in text
    for name in ("speed_time_vs_rows.png", "accuracy_error_vs_epsilon.png"):  # speed.json → speed_…
        png = tmp_path / "plots" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size < 200_000
        assert f"](plots/{name})" in text
    write_report(results, out)  # regenerating replaces the section, never duplicates it
    assert out.read_text().count(START) == 1 and out.read_text() == text


def test_peers_table_gives_time_and_error_ratios(tmp_path: Path) -> None:
    results = tmp_path / "results"
    measurements = [
        {"rows": 5_000_000, "query": "q", "system": "coopdp", "seconds": [0.5, 0.6], "relative_error": 0.02},
        {"rows": 5_000_000, "query": "q", "system": "opendp_polars", "seconds": [2.0], "relative_error": 0.04},
        {"rows": 5_000_000, "query": "q", "system": "tumult", "seconds": [], "relative_error": None, "error": "x"},
    ]
    save(
        results / "peers.json",
        ENVIRONMENT,
        measurements,
        skipped={"smartnoise": "not installed"},
        peer_versions={"opendp_polars": "opendp==0.16.0, polars==1.36.1"},
    )
    out = tmp_path / "RESULTS.md"
    write_report(results, out)
    text = out.read_text()
    assert "| 5M | q | 0.500 | 0.0200 | 2.000 | 0.250 | 0.0400 | — | — | — | 0.50 |" in text
    assert "**smartnoise** skipped: not installed" in text
    assert "- **opendp_polars:** opendp==0.16.0, polars==1.36.1" in text


def test_report_without_measurements_leaves_an_empty_section(tmp_path: Path) -> None:
    out = tmp_path / "RESULTS.md"
    write_report(tmp_path / "none", out)
    assert START in out.read_text() and END in out.read_text()


def test_saved_file_records_environment(tmp_path: Path) -> None:
    path = save(tmp_path / "x.json", ENVIRONMENT, [{"a": 1}], extra=1)
    document = json.loads(path.read_text())
    assert document["environment"]["command"] == ENVIRONMENT.command and document["extra"] == 1
    assert len(document["load_after"]) == 3
