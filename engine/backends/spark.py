"""QueryPlan → Spark DataFrame → exact bounded aggregates, equal to the Polars backend's.

Written with the DataFrame API rather than generated Spark SQL: the plan's
nodes map one to one onto Column expressions (as they do onto Polars ones),
names and literals never pass through SQL text (no quoting, no injection),
and the hash's higher-order functions are ordinary Python calls.

The work is the Polars backend's, step for step: read and cast the declared
columns, filter, derive, clamp to fixed point, then (member level) aggregate
per member and group, cap each member's counts and sums, keep at most
``max_groups`` groups per member by the shared seeded hash
(``engine.backends.draw``), and sum per group. Only that small per-group
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
from engine.backends.base import ExactAggregates
from engine.backends.shared import (
    COPY_WORD,
    GROUP_DRAW,
    ROWS,
    UNIT_WORD,
    VALUE_WORD,
    check_columns,
    counted_columns,
    fixed_name,
    key_type,
    part_name,
    quantile_parts,
    sample_draw_name,
    value_columns,
)
from engine.backends.spark_session import SparkSettings, get_session
from engine.errors import PolicyError
from engine.sensitivity import chooses_groups

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


def bounded_aggregates(session: SparkSession, plan: ir.QueryPlan, seed: int) -> DataFrame:
    """One row per observed group (ungrouped: exactly one row), one BIGINT (or sample array) column per part."""
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
    keys = [key.column for key in plan.group_keys]
    unit = plan.contribution.unit_column
    if unit is None:
        return _aggregate(frame, keys, _row_level_parts(plan))
    integer_unit = stored[unit].typeName() in _INTEGRAL
    frame = _with_sample_draws(frame, plan, integer_unit, seed)
    per_member = frame.groupBy(unit, *keys).agg(*_member_statistics(plan, columns))
    per_member = per_member.select(unit, *keys, *_member_level_parts(plan))
    if chooses_groups(plan):
        per_member = _with_group_draw(per_member, plan, integer_unit, seed)
        per_member = _keep_random_groups(per_member, unit, plan.contribution.max_groups)
    return _aggregate(per_member, keys, [_combine(plan, index) for index in range(len(plan.parts))])


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


# --- bounding ----------------------------------------------------------------------


def _row_level_parts(plan: ir.QueryPlan) -> list[Column]:
    """Each row is a unit: counts and sums over rows need no capping."""
    from pyspark.sql import functions as F

    expressions = []
    for index, part in enumerate(plan.parts):
        if part.kind is ir.PartKind.COUNT_ROWS:
            expression = F.count(F.lit(1))
        elif part.kind is ir.PartKind.COUNT_VALUES:
            assert part.counted_column is not None
            expression = F.count(F.col(part.counted_column))
        elif part.kind is ir.PartKind.QUANTILE:
            assert part.value is not None
            expression = F.collect_list(F.col(fixed_name(part.value.column)))
        else:
            assert part.value is not None
            fixed = F.col(fixed_name(part.value.column))
            if part.kind is ir.PartKind.CENTERED_SUM:
                fixed = fixed - part.value.center
            expression = F.coalesce(F.sum(fixed), F.lit(0).cast("long"))
        expressions.append(expression.alias(part_name(index)))
    return expressions


def _with_sample_draws(frame: DataFrame, plan: ir.QueryPlan, integer_unit: bool, seed: int) -> DataFrame:
    """Per row, for each quantile part, the draw ordering a member's values in a group (as the Polars backend)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from engine.backends.spark_exprs import with_draw, with_word

    quantiles = quantile_parts(plan)
    unit = plan.contribution.unit_column
    if not quantiles or unit is None:
        return frame
    keys = [key.column for key in plan.group_keys]
    frame = with_word(frame, unit, integer_unit, UNIT_WORD)
    for index, part in quantiles:
        assert part.value is not None
        fixed = fixed_name(part.value.column)
        copies = Window.partitionBy(unit, *keys, fixed).orderBy(fixed)
        frame = frame.withColumn(VALUE_WORD, F.col(fixed)).withColumn(COPY_WORD, F.row_number().over(copies) - 1)
        frame = with_draw(frame, seed, [UNIT_WORD, VALUE_WORD, COPY_WORD], sample_draw_name(index))
    return frame


def _member_statistics(plan: ir.QueryPlan, columns: dict[str, ir.FixedPoint]) -> list[Column]:
    """Per member and group: rows; non-NULL rows per column a part reads; sums; quantile samples (smallest draws)."""
    from pyspark.sql import functions as F

    statistics = [F.count(F.lit(1)).alias(ROWS)]
    cap = plan.contribution.max_rows_per_group
    for index, part in enumerate(plan.parts):
        if part.kind is ir.PartKind.QUANTILE:
            assert part.value is not None
            fixed = F.col(fixed_name(part.value.column))
            drawn = F.collect_list(
                F.when(fixed.isNotNull(), F.struct(F.col(sample_draw_name(index)).alias("d"), fixed.alias("v")))
            )
            sampled = F.slice(F.array_sort(drawn), 1, cap)
            statistics.append(F.transform(sampled, lambda pair: pair["v"]).alias(part_name(index)))
    statistics += [F.count(F.col(name)).alias(f"__n_{name}") for name in counted_columns(plan)]
    statistics += [F.sum(F.col(fixed_name(name))).alias(f"__s_{name}") for name in columns]
    return statistics


def _member_level_parts(plan: ir.QueryPlan) -> list[Column]:
    """Cap one member's contribution to one group at ``max_rows_per_group`` rows' worth (as the Polars backend)."""
    from pyspark.sql import functions as F

    cap = F.lit(plan.contribution.max_rows_per_group).cast("long")
    expressions = []
    for index, part in enumerate(plan.parts):
        if part.kind is ir.PartKind.QUANTILE:
            expression = F.col(part_name(index))
        elif part.kind is ir.PartKind.COUNT_ROWS:
            expression = F.least(F.col(ROWS), cap)
        elif part.kind is ir.PartKind.COUNT_UNITS:
            expression = F.lit(1).cast("long")
        elif part.kind is ir.PartKind.COUNT_VALUES:
            expression = F.least(F.col(f"__n_{part.counted_column}"), cap)
        else:
            assert part.value is not None
            column = part.value.column
            count, total = F.col(f"__n_{column}"), F.col(f"__s_{column}")
            center = part.value.center if part.kind is ir.PartKind.CENTERED_SUM else 0
            floored_mean = F.expr(f"(`__s_{column}` - pmod(`__s_{column}`, `__n_{column}`)) div `__n_{column}`")
            mean = floored_mean - F.lit(center).cast("long")
            expression = F.when((count > 0) & total.isNotNull(), mean * F.least(count, cap)).otherwise(F.lit(0))
            expression = expression.cast("long")
        expressions.append(expression.alias(part_name(index)))
    return expressions


def _with_group_draw(frame: DataFrame, plan: ir.QueryPlan, integer_unit: bool, seed: int) -> DataFrame:
    """Add the draw of each member's group: member, then per key a public key's position or a private key's text."""
    from pyspark.sql import functions as F

    from engine.backends.spark_exprs import with_draw, with_word

    unit = plan.contribution.unit_column
    assert unit is not None
    frame = with_word(frame, unit, integer_unit, UNIT_WORD)
    words = [UNIT_WORD]
    for index, key in enumerate(plan.group_keys):
        name = f"__word_key_{index}"
        if key.values is None:
            frame = with_word(frame, key.column, False, name)
        else:
            pairs = itertools.chain.from_iterable((F.lit(value), F.lit(at)) for at, value in enumerate(key.values))
            frame = frame.withColumn(name, F.element_at(F.create_map(*pairs), F.col(key.column)).cast("long"))
        words.append(name)
    return with_draw(frame, seed, words, GROUP_DRAW)


def _keep_random_groups(frame: DataFrame, unit: str, max_groups: int) -> DataFrame:
    """Keep at most ``max_groups`` groups per member: those with the smallest draws."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    ranked = frame.withColumn("__rank", F.row_number().over(Window.partitionBy(unit).orderBy(GROUP_DRAW)))
    return ranked.filter(F.col("__rank") <= max_groups)


def _combine(plan: ir.QueryPlan, index: int) -> Column:
    """Members' bounded contributions to a group: summed, or (quantiles) pooled."""
    from pyspark.sql import functions as F

    column = F.col(part_name(index))
    if plan.parts[index].kind is ir.PartKind.QUANTILE:
        return F.flatten(F.collect_list(column)).alias(part_name(index))
    return F.coalesce(F.sum(column), F.lit(0).cast("long")).alias(part_name(index))


def _aggregate(frame: DataFrame, keys: list[str], expressions: list[Column]) -> DataFrame:
    return frame.groupBy(*keys).agg(*expressions) if keys else frame.agg(*expressions)


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
