"""QueryPlan → Spark DataFrame → exact bounded aggregates, equal to the Polars backend's.

Written with the DataFrame API rather than generated Spark SQL: the plan's
nodes map one to one onto Column expressions (as they do onto Polars ones),
names and literals never pass through SQL text (no quoting, no injection),
and the hash's higher-order functions are ordinary Python calls.

The work is the Polars backend's, step for step: read and cast the declared
columns, filter, derive, clamp to fixed point, then bound each unit's
contribution and aggregate by the shared ``engine.backends.bounding``, on the
Spark primitives of ``engine.backends.spark_primitives``. Only that small per-group
table (and, for quantiles, the bounded samples) comes back to the driver,
which lays it onto the policy's public keys. Noise is added afterwards, on
the driver, by the same OpenDP code as for Polars.

Where Spark cannot read a pool exactly as Polars would (CSV type inference,
numbers parsed from text, floats or dates printed as text), ``check_schema``
refuses before anything is charged, rather than answer differently.
"""

from __future__ import annotations

import itertools
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine import plan as ir
from engine.backends import bounding
from engine.backends.base import ExactAggregates, MemberProfile
from engine.backends.shared import check_columns, fixed_name, key_type, part_name, value_columns
from engine.backends.spark_session import SparkSettings, get_session
from engine.errors import PolicyError

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession
    from pyspark.sql.types import DataType

_INTEGRAL = ("byte", "short", "integer", "long")
_FRACTIONAL = ("float", "double")


class SparkBackend:
    """Runs plans on a Spark cluster (or ``local[*]``); the session starts on first use."""

    def __init__(self, session: SparkSession | None = None, settings: SparkSettings | None = None) -> None:
        self._session = session
        self._settings = settings

    @property
    def session(self) -> SparkSession:
        if self._session is None:
            self._session = get_session(self._settings or SparkSettings.from_environment())
        return self._session

    def check_schema(self, plan: ir.QueryPlan) -> None:
        """Fail before charging if the pool cannot be read exactly as the Polars backend reads it (metadata only)."""
        if plan.source.format is not ir.SourceFormat.PARQUET:
            raise PolicyError(
                f"the pool of {plan.dataset} is CSV: the Spark backend reads Parquet only "
                "(CSV type inference differs between engines; convert the pool to Parquet)"
            )
        try:
            stored = _stored_types(_scan(self.session, plan.source))
        except Exception as error:  # a SparkException through Py4J; its text (which may quote paths) is not passed on
            if "CANNOT_MERGE_SCHEMAS" not in str(error):
                raise
            raise PolicyError(
                f"the files of the pool of {plan.dataset} store a column in different types: the Spark backend "
                "reads one schema (read it with the Polars backend, which reads each file on its own, or convert it)"
            ) from None
        check_columns(plan, {name: _StoredType(type_) for name, type_ in stored.items()}, _readable)
        unit = plan.contribution.unit_column
        if unit is not None and stored[unit].typeName() not in (*_INTEGRAL, "string"):
            raise PolicyError(
                f"the privacy unit {unit} of {plan.dataset} is stored as {stored[unit].simpleString()}: "
                "the Spark backend needs integer or text member ids"
            )

    def execute(self, plan: ir.QueryPlan, seed: int | None = None) -> ExactAggregates:
        frame = bounded_aggregates(self.session, plan, secrets.randbits(63) if seed is None else seed)
        return _laid_out(plan, frame.collect())

    def profile(self, plan: ir.QueryPlan) -> MemberProfile:
        """The members' statistics (``bounding.member_profile``); only the tables of counts come back."""
        from engine.backends.spark_primitives import SparkPrimitives

        frame, _ = _prepared(self.session, plan)
        profiles = bounding.member_profile(frame.cache(), plan, SparkPrimitives())
        members = {
            name: {int(row[0]): int(row[1]) for row in table.collect() if row[0] is not None}
            for name, table in profiles.items()
        }
        frame.unpersist()
        return MemberProfile(members)


def bounded_aggregates(session: SparkSession, plan: ir.QueryPlan, seed: int) -> DataFrame:
    """One row per observed group (ungrouped: exactly one row), one BIGINT (or sample array) column per part."""
    from engine.backends.spark_primitives import SparkPrimitives

    frame, integer_unit = _prepared(session, plan)
    return bounding.bounded(frame, plan, seed, integer_unit, SparkPrimitives())


def _prepared(session: SparkSession, plan: ir.QueryPlan) -> tuple[DataFrame, bool]:
    """The plan's rows, read, filtered and clamped to fixed point; and whether the unit is stored as integers."""
    from pyspark.sql import functions as F

    from engine.backends.spark_exprs import row_expr

    scan = _scan(session, plan.source)
    stored = _stored_types(scan)
    frame = scan.select(*(_read(name, kind, stored[name]) for name, kind in plan.source.columns))
    if plan.where is not None:
        frame = frame.filter(row_expr(plan.where))
    if plan.derived:
        frame = frame.select("*", *(_derived(d).alias(d.name) for d in plan.derived))
    for key in plan.group_keys:
        column = F.col(key.column)
        frame = frame.filter(column.isNotNull() if key.values is None else column.isin(list(key.values)))
    columns = value_columns(plan)
    kinds = dict(plan.source.columns)
    frame = frame.select(
        "*", *(_fixed_point(value, kinds.get(name, ir.ColumnKind.FLOAT)) for name, value in columns.items())
    )
    unit = plan.contribution.unit_column
    return frame, unit is not None and stored[unit].typeName() in _INTEGRAL


# --- reading -----------------------------------------------------------------------


def _scan(session: SparkSession, source: ir.Source) -> DataFrame:
    locations = [source.uri] if source.uri else [str(path) for path in source.paths]
    # Every file's footer, merged: files storing a column in different types fail here, in check_schema, before
    # the charge (unmerged, Spark would take one file's schema and fail on another's rows after it).
    return session.read.option("mergeSchema", "true").parquet(*locations)


def _stored_types(frame: DataFrame) -> dict[str, DataType]:
    """Column name → stored type, names compared exactly (Spark's own lookup ignores case, Polars' does not)."""
    return {field.name: field.dataType for field in frame.schema.fields}


@dataclass(frozen=True)
class _StoredType:
    """A Spark type as error messages name it (``string``, ``bigint``)."""

    type: DataType

    def __str__(self) -> str:
        return self.type.simpleString()


def _readable(stored: _StoredType, kind: ir.ColumnKind) -> bool:
    """Whether Spark's cast from ``stored`` to ``kind`` gives what Polars' non-strict cast gives, for every value."""
    name = stored.type.typeName()
    numeric = name in _INTEGRAL or name in _FRACTIONAL
    if kind is ir.ColumnKind.NATIVE:
        return name in (*_INTEGRAL, "string", "boolean")
    if kind is ir.ColumnKind.TEXT:
        return name in (*_INTEGRAL, "string", "boolean")
    if kind is ir.ColumnKind.FLOAT:
        return numeric or name in ("boolean", "decimal")
    if kind in (ir.ColumnKind.DATE, ir.ColumnKind.DATETIME):
        return name in ("date", "timestamp", "timestamp_ntz")  # dates as text parse differently on each engine
    return numeric or name == "boolean"  # INT, BOOL


def _read(name: str, kind: ir.ColumnKind, stored: DataType) -> Column:
    """Read a column as its declared kind; bad values become NULL, float NaN becomes NULL (as in Polars)."""
    from pyspark.sql import functions as F

    from engine.backends.spark_exprs import LONG_RANGE

    column = F.col(name)
    source = stored.typeName()
    if kind is ir.ColumnKind.FLOAT:
        value = column.cast("double")
        return F.when(~F.isnan(value), value).alias(name) if source in _FRACTIONAL else value.alias(name)
    if kind is ir.ColumnKind.INT and source in _FRACTIONAL:
        number = column.cast("double")
        return F.when(~F.isnan(number) & (F.abs(number) < LONG_RANGE), number.cast("long")).alias(name)
    casts = {
        ir.ColumnKind.INT: "long",
        ir.ColumnKind.TEXT: "string",
        ir.ColumnKind.BOOL: "boolean",
        ir.ColumnKind.DATE: "date",
        ir.ColumnKind.DATETIME: "timestamp_ntz",  # a zoned timestamp reads as its UTC wall clock (session zone UTC)
    }
    return column.cast(casts[kind]).alias(name) if kind in casts else column


def _derived(derived: ir.DerivedColumn) -> Column:
    from engine.backends.spark_exprs import row_expr, to_long

    value = row_expr(derived.expr)
    if derived.kind is ir.ColumnKind.INT:
        return to_long(value.cast("double"), f"computed key {derived.name}")
    kinds = {ir.ColumnKind.FLOAT: "double", ir.ColumnKind.TEXT: "string", ir.ColumnKind.DATE: "date"}
    return value.cast(kinds[derived.kind])


def _fixed_point(value: ir.FixedPoint, kind: ir.ColumnKind) -> Column:
    """Clamp to the bounds in integer fixed-point units (NULL stays NULL), exactly as the Polars backend."""
    from pyspark.sql import functions as F

    from engine.backends.spark_exprs import clamp, to_long

    column = F.col(value.column)
    if kind is ir.ColumnKind.INT and value.scale == 1:
        return clamp(column, value.lower, value.upper).cast("long").alias(fixed_name(value.column))
    scaled = clamp(column.cast("double") * value.scale, value.lower, value.upper)
    return to_long(scaled, f"value of {value.column}").alias(fixed_name(value.column))


# --- back on the driver ------------------------------------------------------------


def _laid_out(plan: ir.QueryPlan, rows: list[Any]) -> ExactAggregates:
    """Every public key, empty groups with zeros, in the policy's order; private keys: observed ones, sorted.

    Neither which groups appear nor their order may depend on the data (as in the Polars backend).
    """
    empty: list[object] = [[] if part.kind is ir.PartKind.QUANTILE else 0 for part in plan.parts]
    names = [key.column for key in plan.group_keys]
    observed = {
        tuple(row[name] for name in names): [_part_value(row[part_name(i)], empty[i]) for i in range(len(plan.parts))]
        for row in rows
    }
    if not plan.group_keys:
        keys: list[tuple[object, ...]] = [()]
    elif plan.private_keys:
        keys = sorted(observed)
    else:
        keys = list(itertools.product(*(_typed(key.values or ()) for key in plan.group_keys)))
    values = [observed.get(key, empty) for key in keys]
    return ExactAggregates(keys=keys, parts=[[group[i] for group in values] for i in range(len(plan.parts))])


def _part_value(value: Any, empty: Any) -> Any:
    if value is None:
        return empty
    return sorted(value) if isinstance(value, list) else int(value)


def _typed(values: tuple[object, ...]) -> list[object]:
    """Public keys as the Polars backend returns them: one Python type per key (ints widened to float if mixed)."""
    cast = key_type(values)
    return [value if isinstance(value, cast) else cast(value) for value in values]
