"""The `artifacts` table as it exists in production, shared by the gateway and dags_utils."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Dialect, Index, String, Text, TypeDecorator
from sqlalchemy.types import TypeEngine
from sqlmodel import Field, SQLModel

from gateway.strictjson import dumps_stored, loads_stored


class ArtifactType(enum.StrEnum):
    """The kinds of artifact the DAGs store."""

    CHART = "chart"
    LLM = "llm"
    SIGNAL = "signal"


def utcnow() -> datetime:
    """Current time, timezone-aware UTC."""
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes; a stored value that is not a time reads as None instead of failing.

    PostgreSQL stores `timestamptz`. On SQLite the column is text in SQLAlchemy's own format;
    other writers can put anything there, and one bad row must not fail a whole page.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String())
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        utc = aware.astimezone(UTC)
        if dialect.name == "sqlite":
            return utc.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
        return utc

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value)
            except ValueError:
                return None
        if not isinstance(value, datetime):
            return None
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class TolerantJSON(TypeDecorator[Any]):
    """JSON read under the strict mapping of `gateway.strictjson` on every database.

    A stored `NaN` reads as null, a lone surrogate as U+FFFD, a value nested too deep as an
    `UnreadableJSON` (the field says why; the row is still served). On SQLite (JSON kept as
    text) a value that is not JSON at all reads back as its raw text. Writes refuse non-finite
    numbers instead of storing `NaN`, which is not JSON. PostgreSQL decodes JSON in the driver;
    `db.make_engine` hands it the same reader.
    """

    impl = JSON
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(Text())
        return dialect.type_descriptor(JSON())

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if dialect.name == "sqlite":
            return None if value is None else dumps_stored(value)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if dialect.name != "sqlite" or not isinstance(value, str):
            return value
        try:
            return loads_stored(value)
        except ValueError:
            return value


class Artifact(SQLModel, table=True):
    """One stored artifact. Columns match production exactly; no migrations are run."""

    __tablename__ = "artifacts"
    # Indexes only matter when the gateway creates the table itself (demo, tests).
    __table_args__ = (Index("ix_artifacts_workflow_id", "workflow_id"),)

    id: int | None = Field(default=None, primary_key=True)
    name: str
    artifact_type: str
    symbol: str | None = None
    workflow_id: str | None = None
    run_id: str | None = None
    experiment_id: str | None = None
    # JSON columns are typed loosely: other writers put odd shapes in them.
    chart_data: Any | None = Field(default=None, sa_column=Column(TolerantJSON()))
    # `metadata` is reserved on declarative classes, so the attribute is `meta`.
    meta: Any | None = Field(default=None, sa_column=Column("metadata", TolerantJSON()))
    path: str | None = None
    # Never None when written through this model; None on read for unreadable stored values.
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UtcDateTime(), nullable=False)
    )
