"""The curated mutants: one small, realistic bug each, with the tests that should catch it."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

MUTANTS_FILE = Path(__file__).with_name("mutants.toml")


@dataclass(frozen=True)
class Mutant:
    id: str
    module: str
    """The file mutated, relative to the repository root."""
    original: str
    """An exact snippet that must occur once in ``module``; otherwise the mutant is stale."""
    replacement: str
    description: str
    tests: tuple[str, ...]
    """The smallest set of pytest node ids or files that should kill it."""
    fallback: tuple[str, ...] = ()
    """A broader set, run with ``--broad`` when the smallest set lets the mutant survive."""
    equivalent: str | None = None
    """Why no test can tell it apart from the original (it is then not run)."""
    marks: str = "not slow and not spark"
    """The pytest ``-m`` expression: the fast suite, or ``spark and not slow`` for the Spark backend."""

    @property
    def needs_spark(self) -> bool:
        return self.marks.startswith("spark")

    def applied_to(self, source: str) -> str | None:
        """The mutated source, or None when the snippet is stale (missing, or there more than once)."""
        if source.count(self.original) != 1:
            return None
        return source.replace(self.original, self.replacement)


def load(path: Path = MUTANTS_FILE) -> tuple[Mutant, ...]:
    entries = tomllib.loads(path.read_text(encoding="utf-8"))["mutant"]
    mutants = tuple(
        Mutant(
            **{
                **entry,
                "tests": tuple(entry["tests"]),
                "fallback": tuple(entry.get("fallback", ())),
            }
        )
        for entry in entries
    )
    ids = [mutant.id for mutant in mutants]
    duplicated = sorted({i for i in ids if ids.count(i) > 1})
    if duplicated:
        raise ValueError(f"{path}: mutant ids used twice: {', '.join(duplicated)}")
    return mutants
