"""``python -m benchmarks``: generate pools, time the engine against plain Polars and peers, write the report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="benchmarks",
    help="Benchmarks of coopdp on large synthetic pools (not tests; run by hand).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
DATA = Path("benchmarks/data")
RESULTS = Path("benchmarks/results")
RowsOption = Annotated[str, typer.Option("--rows", help="Pool sizes, comma-separated, with K/M suffixes: 1M,10M.")]
DataOption = Annotated[Path, typer.Option("--data-dir", help="Where pools are generated (kept between runs).")]
PEERS = Path.home() / ".cache/coopdp-peers"
"""Where benchmarks/peers/setup.sh puts one virtual environment per peer."""
PeersOption = Annotated[Path, typer.Option("--peers-dir", envvar="COOPDP_PEERS", help="The peers' venvs.")]
QueriesOption = Annotated[str, typer.Option("--queries", help="Only these queries (comma-separated names).")]
OnlyPeersOption = Annotated[
    str, typer.Option("--peers", help="Only these peers, and not coopdp (to rerun a peer); comma-separated.")
]
TagOption = Annotated[str, typer.Option("--tag", help="Write <stem>_<tag>.json instead of <stem>.json.")]
ResultsOption = Annotated[Path, typer.Option("--results", help="Where measurements are written as JSON.")]


@app.command()
def generate(
    rows: Annotated[str, typer.Option("--rows", help="Rows in the pool, e.g. 300M.")],
    out: Annotated[Path, typer.Option("--out", help="Directory for parts/, policies/ and manifest.json.")],
    seed: Annotated[int, typer.Option("--seed")] = 20_261_124,
    chunk_rows: Annotated[int, typer.Option("--chunk-rows", help="Rows per Parquet part (memory ~ one chunk).")] = (
        2_000_000
    ),
) -> None:
    """Write a synthetic pool as partitioned Parquet, streaming, with its policies."""
    from benchmarks.generate import PoolSpec, generate_pool
    from benchmarks.sizes import parse_rows

    pool = generate_pool(PoolSpec(parse_rows(rows), seed, chunk_rows), out)
    size = sum(part.stat().st_size for part in pool.parts) / 2**20
    typer.echo(
        f"{pool.spec.rows:,} rows, {pool.members:,} members, {len(pool.parts)} parts, {size:,.0f} MiB "
        f"in {pool.seconds:.1f} s → {out}"
    )


@app.command()
def run(
    rows: RowsOption = "1M,10M,50M",
    repeats: Annotated[int, typer.Option("--repeats", help="Runs per query; the best counts.")] = 3,
    data_dir: DataOption = DATA,
    results: ResultsOption = RESULTS,
) -> None:
    """Speed suite: every query through the engine and through plain Polars, interleaved, per pool size."""
    from benchmarks.sizes import parse_sizes
    from benchmarks.speed import run_speed_suite

    run_speed_suite(parse_sizes(rows), repeats, data_dir, results)


@app.command()
def overhead(
    runs: Annotated[int, typer.Option("--runs")] = 50,
    data_dir: DataOption = DATA,
    results: ResultsOption = RESULTS,
) -> None:
    """Fixed cost of a query on a tiny pool (parse, plan, ledger, noise): median over runs."""
    from benchmarks.speed import run_overhead

    run_overhead(runs, data_dir, results)


@app.command()
def scale(
    rows: RowsOption = "300M",
    data_dir: DataOption = DATA,
    results: ResultsOption = RESULTS,
) -> None:
    """Engine queries over a pool larger than memory, each in a subprocess whose peak RSS is measured."""
    from benchmarks.scale import run_scale
    from benchmarks.sizes import parse_sizes

    run_scale(parse_sizes(rows), data_dir, results)


@app.command()
def peers(
    rows: RowsOption = "1M,5M",
    repeats: Annotated[int, typer.Option("--repeats")] = 3,
    peers_dir: PeersOption = PEERS,
    data_dir: DataOption = DATA,
    results: ResultsOption = RESULTS,
    queries: QueriesOption = "",
    only_peers: OnlyPeersOption = "",
    tag: TagOption = "",
) -> None:
    """The same queries through SmartNoise SQL, OpenDP's Polars API and Tumult Analytics (see peers/setup.sh)."""
    from benchmarks.peers.compare import run_peers
    from benchmarks.sizes import parse_sizes

    run_peers(parse_sizes(rows), repeats, peers_dir, data_dir, results, _selection(queries, only_peers, tag))


EpsilonsOption = Annotated[str, typer.Option("--epsilons", help="Comma-separated.")]


@app.command()
def accuracy(
    rows: RowsOption = "1M",
    repetitions: Annotated[int, typer.Option("--repetitions", help="Our releases per query and ε.")] = 20,
    epsilons: EpsilonsOption = "0.1,0.3,1,3,10",
    bounds: Annotated[
        str,
        typer.Option(
            "--bounds",
            help="Member bounds: auto (the engine chooses; falls back to fixed, with a note, if it refuses) or fixed.",
        ),
    ] = "auto",
    peer_repetitions: Annotated[
        int | None, typer.Option("--peer-repetitions", help="Each peer's releases per query and ε (default: same).")
    ] = None,
    no_peers: Annotated[bool, typer.Option("--no-peers", help="coopdp and the oracle only.")] = False,
    peers_dir: PeersOption = PEERS,
    data_dir: DataOption = DATA,
    results: ResultsOption = RESULTS,
    queries: QueriesOption = "",
    only_peers: OnlyPeersOption = "",
    tag: TagOption = "",
) -> None:
    """Mean relative error against ε (0.1 … 10) per query: ours, the oracle's, and the peers' (issue 13 targets)."""
    from benchmarks.accuracy import BoundsMode, run_accuracy
    from benchmarks.sizes import parse_sizes

    run_accuracy(
        parse_sizes(rows)[0],
        repetitions,
        peers_dir,
        data_dir,
        results,
        _epsilons(epsilons),
        _selection(queries, only_peers, tag),
        BoundsMode(bounds),
        peer_repetitions,
        with_peers=not no_peers,
    )


@app.command()
def oracle(
    rows: RowsOption = "200K,1M",
    epsilons: EpsilonsOption = "0.1,0.3,1,3,10",
    data_dir: DataOption = DATA,
    results: ResultsOption = RESULTS,
    queries: QueriesOption = "",
    tag: TagOption = "",
) -> None:
    """The least error any fixed bounds achieve per query and ε, found with the exact data (evaluation only)."""
    from benchmarks.accuracy import run_oracle
    from benchmarks.sizes import parse_sizes

    run_oracle(parse_sizes(rows), _epsilons(epsilons), data_dir, results, _selection(queries, "", tag))


@app.command()
def report(
    results: ResultsOption = RESULTS,
    out: Annotated[Path, typer.Option("--out")] = Path("benchmarks/RESULTS.md"),
) -> None:
    """Write the measurements as tables and PNG plots into RESULTS.md, between this suite's markers."""
    from benchmarks.report import write_report

    write_report(results, out)
    typer.echo(f"wrote {out}")


def _epsilons(text: str) -> tuple[float, ...]:
    return tuple(float(epsilon) for epsilon in text.split(",") if epsilon.strip())


def _selection(queries: str, peers: str, tag: str):  # noqa: ANN202 - imported lazily, like every command's code
    from benchmarks.peers.compare import Selection

    def names(text: str) -> tuple[str, ...] | None:
        return tuple(name.strip() for name in text.split(",") if name.strip()) or None

    return Selection(names(queries), names(peers), tag)


if __name__ == "__main__":
    app()
