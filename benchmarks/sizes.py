"""Pool sizes as people write them (``10M``, ``500K``) and as directory names."""

from __future__ import annotations

_SUFFIXES = {"K": 1_000, "M": 1_000_000, "G": 1_000_000_000}


def parse_rows(text: str) -> int:
    """``"10M"`` → 10_000_000; plain digits (underscores allowed) as they are."""
    text = text.strip().upper().replace("_", "")
    if text[-1:] in _SUFFIXES:
        return int(float(text[:-1]) * _SUFFIXES[text[-1]])
    return int(text)


def parse_sizes(text: str) -> list[int]:
    return [parse_rows(part) for part in text.split(",") if part.strip()]


def label(rows: int) -> str:
    """The shortest exact label: 10_000_000 → ``10M``, 1_500 → ``1500``."""
    for suffix, factor in sorted(_SUFFIXES.items(), key=lambda item: -item[1]):
        if rows >= factor and rows % factor == 0:
            return f"{rows // factor}{suffix}"
    return str(rows)
