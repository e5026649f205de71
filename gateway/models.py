"""The `artifacts` table as it exists in production, shared by the gateway and dags_utils."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Index
from sqlmodel import Field, SQLModel


class ArtifactType(enum.StrEnum):
    """The kinds of artifact the DAGs store."""

    CHART = "chart"
    LLM = "llm"
    SIGNAL = "signal"


def utcnow() -> datetime:
    """Current time, timezone-aware UTC."""
    return datetime.now(UTC)


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
    chart_data: Any | None = Field(default=None, sa_column=Column(JSON))
    # `metadata` is reserved on declarative classes, so the attribute is `meta`.
    meta: Any | None = Field(default=None, sa_column=Column("metadata", JSON))
    path: str | None = None
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )
