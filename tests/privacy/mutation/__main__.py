"""``python -m tests.privacy.mutation``: run the curated mutants, one at a time, and report."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from tests.privacy.mutation.mutants import load
from tests.privacy.mutation.report import render, score, write
from tests.privacy.mutation.runner import Options, Runner, Verdict, append_state, load_state, tree_copy

ROOT = Path(__file__).resolve().parents[3]
TARGET = 0.95


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.privacy.mutation", description=__doc__)
    parser.add_argument("--report", type=Path, help="write the results table into this file (MUTATION.md)")
    parser.add_argument("--only", action="append", default=[], metavar="ID", help="run only these mutants")
    parser.add_argument(
        "--state", type=Path, default=ROOT / ".mutation-state.jsonl", help="outcomes so far, one per line"
    )
    parser.add_argument("--resume", action="store_true", help="keep the outcomes in --state, run the rest")
    parser.add_argument("--broad", action="store_true", help="also run each mutant's fallback tests")
    parser.add_argument("--spark", action="store_true", help="also run the Spark mutants (needs Java 17)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per mutant's test run")
    arguments = parser.parse_args(argv)
    mutants = load()
    unknown = set(arguments.only) - {mutant.id for mutant in mutants}
    if unknown:
        parser.error(f"no mutants {', '.join(sorted(unknown))}")
    selected = [mutant for mutant in mutants if not arguments.only or mutant.id in arguments.only]
    outcomes = load_state(arguments.state) if arguments.resume or arguments.only else {}
    if not (arguments.resume or arguments.only):
        arguments.state.unlink(missing_ok=True)
    options = Options(arguments.timeout, arguments.broad, arguments.spark)
    with tree_copy(ROOT) as copy:
        runner = Runner(copy, options)
        for mutant in selected:
            if arguments.resume and mutant.id in outcomes and not arguments.only:
                continue
            outcome = runner.run(mutant)
            outcomes[mutant.id] = outcome
            append_state(arguments.state, outcome)
            print(
                f"{mutant.id:<28} {outcome.verdict.value:<15} {outcome.seconds:>6.1f}s  {outcome.detail[:90]}",
                flush=True,
            )
    if arguments.report:
        command = shlex.join(["python", "-m", "tests.privacy.mutation", *(argv if argv is not None else sys.argv[1:])])
        write(arguments.report, render(mutants, outcomes, command))
    ran = list(outcomes.values())
    killed, counted = score(ran)
    print(f"{killed}/{counted} non-equivalent mutants killed", flush=True)
    blocking = {Verdict.SURVIVED, Verdict.STALE, Verdict.BASELINE_FAILED}
    return 1 if counted and killed / counted < TARGET or any(o.verdict in blocking for o in ran) else 0


if __name__ == "__main__":
    sys.exit(main())
