"""Dataset policies: the cooperative's rules for one pool, loaded from TOML.

A policy is a strict model: unknown keys are load errors (a misspelt privacy
setting must never fall back to a silent default), and every privacy-relevant
field is required. Errors name the file, the key and the problem.
"""

from __future__ import annotations

import datetime as dt
import glob
import math
import re
import tomllib
from collections.abc import Iterable
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError, field_validator, model_validator

from engine.dates import check_text_format, parse_date
from engine.errors import PolicyError
from engine.lookup import PublicTable, load_public_table

ROW_UNIT = "row"
AUTO = "auto"
"""A bound the engine chooses per query, by DP (engine/bounds_choice.py)."""
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ColumnType(StrEnum):
    ID = "id"
    CATEGORY = "category"
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    DATE = "date"
    DATETIME = "datetime"

    @property
    def is_numeric(self) -> bool:
        return self in (ColumnType.INT, ColumnType.FLOAT)

    @property
    def is_temporal(self) -> bool:
        return self in (ColumnType.DATE, ColumnType.DATETIME)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnPolicy(_Strict):
    """One column of the pool: its type, value bounds or public keys."""

    type: ColumnType
    bounds: tuple[float, float] | tuple[dt.date, dt.date] | Literal["auto"] | None = None
    """Numbers for int and float columns; ISO dates (``"2020-01-01"``) for date and datetime columns;
    ``"auto"`` (with ``range``) for a numeric column whose clamp bounds are chosen per query by DP."""
    range: tuple[float, float] | None = None
    """With ``bounds = "auto"``: the hard outer range ``[low, high]`` (low ≥ 0) the chosen bounds stay inside."""
    values: tuple[str, ...] | None = None
    format: str | None = None
    """How a date or datetime column's text is written (``"%d/%m/%Y"``), where it is not ISO 8601 (docs/sources.md)."""

    @field_validator("bounds", mode="before")
    @classmethod
    def _dates_as_written(cls, bounds: object) -> object:
        """Dates are ISO text or TOML dates; text is never parsed as a number, nor a number as a date."""
        if isinstance(bounds, list | tuple) and all(isinstance(bound, str) for bound in bounds):
            return tuple(parse_date(bound) for bound in bounds)
        return bounds

    @model_validator(mode="after")
    def _check(self) -> ColumnPolicy:
        if self.bounds == AUTO or self.range is not None:
            self._check_auto()
            return self
        low, high = self._pair()
        if self.type.is_temporal:
            if not (isinstance(low, dt.date) and isinstance(high, dt.date)):
                raise ValueError(f'a {self.type} column needs bounds = ["YYYY-MM-DD", "YYYY-MM-DD"] (its date range)')
            if low > high:
                raise ValueError(f"bounds are inverted: {low} is after {high}")
        elif self.type.is_numeric:
            if not (isinstance(low, float) and isinstance(high, float)):
                raise ValueError(f"a {self.type} column needs bounds = [low, high] (numbers)")
            if not (math.isfinite(low) and math.isfinite(high)):
                raise ValueError("bounds must be finite numbers")
            if low >= high:
                raise ValueError(f"bounds are inverted or empty: low {low} must be below high {high}")
            if self.type is ColumnType.INT and not (low.is_integer() and high.is_integer()):
                raise ValueError("an int column needs integer bounds")
        elif self.bounds is not None:
            raise ValueError(f"a {self.type} column takes no bounds")
        if self.format is not None:
            if not self.type.is_temporal:
                raise ValueError(f"a {self.type} column takes no format (only date and datetime columns do)")
            check_text_format(self.format, with_time=self.type is ColumnType.DATETIME)
        if self.values is not None:
            if self.type is not ColumnType.CATEGORY:
                raise ValueError(f"a {self.type} column takes no values (only category columns list public keys)")
            if not self.values:
                raise ValueError("values must list at least one key, or be left out for private keys")
            if len(set(self.values)) != len(self.values):
                raise ValueError("values must not repeat")
        return self

    def _pair(self) -> tuple[object, object]:
        """The written bounds as a pair ((None, None) when absent or ``"auto"``)."""
        return self.bounds if isinstance(self.bounds, tuple) else (None, None)

    def _check_auto(self) -> None:
        """``bounds = "auto"`` goes with a numeric type and a finite, non-negative ``range``."""
        if self.bounds != AUTO or self.range is None:
            raise ValueError('bounds = "auto" and range = [low, high] go together')
        if not self.type.is_numeric:
            raise ValueError(f'a {self.type} column takes no bounds = "auto" (only int and float columns do)')
        low, high = self.range
        if not (math.isfinite(low) and math.isfinite(high)) or not 0 <= low < high:
            raise ValueError("range must be finite numbers with 0 <= low < high (auto chooses the upper bound)")
        if self.type is ColumnType.INT and not (low.is_integer() and high.is_integer()):
            raise ValueError("an int column needs an integer range")

    @property
    def auto(self) -> bool:
        """Whether the column's upper clamp bound is chosen per query (``bounds = "auto"``)."""
        return self.bounds == AUTO

    @property
    def number_bounds(self) -> tuple[float, float]:
        """A numeric column's bounds (validation guarantees them); for ``"auto"``, its whole range."""
        if self.range is not None:
            return self.range
        low, high = self._pair()
        assert isinstance(low, float) and isinstance(high, float), "only int and float columns have number bounds"
        return low, high

    @property
    def date_range(self) -> tuple[dt.date, dt.date]:
        """A date or datetime column's declared range (validation guarantees it)."""
        low, high = self._pair()
        assert isinstance(low, dt.date) and isinstance(high, dt.date), "only date columns have a date range"
        return low, high

    @property
    def public_keys(self) -> tuple[str | bool, ...] | None:
        """The group keys anyone may see, or None when the keys are private."""
        if self.type is ColumnType.BOOL:
            return (False, True)
        return self.values


BACKEND_NAMES = ("polars", "spark")
"""The engines a dataset may run on (``engine.backends.BACKENDS`` registers one for each)."""
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
"""A source such as ``s3a://bucket/pool/`` or ``hdfs://…``: read by the cluster, not resolved here."""


class DatasetSection(_Strict):
    name: str
    source: str
    description: str = ""
    backend: str = "polars"
    """Which engine computes the bounded aggregates: "polars" (this machine) or "spark" (a cluster)."""

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, backend: str) -> str:
        if backend not in BACKEND_NAMES:
            raise ValueError(f"must be one of {', '.join(BACKEND_NAMES)}")
        return backend

    @property
    def remote(self) -> bool:
        """Whether the source is a URI for the cluster to read (only the Spark backend reads those)."""
        return bool(_URI.match(self.source)) and not self.source.lower().startswith("file://")

    @field_validator("name")
    @classmethod
    def _identifier(cls, name: str) -> str:
        if not _NAME.match(name):
            raise ValueError("must be a plain SQL identifier (letters, digits, underscores)")
        return name


def _bound(value: object) -> int | Literal["auto"]:
    """A positive whole number or ``"auto"``, as written (a TOML float, bool or other text is refused)."""
    if value == AUTO:
        return "auto"
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError('must be a positive whole number, or "auto"')
    return value


Bound = Annotated[int | Literal["auto"], PlainValidator(_bound)]
"""A contribution bound: a number of rows or groups, or ``"auto"``."""


class PrivacySection(_Strict):
    """Who a privacy unit is, and how much one unit may add to a query.

    A member-level unit bounds each member per group (``max_groups`` groups,
    ``max_rows_per_group`` rows' worth in each), or in total
    (``max_rows_per_member`` rows over all groups), or allows both, and the
    planner picks per query whichever adds less noise (docs/sql.md).
    """

    unit: str
    max_groups: Bound | None = None
    max_rows_per_group: Bound | None = None
    max_rows_per_member: Bound | None = None
    """Each member's rows across all groups, in total (the total-contribution mode)."""
    auto_limit: int = Field(default=1024, gt=0, le=2**20)
    """The largest value an ``"auto"`` bound may take."""
    auto_share: float = Field(default=0.1, gt=0, le=0.5, allow_inf_nan=False)
    """The share of each query's loss (ε, or ρ under zCDP) spent choosing its ``"auto"`` bounds."""

    @property
    def has_auto(self) -> bool:
        """Whether any contribution bound is chosen per query."""
        return AUTO in (self.max_groups, self.max_rows_per_group, self.max_rows_per_member)

    @property
    def per_group_bounds(self) -> bool:
        """Whether the per-group bounds are given (``max_groups`` and ``max_rows_per_group``)."""
        return self.max_groups is not None and self.max_rows_per_group is not None


class BudgetSection(_Strict):
    epsilon: float = Field(gt=0, allow_inf_nan=False)
    delta: float = Field(ge=0, lt=1, allow_inf_nan=False)
    accounting: Literal["pure", "zcdp"]
    max_epsilon_per_query: float = Field(gt=0, allow_inf_nan=False)
    max_delta_per_query: float | None = Field(default=None, ge=0, lt=1, allow_inf_nan=False)
    """Default: a tenth of ``delta``, so that no one query (or one buyer) can take the δ every other buyer needs."""

    @model_validator(mode="after")
    def _per_query_within_total(self) -> BudgetSection:
        if self.max_epsilon_per_query > self.epsilon:
            raise ValueError("max_epsilon_per_query must not exceed the dataset's epsilon")
        if self.max_delta_per_query is not None and self.max_delta_per_query > self.delta:
            raise ValueError("max_delta_per_query must not exceed the dataset's delta")
        if self.accounting == "zcdp" and self.delta == 0:
            raise ValueError('accounting = "zcdp" needs delta > 0 (its cost is reported as (epsilon, delta))')
        return self

    @property
    def delta_per_query(self) -> Decimal:
        """The most δ one query may spend, exactly as written (a tenth of ``delta`` unless declared)."""
        if self.max_delta_per_query is not None:
            return Decimal(repr(self.max_delta_per_query))
        return Decimal(repr(self.delta)).scaleb(-1)


class BuyerPolicy(_Strict):
    epsilon: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    delta: float | None = Field(default=None, ge=0, lt=1, allow_inf_nan=False)
    """The buyer's δ quota on this dataset (default: none beyond the dataset's δ)."""
    purpose: str | None = None


class PurposePolicy(_Strict):
    consent_column: str
    """A bool column: rows where it is not true are dropped for buyers with this purpose."""


class PublicTableSection(_Strict):
    """A public lookup table a query may join: a file of non-member data with a unique key."""

    source: str
    """A .csv or .parquet file, relative to the policy file."""
    key: str
    description: str = ""


class ReleasesSection(_Strict):
    shared: bool = False
    """Whether any buyer (under the same consent filter) may get another buyer's stored release of the same query."""


class Policy(_Strict):
    """A validated policy; ``source_paths`` are the pool's files, resolved."""

    dataset: DatasetSection
    privacy: PrivacySection
    budget: BudgetSection
    columns: dict[str, ColumnPolicy]
    buyers: dict[str, BuyerPolicy] = {}
    purposes: dict[str, PurposePolicy] = {}
    releases: ReleasesSection = ReleasesSection()
    public_tables: dict[str, PublicTableSection] = {}
    source_paths: tuple[Path, ...] = ()
    source_uri: str | None = None
    """The source as given, when it is a URI for the cluster (``source_paths`` is then empty)."""
    lookups: dict[str, PublicTable] = {}
    """The public tables, loaded (by lower-case name)."""

    @model_validator(mode="after")
    def _check(self) -> Policy:
        for name in self.columns:
            if not _NAME.match(name):
                raise ValueError(f"column name {name!r} must be a plain SQL identifier")
        lowered = [name.lower() for name in self.columns]
        if len(set(lowered)) != len(lowered):
            raise ValueError("column names must differ in more than letter case (SQL names are case-insensitive)")
        unit = self.privacy.unit
        privacy = self.privacy
        if unit == ROW_UNIT:
            if (privacy.max_groups, privacy.max_rows_per_group, privacy.max_rows_per_member) != (None, None, None):
                raise ValueError(
                    'privacy.unit = "row" takes no max_groups / max_rows_per_group / max_rows_per_member'
                    " (each row is its own unit)"
                )
        else:
            if unit not in self.columns:
                raise ValueError(
                    f'privacy.unit {unit!r} is not a declared column (declare it with type = "id", or use "row")'
                )
            if self.columns[unit].type is not ColumnType.ID:
                raise ValueError(f'privacy.unit column {unit!r} must have type = "id"')
            if (privacy.max_groups is None) != (privacy.max_rows_per_group is None):
                raise ValueError("privacy.max_groups and privacy.max_rows_per_group go together: give both or neither")
            if not privacy.per_group_bounds and privacy.max_rows_per_member is None:
                raise ValueError(
                    "a member-level privacy unit needs privacy.max_rows_per_member, or privacy.max_groups and"
                    ' privacy.max_rows_per_group, or all three (numbers, or "auto")'
                )
        for table in self.public_tables:
            if not _NAME.match(table) or table.lower() == self.dataset.name.lower():
                raise ValueError(f"public_tables.{table}: the name must be an identifier other than the dataset's")
        for purpose, rule in self.purposes.items():
            column = self.columns.get(rule.consent_column)
            if column is None or column.type is not ColumnType.BOOL:
                raise ValueError(
                    f"purposes.{purpose}.consent_column {rule.consent_column!r} must be a declared bool column"
                )
        return self

    def consent_column(self, purpose: str | None) -> str | None:
        """The column whose true rows a buyer with ``purpose`` may see, if the policy ties one to it."""
        rules = {name.lower(): rule for name, rule in self.purposes.items()}
        rule = rules.get(purpose.lower()) if purpose else None
        return rule.consent_column if rule else None

    def text_formats(self, names: Iterable[str]) -> tuple[tuple[str, str], ...]:
        """The declared text ``format`` of each named column that has one, by name."""
        return tuple((name, self.columns[name].format or "") for name in sorted(names) if self.columns[name].format)

    @property
    def name(self) -> str:
        return self.dataset.name

    @property
    def unit_column(self) -> str | None:
        """The privacy unit's column, or None for row-level privacy."""
        return None if self.privacy.unit == ROW_UNIT else self.privacy.unit


def load_policy(path: Path) -> Policy:
    """Read and validate one policy file; raise :class:`PolicyError` naming file and key."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise PolicyError(f"{path}: cannot read the policy file ({error.__class__.__name__})") from error
    except tomllib.TOMLDecodeError as error:
        raise PolicyError(f"{path}: not valid TOML: {error}") from error
    try:
        policy = Policy.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in issue['loc']) or '(top level)'}: {issue['msg']}"
            for issue in error.errors()
        )
        raise PolicyError(f"{path}: {problems}") from None
    sources: tuple[Path, ...] = ()
    if not policy.dataset.remote:
        sources = _resolve_source(path, policy.dataset.source)
    elif policy.dataset.backend != "spark":
        raise PolicyError(f'{path}: dataset.source: a URI source (s3a://, hdfs://, …) needs backend = "spark"')
    lookups = {}
    for name, table in policy.public_tables.items():
        source = Path(table.source) if Path(table.source).is_absolute() else path.parent / table.source
        try:
            lookups[name.lower()] = load_public_table(name, source.resolve(), table.key)
        except ValueError as error:
            raise PolicyError(f"{path}: public_tables.{name}: {error}") from None
    uri = policy.dataset.source if policy.dataset.remote else None
    return policy.model_copy(update={"source_paths": sources, "source_uri": uri, "lookups": lookups})


def _resolve_source(policy_path: Path, source: str) -> tuple[Path, ...]:
    pattern = Path(source) if Path(source).is_absolute() else policy_path.parent / source
    matches = sorted(Path(match) for match in glob.glob(str(pattern)))
    files = tuple(match.resolve() for match in matches if match.is_file())
    if not files:
        raise PolicyError(f"{policy_path}: dataset.source: {source!r} matches no file")
    suffixes = {file.suffix.lower() for file in files}
    if not suffixes <= {".parquet", ".csv"} or len(suffixes) != 1:
        raise PolicyError(f"{policy_path}: dataset.source: files must all be .parquet or all be .csv")
    return files


def load_policies(directory: Path) -> dict[str, Policy]:
    """Every ``*.toml`` in ``directory``, keyed by dataset name."""
    if not directory.is_dir():
        raise PolicyError(f"{directory}: policies directory not found")
    policies: dict[str, Policy] = {}
    for path in sorted(directory.glob("*.toml")):
        policy = load_policy(path)
        if policy.name in policies:
            raise PolicyError(f"{path}: dataset.name: {policy.name!r} is declared by another policy file too")
        policies[policy.name] = policy
    return policies
