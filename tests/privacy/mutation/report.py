"""The results table of a run, written into MUTATION.md between two markers (the prose around it is kept)."""

from __future__ import annotations

import datetime as dt
import os
import platform
from collections import Counter
from pathlib import Path

from tests.privacy.mutation.mutants import Mutant
from tests.privacy.mutation.runner import Outcome, Verdict

START = "<!-- mutation-report:start -->"
END = "<!-- mutation-report:end -->"


def score(outcomes: list[Outcome]) -> tuple[int, int]:
    """(killed, killed + survived): the mutants that count towards the kill rate."""
    counts = Counter(outcome.verdict for outcome in outcomes)
    return counts[Verdict.KILLED], counts[Verdict.KILLED] + counts[Verdict.SURVIVED]


def render(mutants: tuple[Mutant, ...], outcomes: dict[str, Outcome], command: str) -> str:
    ran = [outcomes[mutant.id] for mutant in mutants if mutant.id in outcomes]
    counts = Counter(outcome.verdict for outcome in ran)
    killed, counted = score(ran)
    rate = f"{100 * killed / counted:.1f}%" if counted else "n/a"
    machine = f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    lines = [
        START,
        f"Run of {dt.date.today().isoformat()}: `{command}` on {machine}; "
        f"{sum(outcome.seconds for outcome in ran) / 60:.1f} minutes of mutant runs.",
        "",
        f"**{killed} of {counted} non-equivalent mutants killed ({rate})**; "
        + ", ".join(f"{counts[verdict]} {verdict.value}" for verdict in Verdict if verdict is not Verdict.KILLED)
        + f"; {len(mutants) - len(ran)} not run.",
        "",
        "| id | module | mutant | verdict | detail | s |",
        "|---|---|---|---|---|---|",
    ]
    for mutant in mutants:
        outcome = outcomes.get(mutant.id)
        verdict, detail, seconds = (
            (outcome.verdict.value, outcome.detail, f"{outcome.seconds:g}") if outcome else ("not run", "", "")
        )
        lines.append(
            f"| {mutant.id} | `{mutant.module}` | {mutant.description} | {verdict} | {_cell(detail)} | {seconds} |"
        )
    lines.append(END)
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")[:160]


def write(path: Path, table: str) -> None:
    """Replace the text between the markers of ``path`` (or append it) with ``table``."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if START in text and END in text:
        before, rest = text.split(START, 1)
        text = before + table + rest.split(END, 1)[1]
    else:
        text = text + ("\n" if text else "") + table + "\n"
    path.write_text(text, encoding="utf-8")
