"""Apply each mutant in a throw-away copy of the tracked tree and run its tests there, one at a time.

The working tree is never written: ``git ls-files`` are copied into a
temporary directory once, each mutant is written into that copy, its tests
run with the copy as the working directory (first on ``sys.path``), and the
original file is put back before the next mutant.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path

from tests.privacy.mutation.mutants import Mutant


class Verdict(StrEnum):
    KILLED = "killed"
    SURVIVED = "survived"
    EQUIVALENT = "equivalent"
    STALE = "stale"
    SKIPPED = "skipped"
    """Not run here: a Spark mutant without ``--spark``."""
    BASELINE_FAILED = "baseline failed"
    """Its tests fail on the unmutated copy, so they say nothing about the mutant."""


@dataclass(frozen=True)
class Outcome:
    id: str
    verdict: Verdict
    seconds: float
    detail: str
    """The first failing test (killed), the tests run (survived), or why it was not run."""


@dataclass(frozen=True)
class Options:
    timeout: float
    broad: bool
    spark: bool


@contextmanager
def tree_copy(root: Path) -> Iterator[Path]:
    """The files git tracks or would track in ``root`` (as they are now, edits included), in a temporary directory."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout
    with tempfile.TemporaryDirectory(prefix="coopdp-mutation-") as directory:
        copy = Path(directory)
        for name in filter(None, listed.decode().split("\0")):
            source = root / name
            if source.is_file():
                (copy / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, copy / name)
        yield copy


def _pytest(copy: Path, tests: tuple[str, ...], marks: str, timeout: float) -> tuple[int | None, str]:
    """Run pytest in ``copy``: its exit code (None on timeout) and the end of its output."""
    command = [sys.executable, "-m", "pytest", *tests, "-x", "-q", "-p", "no:cacheprovider", "-m", marks]
    environment = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
    try:
        run = subprocess.run(command, cwd=copy, env=environment, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, "timed out"
    return run.returncode, run.stdout[-4000:] + run.stderr[-2000:]


def _first_failure(output: str) -> str:
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line.split(" - ")[0]
    return output.strip().splitlines()[-1] if output.strip() else "no output"


class Runner:
    """Runs mutants against one tree copy; remembers which test selections pass unmutated."""

    def __init__(self, copy: Path, options: Options) -> None:
        self.copy = copy
        self.options = options
        self._baselines: dict[tuple[tuple[str, ...], str], bool] = {}

    def _baseline_passes(self, tests: tuple[str, ...], marks: str) -> bool:
        key = (tests, marks)
        if key not in self._baselines:
            code, _ = _pytest(self.copy, tests, marks, self.options.timeout * 2)
            self._baselines[key] = code == 0
        return self._baselines[key]

    def run(self, mutant: Mutant) -> Outcome:
        started = time.monotonic()

        def outcome(verdict: Verdict, detail: str) -> Outcome:
            return Outcome(mutant.id, verdict, round(time.monotonic() - started, 1), detail)

        target = self.copy / mutant.module
        original = target.read_text(encoding="utf-8")
        mutated = mutant.applied_to(original)
        if mutated is None:
            return outcome(
                Verdict.STALE, f"the snippet occurs {original.count(mutant.original)} times in {mutant.module}"
            )
        if mutant.equivalent:
            return outcome(Verdict.EQUIVALENT, mutant.equivalent)
        if mutant.needs_spark and not self.options.spark:
            return outcome(Verdict.SKIPPED, "needs Spark (run with --spark)")
        tests = mutant.tests + (mutant.fallback if self.options.broad else ())
        if not self._baseline_passes(tests, mutant.marks):
            return outcome(Verdict.BASELINE_FAILED, f"{' '.join(tests)} fail without the mutant")
        target.write_text(mutated, encoding="utf-8")
        try:
            code, output = _pytest(self.copy, tests, mutant.marks, self.options.timeout)
        finally:
            target.write_text(original, encoding="utf-8")
        if code is None:
            return outcome(Verdict.KILLED, "timed out")
        if code == 0:
            return outcome(Verdict.SURVIVED, " ".join(tests))
        if code in (1, 2, 3):  # failed, interrupted (an import error of the mutated module), internal error
            return outcome(Verdict.KILLED, _first_failure(output))
        return outcome(Verdict.BASELINE_FAILED, f"pytest exit code {code}: {_first_failure(output)}")


def load_state(path: Path) -> dict[str, Outcome]:
    """Outcomes of an earlier, interrupted run (one JSON object per line), by mutant id."""
    if not path.exists():
        return {}
    outcomes = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            entry = json.loads(line)
            outcomes[entry["id"]] = Outcome(entry["id"], Verdict(entry["verdict"]), entry["seconds"], entry["detail"])
    return outcomes


def append_state(path: Path, outcome: Outcome) -> None:
    with path.open("a", encoding="utf-8") as state:
        state.write(json.dumps(asdict(outcome)) + "\n")
