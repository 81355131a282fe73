"""Calendar arithmetic for date columns: which keys a date part or truncation can take.

A date column declares a range in its policy (``bounds = ["2020-01-01",
"2025-12-31"]``). Every key a date part (``EXTRACT(MONTH FROM d)``) or a
truncation (``DATE_TRUNC('month', d)``) can produce follows from that range
alone, so those keys are public and every one of them is released, empty or
not. Nothing here reads data.
"""

from __future__ import annotations

import datetime as dt
import re
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


_DATE_DIRECTIVES = {"Y": "year", "y": "year", "m": "month", "b": "month", "d": "day"}
_TIME_DIRECTIVES = {"H": "hour", "M": "minute", "S": "second", "z": "offset"}
_DIRECTIVE = re.compile(r"%(.)")
_FORMAT_SAMPLE = dt.datetime(2024, 2, 29, 13, 37, tzinfo=dt.UTC)
_MAX_FORMAT_LENGTH = 64


def check_text_format(text_format: str, with_time: bool) -> None:
    """Accept a column's declared text format, or raise ValueError saying why (checked when the policy loads).

    A format names the year, month and day once each, and for datetimes
    optionally the hour and minute (both), seconds and a UTC offset (``%z``),
    with only the directives docs/sources.md lists, so that it reads the same on
    every engine and every text has at most one reading.
    """
    allowed = {**_DATE_DIRECTIVES, **(_TIME_DIRECTIVES if with_time else {})}
    if not text_format or len(text_format) > _MAX_FORMAT_LENGTH:
        raise ValueError(f"format must be 1 to {_MAX_FORMAT_LENGTH} characters")
    directives = [letter for letter in _DIRECTIVE.findall(text_format) if letter != "%"]
    unknown = sorted({f"%{letter}" for letter in directives if letter not in allowed})
    if unknown:
        raise ValueError(
            f"format uses {', '.join(unknown)}; a {'datetime' if with_time else 'date'} format may use "
            + " ".join(f"%{letter}" for letter in allowed)
            + " and %%"
        )
    fields = [allowed[letter] for letter in directives]
    repeated = sorted({field for field in fields if fields.count(field) > 1})
    if repeated:
        raise ValueError(f"format names the {', '.join(repeated)} more than once")
    missing = [field for field in ("year", "month", "day") if field not in fields]
    if ("minute" in fields or "second" in fields) and "hour" not in fields:
        missing.append("hour")
    if ("hour" in fields or "second" in fields) and "minute" not in fields:
        missing.append("minute")
    if missing:
        raise ValueError(f"format must name the {', '.join(missing)}")
    sample = _FORMAT_SAMPLE if "offset" in fields else _FORMAT_SAMPLE.replace(tzinfo=None)
    try:
        parsed = dt.datetime.strptime(sample.strftime(text_format), text_format)
    except ValueError:
        parsed = None
    if parsed is None or parsed.date() != sample.date():
        raise ValueError("format does not read back the dates it writes (are its fields separated?)")
