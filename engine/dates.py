"""Calendar arithmetic for date columns: which keys a date part or truncation can take.

A date column declares a range in its policy (``bounds = ["2020-01-01",
"2025-12-31"]``). Every key a date part (``EXTRACT(MONTH FROM d)``) or a
truncation (``DATE_TRUNC('month', d)``) can produce follows from that range
alone, so those keys are public and every one of them is released, empty or
not. Nothing here reads data.
"""

from __future__ import annotations

import datetime as dt
from enum import Enum


class DateField(Enum):
    """A part of a date or timestamp, as PostgreSQL's EXTRACT names it."""

    YEAR = "year"
    QUARTER = "quarter"
    MONTH = "month"
    WEEK = "week"
    """ISO 8601 week of the year, 1–53."""
    DAY = "day"
    DOW = "dow"
    """Day of the week, 0 (Sunday) to 6 (Saturday)."""
    ISODOW = "isodow"
    """Day of the week, 1 (Monday) to 7 (Sunday)."""
    DOY = "doy"
    HOUR = "hour"
    MINUTE = "minute"

    @property
    def needs_time(self) -> bool:
        return self in (DateField.HOUR, DateField.MINUTE)

    def values(self, low: dt.date, high: dt.date) -> list[int]:
        """Every value this part takes on dates in [low, high], in order (all of a day's, for hours and minutes)."""
        if self is DateField.YEAR:
            return list(range(low.year, high.year + 1))
        first, last = _FIXED_RANGES[self]
        if self.needs_time or (high - low).days >= _SHORT_RANGE_DAYS:
            return list(range(first, last + 1))
        days = (low + dt.timedelta(days=offset) for offset in range((high - low).days + 1))
        return sorted({self.of(day) for day in days})

    def of(self, day: dt.date) -> int:
        """This part of ``day`` (a date part only: not for hours or minutes)."""
        iso = day.isocalendar()
        return {
            DateField.YEAR: day.year,
            DateField.QUARTER: (day.month - 1) // 3 + 1,
            DateField.MONTH: day.month,
            DateField.WEEK: iso.week,
            DateField.DAY: day.day,
            DateField.DOW: iso.weekday % 7,
            DateField.ISODOW: iso.weekday,
            DateField.DOY: day.timetuple().tm_yday,
        }[self]


_FIXED_RANGES = {
    DateField.QUARTER: (1, 4),
    DateField.MONTH: (1, 12),
    DateField.WEEK: (1, 53),
    DateField.DAY: (1, 31),
    DateField.DOW: (0, 6),
    DateField.ISODOW: (1, 7),
    DateField.DOY: (1, 366),
    DateField.HOUR: (0, 23),
    DateField.MINUTE: (0, 59),
}
_SHORT_RANGE_DAYS = 800
"""Ranges shorter than this are walked day by day to find which values a part can take (a longer one takes all)."""
FIELD_ALIASES: dict[str, DateField] = {
    **{field.value: field for field in DateField},
    "years": DateField.YEAR,
    "months": DateField.MONTH,
    "days": DateField.DAY,
    "dayofweek": DateField.DOW,
    "dayofyear": DateField.DOY,
    "weekofyear": DateField.WEEK,
    "hours": DateField.HOUR,
    "minutes": DateField.MINUTE,
}
"""Names a query may use for a part (EXTRACT's keyword or a function's name), lower case."""


class TruncUnit(Enum):
    """A DATE_TRUNC unit at least a day long: the result is a date."""

    YEAR = "year"
    QUARTER = "quarter"
    MONTH = "month"
    WEEK = "week"
    """Weeks start on Monday (ISO 8601), as in PostgreSQL."""
    DAY = "day"

    def start(self, day: dt.date) -> dt.date:
        """The first day of the period holding ``day``."""
        if self is TruncUnit.YEAR:
            return day.replace(month=1, day=1)
        if self is TruncUnit.QUARTER:
            return day.replace(month=(day.month - 1) // 3 * 3 + 1, day=1)
        if self is TruncUnit.MONTH:
            return day.replace(day=1)
        if self is TruncUnit.WEEK:
            return day - dt.timedelta(days=day.weekday())
        return day

    def next(self, start: dt.date) -> dt.date:
        """The first day of the period after the one starting on ``start``."""
        months = {TruncUnit.YEAR: 12, TruncUnit.QUARTER: 3, TruncUnit.MONTH: 1}.get(self)
        if months is None:
            return start + dt.timedelta(days=7 if self is TruncUnit.WEEK else 1)
        month = start.month - 1 + months
        return start.replace(year=start.year + month // 12, month=month % 12 + 1, day=1)

    def periods(self, low: dt.date, high: dt.date) -> list[dt.date]:
        """The start of every period that overlaps [low, high], in order."""
        starts, current = [], self.start(low)
        while current <= high:
            starts.append(current)
            current = self.next(current)
        return starts


def parse_date(text: str) -> dt.date:
    """An ISO date ``YYYY-MM-DD``; raises ValueError otherwise (no other format is guessed)."""
    try:
        if len(text) == 10:
            return dt.date.fromisoformat(text)
        problem = "not 10 characters"
    except ValueError as error:
        problem = str(error)
    raise ValueError(f"{text[:40]!r} is not a date written YYYY-MM-DD ({problem})")
