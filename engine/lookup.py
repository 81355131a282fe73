"""Public lookup tables: small, public, keyed files a query may join to the pool.

A cooperative declares them in a policy (``[public_tables.regions]``, a
``source`` file and its unique ``key``). They hold no member data, so the
planner reads them whole, at plan time, and turns every joined attribute into
a per-row lookup on the pool's key column. Because the key is unique, a pool
row matches at most one entry: a join can drop a row (INNER) or leave its
attributes NULL (LEFT), never multiply it, so no contribution bound changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import polars as pl

from engine.plan import Scalar

MAX_LOOKUP_ROWS = 100_000
"""A public table is read whole into every plan that joins it; larger tables are refused at load."""


class AttributeType(Enum):
    TEXT = "text"
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    DATE = "date"

    @property
    def is_numeric(self) -> bool:
        return self in (AttributeType.INT, AttributeType.FLOAT)


@dataclass(frozen=True)
class PublicTable:
    """A loaded public table: its key column's values and every attribute, aligned row by row."""

    name: str
    key: str
    key_type: AttributeType
    keys: tuple[Scalar, ...]
    attributes: dict[str, tuple[AttributeType, tuple[Scalar | None, ...]]]
    """Attribute name → (type, value per key); the key column itself is not an attribute."""

    def column(self, name: str) -> str | None:
        """The attribute (or key) called ``name``, matched case-insensitively as SQL names are."""
        return next((column for column in (self.key, *self.attributes) if column.lower() == name.lower()), None)


def load_public_table(name: str, path: Path, key: str) -> PublicTable:
    """Read and check a public table; raise ValueError saying what is wrong with it."""
    if not path.is_file():
        raise ValueError(f"{path} is not a file")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise ValueError(f"{path.name}: a public table is a .csv or .parquet file")
    try:
        frame = pl.read_csv(path, try_parse_dates=True) if suffix == ".csv" else pl.read_parquet(path)
    except (OSError, pl.exceptions.PolarsError) as error:
        raise ValueError(f"{path.name}: cannot be read ({error.__class__.__name__})") from None
    if frame.height == 0 or frame.height > MAX_LOOKUP_ROWS:
        raise ValueError(f"{path.name}: has {frame.height} rows; a public table has 1 to {MAX_LOOKUP_ROWS}")
    if key not in frame.columns:
        raise ValueError(f"{path.name}: has no key column {key!r} (its columns: {', '.join(frame.columns)})")
    types = {column: _attribute_type(path.name, column, frame.schema[column]) for column in frame.columns}
    for column, column_type in types.items():
        if column_type is AttributeType.FLOAT and not frame.get_column(column).drop_nulls().is_finite().all():
            raise ValueError(f"{path.name}: column {column!r} holds NaN or infinite values")
    keys = frame.get_column(key)
    if keys.null_count() or keys.n_unique() != frame.height:
        raise ValueError(f"{path.name}: the key {key!r} must be unique and never empty (a join would multiply rows)")
    return PublicTable(
        name=name,
        key=key,
        key_type=types[key],
        keys=tuple(keys.to_list()),
        attributes={
            column: (types[column], tuple(frame.get_column(column).to_list()))
            for column in frame.columns
            if column != key
        },
    )


def _attribute_type(table: str, column: str, dtype: pl.DataType) -> AttributeType:
    if dtype.is_integer():
        return AttributeType.INT
    if dtype.is_float():
        return AttributeType.FLOAT
    if dtype == pl.Boolean():
        return AttributeType.BOOL
    if dtype == pl.Date():
        return AttributeType.DATE
    if dtype == pl.String():
        return AttributeType.TEXT
    raise ValueError(f"{table}: column {column!r} is stored as {dtype}; use text, numbers, booleans or dates")
