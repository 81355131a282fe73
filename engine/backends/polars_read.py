"""Reading a pool into Polars with the schema its policy declares: per file, per value, never inferred.

Invariant 8 (totality): how a row is read must not depend on any other row,
its position or its file. So no type is ever inferred from data:

* CSV files are read as text, every column, and each value is parsed on its
  own with one fixed format per declared type (``parse_text``; the formats are
  listed in docs/sources.md). A value that does not parse is NULL.
* Each Parquet file's stored types are read from its metadata. When every file
  stores the same types, the files are scanned together as they are (the fast
  path: no cast that would block pushdown). Otherwise each file is scanned on
  its own and cast to the declared types, then the files are concatenated: a
  stored type other than the declared one is cast where that cast is total
  (numbers, bools, dates), else printed as text and parsed like a CSV value.
* A file without a declared column, or storing it in a type that has no text
  (lists, structs, binary), reads that column as NULL; a column no file can
  read at all is refused before the charge (``check_pool``).

Member ids (``type = "id"``) keep their stored type when every file stores an
integer; when some file stores them otherwise, every file's ids are read as
their text (an integer id 42 and a text id "42" are then the same member).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from engine import plan as ir
from engine.backends.shared import BOOL_TEXTS, check_columns

ROW_INDEX = "__row"
"""The one column read when a plan reads none (a row-level COUNT(*) still needs one per row)."""

KINDS: dict[ir.ColumnKind, pl.DataType | None] = {
    ir.ColumnKind.NATIVE: None,
    ir.ColumnKind.TEXT: pl.String(),
    ir.ColumnKind.INT: pl.Int64(),
    ir.ColumnKind.FLOAT: pl.Float64(),
    ir.ColumnKind.BOOL: pl.Boolean(),
    ir.ColumnKind.DATE: pl.Date(),
    ir.ColumnKind.DATETIME: pl.Datetime("us"),
}
_INT_TEXT = r"^[+-]?[0-9]+$"
_FLOAT_TEXT = r"^[+-]?(([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|(?i:nan|inf|infinity))$"
_DATE_TEXT = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
_DATETIME_TEXT = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,9})?)?(Z|[+-][0-9]{2}:?[0-9]{2})?$"
)
_ISO_DATETIMES = ("%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M")
"""ISO 8601 date and time (``T`` already read as a space), with or without seconds; each also with an offset."""
_OFFSETS = ("%z", "%#z", "%:z")


@dataclass(frozen=True)
class StoredFile:
    """One file of the pool and the types it stores (from its metadata or CSV header: no row is read)."""

    path: str
    schema: Mapping[str, pl.DataType]


def stored_files(source: ir.Source) -> list[StoredFile]:
    """Each file's stored types: a Parquet footer, or a CSV header (every CSV column is text)."""
    if source.format is ir.SourceFormat.CSV:
        return [StoredFile(str(path), dict(_scan_csv(path).collect_schema())) for path in source.paths]
    return [StoredFile(str(path), pl.read_parquet_schema(path)) for path in source.paths]


def check_pool(plan: ir.QueryPlan, files: list[StoredFile]) -> None:
    """Refuse, before the charge, a declared column that no file stores in a type that can be read."""
    usable: dict[str, pl.DataType] = {}
    for file in files:
        for name, stored in file.schema.items():
            if name not in usable or _has_text(stored):
                usable[name] = stored
    check_columns(plan, usable, _readable)


def read_pool(source: ir.Source, files: list[StoredFile]) -> pl.LazyFrame:
    """The declared columns of every file, each in its declared type (or ``ROW_INDEX`` when there are none)."""
    names = [name for name, _ in source.columns]
    same_types = all(_types_of(file, names) == _types_of(files[0], names) for file in files)
    if source.format is ir.SourceFormat.PARQUET and same_types and all(_has_all(file, names) for file in files):
        return _read_file(pl.scan_parquet([file.path for file in files], extra_columns="ignore"), files[0], source)
    id_types = {name: _id_type(name, files) for name, kind in source.columns if kind is ir.ColumnKind.NATIVE}
    frames = [_read_file(_scan(file.path, source.format), file, source, id_types) for file in files]
    return pl.concat(frames, how="vertical")


def parse_text(text: pl.Expr, kind: ir.ColumnKind, text_format: str | None = None) -> pl.Expr:
    """Each text value read as ``kind`` with the one fixed format of that kind; NULL where it does not parse.

    Surrounding spaces are ignored. ``text_format`` (a date or datetime
    column's declared format) replaces the ISO format of that column.
    """
    if kind in (ir.ColumnKind.NATIVE, ir.ColumnKind.TEXT):
        return text
    value = text.str.strip_chars()
    if kind is ir.ColumnKind.INT:
        return pl.when(value.str.contains(_INT_TEXT)).then(value.str.to_integer(strict=False))
    if kind is ir.ColumnKind.FLOAT:
        number = value.cast(pl.Float64, strict=False)
        return pl.when(value.str.contains(_FLOAT_TEXT)).then(number).fill_nan(None)
    if kind is ir.ColumnKind.BOOL:
        return value.str.to_lowercase().replace_strict(BOOL_TEXTS, default=None, return_dtype=pl.Boolean)
    if kind is ir.ColumnKind.DATE:
        if text_format is not None:
            return value.str.to_date(text_format, strict=False)
        return pl.when(value.str.contains(_DATE_TEXT)).then(value.str.to_date("%Y-%m-%d", strict=False))
    if text_format is not None:
        return _to_datetime(value, text_format)
    iso = value.str.replace("T", " ", literal=True)
    readings = [_to_datetime(iso, form + zone) for form in _ISO_DATETIMES for zone in ("", "%#z")]
    return pl.when(value.str.contains(_DATETIME_TEXT)).then(pl.coalesce(readings))


def _to_datetime(text: pl.Expr, text_format: str) -> pl.Expr:
    """A datetime in microseconds; one with an offset is converted to UTC and read as its UTC wall clock."""
    parsed = text.str.to_datetime(text_format, time_unit="us", strict=False, exact=True)
    return parsed.dt.replace_time_zone(None) if any(zone in text_format for zone in _OFFSETS) else parsed


def _read_file(
    scan: pl.LazyFrame, file: StoredFile, source: ir.Source, id_types: Mapping[str, pl.DataType] | None = None
) -> pl.LazyFrame:
    formats = dict(source.formats)
    reads = [
        _read(name, kind, file.schema.get(name), formats.get(name), (id_types or {}).get(name))
        for name, kind in source.columns
    ]
    if not reads:
        return scan.with_row_index(ROW_INDEX).select(ROW_INDEX)
    if all(_readable_in(file, name) for name, _ in source.columns):
        return scan.select(reads)
    # A column this file lacks is a NULL literal: with_columns gives it one value per row (select would give one).
    return scan.with_row_index(ROW_INDEX).with_columns(reads).select(name for name, _ in source.columns)


def _read(
    name: str, kind: ir.ColumnKind, stored: pl.DataType | None, text_format: str | None, id_type: pl.DataType | None
) -> pl.Expr:
    """One file's column as its declared kind; casts that change nothing are skipped (they stop filter pushdown)."""
    target = id_type if kind is ir.ColumnKind.NATIVE else KINDS[kind]
    column = pl.col(name)
    if stored is None or not _has_text(stored):  # the file lacks the column, or stores it with no text
        return pl.lit(None, dtype=target or pl.String()).alias(name)
    if kind is ir.ColumnKind.FLOAT and stored.is_float():
        return (column if stored == target else column.cast(pl.Float64)).fill_nan(None)  # NULL: SQL has no NaN
    if target is None or stored == target:
        return column
    if _casts_totally(stored, kind):
        return column.cast(target, strict=False)
    return parse_text(column.cast(pl.String), kind, text_format).alias(name)


def _casts_totally(stored: pl.DataType, kind: ir.ColumnKind) -> bool:
    """Whether a non-strict cast reads every stored value as the kind means it (else the value is parsed as text)."""
    number = stored.is_numeric() or stored == pl.Boolean()
    if kind in (ir.ColumnKind.NATIVE, ir.ColumnKind.TEXT):
        return True  # every type with a text is cast to text (an id to its unified type)
    if kind in (ir.ColumnKind.DATE, ir.ColumnKind.DATETIME):
        return isinstance(stored, (pl.Date, pl.Datetime))
    return number


def _has_text(stored: pl.DataType) -> bool:
    """Whether every value of the type has a text form Polars can print (lists, structs and bytes do not)."""
    text_like = isinstance(stored, (pl.String, pl.Categorical, pl.Enum, pl.Date, pl.Datetime, pl.Time, pl.Null))
    return text_like or stored.is_numeric() or stored == pl.Boolean()


def _readable(stored: pl.DataType, kind: ir.ColumnKind) -> bool:
    """Any kind reads from a type with a text (by a total cast, or by parsing that text)."""
    return _has_text(stored)


def _id_type(name: str, files: list[StoredFile]) -> pl.DataType:
    """Integer ids when every file stores them as integers, else text (the same in every file)."""
    stored = [file.schema[name] for file in files if name in file.schema]
    return pl.Int64() if all(type_.is_integer() for type_ in stored) else pl.String()


def _types_of(file: StoredFile, names: list[str]) -> list[pl.DataType | None]:
    return [file.schema.get(name) for name in names]


def _has_all(file: StoredFile, names: list[str]) -> bool:
    return all(name in file.schema for name in names)


def _readable_in(file: StoredFile, name: str) -> bool:
    return name in file.schema and _has_text(file.schema[name])


def _scan(path: str, source_format: ir.SourceFormat) -> pl.LazyFrame:
    return _scan_csv(path) if source_format is ir.SourceFormat.CSV else pl.scan_parquet(path)


def _scan_csv(path: str | Path) -> pl.LazyFrame:
    """A CSV file with every column as text: no type is inferred, so no value decides how another is read."""
    return pl.scan_csv(path, infer_schema=False)
