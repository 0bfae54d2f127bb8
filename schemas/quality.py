"""Data-quality checks, as a `quality` step lists them.

Each check has a `severity`: `error` fails the step, `warn` is reported. Checks that judge rows
(not_null, unique, accepted_values, range, referential, expression, custom_sql) send their
failing rows to a quarantine table; the others judge the whole source (row_count, freshness,
schema). Column names are identifiers and values are data: the executor quotes the one and
binds the other, so nothing written here is pasted into SQL text (`expression` and
`custom_sql` are SQL by design, like a `sql` step's).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

Scalar = str | int | float | bool | date | datetime
CHECK_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"


def _duration(value: Any) -> Any:
    from schemas.pipeline import parse_duration  # the one duration grammar of definitions

    return parse_duration(value)


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


Columns = Annotated[list[str], BeforeValidator(_one_or_many), Field(min_length=1, max_length=32)]


class _Check(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(None, pattern=CHECK_NAME_PATTERN)
    """Unique within the step; names its quarantine table. Default: type and column(s)."""
    severity: Literal["error", "warn"] = "error"
    description: str = ""

    ROW_LEVEL: ClassVar[bool] = False

    @property
    def check_name(self) -> str:
        if self.name:
            return self.name
        kind: str = getattr(self, "type", "check")
        columns = getattr(self, "columns", None)
        if not isinstance(columns, list):  # a schema check's columns are a mapping
            columns = [getattr(self, "column", None)]
        parts = [kind, *[c for c in columns if c]]
        return "_".join(parts)[:63]


class RowCountCheck(_Check):
    type: Literal["row_count"]
    min: int | None = Field(None, ge=0)
    max: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _bounds(self) -> RowCountCheck:
        if self.min is None and self.max is None:
            raise ValueError("row_count needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


class NotNullCheck(_Check):
    type: Literal["not_null"]
    column: str = Field(min_length=1)
    ROW_LEVEL: ClassVar[bool] = True


class UniqueCheck(_Check):
    type: Literal["unique"]
    columns: Columns = Field(alias="column")
    """One column or several (a compound key); rows with a NULL in the key are not compared."""
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    ROW_LEVEL: ClassVar[bool] = True


class AcceptedValuesCheck(_Check):
    type: Literal["accepted_values"]
    column: str = Field(min_length=1)
    values: list[Scalar] = Field(min_length=1, max_length=1000)
    ROW_LEVEL: ClassVar[bool] = True


class RangeCheck(_Check):
    type: Literal["range"]
    column: str = Field(min_length=1)
    min: Scalar | None = None
    max: Scalar | None = None
    """Inclusive bounds; NULLs are not judged (pair with not_null)."""
    ROW_LEVEL: ClassVar[bool] = True

    @model_validator(mode="after")
    def _bounds(self) -> RangeCheck:
        if self.min is None and self.max is None:
            raise ValueError("range needs min, max or both")
        return self


class FreshnessCheck(_Check):
    type: Literal["freshness"]
    column: str = Field(min_length=1)
    max_age: Annotated[timedelta, BeforeValidator(_duration)]
    """The newest value must be at most this old at the run's logical date."""


class ReferentialCheck(_Check):
    type: Literal["referential"]
    column: str = Field(min_length=1)
    to_table: str = Field(min_length=1)
    to_column: str = Field(min_length=1)
    ROW_LEVEL: ClassVar[bool] = True


class ExpressionCheck(_Check):
    type: Literal["expression"]
    expression: str = Field(min_length=1, max_length=10_000)
    """A SQL boolean over one row; rows where it is false or NULL fail."""
    ROW_LEVEL: ClassVar[bool] = True


class CustomSqlCheck(_Check):
    type: Literal["custom_sql"]
    sql: str = Field(min_length=1, max_length=100_000)
    """A query whose rows are failures (the source is not involved unless it names it)."""
    ROW_LEVEL: ClassVar[bool] = True


class SchemaCheck(_Check):
    type: Literal["schema"]
    columns: dict[str, str] = Field(min_length=1)
    """Expected column -> type (compared after normalizing with the engine's dialect)."""
    allow_extra: bool = True


CHECK_TYPES = (
    "row_count", "not_null", "unique", "accepted_values", "range", "freshness", "referential",
    "expression", "custom_sql", "schema",
)  # fmt: skip
Check = Annotated[
    RowCountCheck
    | NotNullCheck
    | UniqueCheck
    | AcceptedValuesCheck
    | RangeCheck
    | FreshnessCheck
    | ReferentialCheck
    | ExpressionCheck
    | CustomSqlCheck
    | SchemaCheck,
    Field(discriminator="type"),
]
