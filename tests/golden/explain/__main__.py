"""``python -m tests.golden.explain [--update]``: compare (or rewrite) every golden explain; exit 1 on a difference."""

from __future__ import annotations

import argparse
import sys

from tests.golden.explain import cases, explained, golden_engine


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.golden.explain", description=__doc__)
    parser.add_argument("--update", action="store_true", help="rewrite the .txt files from the current engine")
    arguments = parser.parse_args()
    differing = []
    with golden_engine() as engine:
        for case in cases():
            text = explained(engine, case)
            current = case.expected_path.read_text() if case.expected_path.exists() else None
            if text == current:
                continue
            differing.append(case.name)
            if arguments.update:
                case.expected_path.write_text(text)
    verb = "rewrote" if arguments.update else "differ"
    print(f"{len(differing)} golden explains {verb}: {', '.join(differing) or 'none'}")
    return 0 if arguments.update or not differing else 1


if __name__ == "__main__":
    sys.exit(main())
