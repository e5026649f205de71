"""GraphQL object types, built from table rows by small functions (no SQL here)."""

from __future__ import annotations

import dataclasses
import enum
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import strawberry
from strawberry.scalars import JSON

from gateway import models
from gateway.errors import InvalidInputError, UnreadableValueError
from gateway.gql.context import Context
from gateway.gql.cursors import encode_cursor
from gateway.lineage import LineageSource, LineageStatus, lineage_view
from gateway.minio_urls import ObjectLocation, UrlRefusal, parse_minio_url
from gateway.repository import Listed, Page
from gateway.rows import (
    created_at_of,
    effective_workflow_id,
    image_url_of,
    json_field,
    meta_dict,
    minio_url_of,
    renderer_version_of,
)
from gateway.settings import Settings
from gateway.snapshots import SnapshotSummary

if TYPE_CHECKING:
    from gateway.gql.runs import Run

MAX_PAGE = 100


@strawberry.enum(description="What an artifact holds.")
class ArtifactKind(enum.Enum):
    CHART = "chart"
    LLM = "llm"
    SIGNAL = "signal"


def kind_of(row: models.Artifact) -> ArtifactKind | None:
    """The row's kind, or None when another writer stored a type the gateway does not know."""
    try:
        return ArtifactKind(row.artifact_type)
    except ValueError:
        return None


LineageStatusEnum = strawberry.enum(
    LineageStatus, name="LineageStatus", description="How the lineage was obtained, or why not."
)
LineageSourceEnum = strawberry.enum(
    LineageSource, name="LineageSource", description="Where the MLflow run was found."
)


@strawberry.type(description="Which MLflow run produced an artifact, and how that is known.")
class Lineage:
    status: LineageStatusEnum  # type: ignore[valid-type]
    source: LineageSourceEnum | None  # type: ignore[valid-type]
    reason: str | None = strawberry.field(description="Why ids are null, when they are.")
    run_id: str | None
    experiment_id: str | None
    run_url: str | None = strawberry.field(description="MLflow UI link to the run.")
    experiment_url: str | None = strawberry.field(description="MLflow UI link to the experiment.")


@strawberry.type(description="The first and last bar of a stored market-data snapshot (UTC).")
class BarRange:
    first: datetime
    last: datetime


@strawberry.type(description="What QA needs to check a chart against the data it was drawn from.")
class ChartInfo:
    minio_url: str | None = strawberry.field(
        description="chart_data.minio_url (else metadata.minio_url) exactly as stored."
    )
    bucket: str | None = strawberry.field(description="Bucket the image route reads.")
    object_key: str | None = strawberry.field(
        description="Object key the image route reads; null when the URL is refused."
    )
    url_problem: str | None = strawberry.field(
        description="Why the stored URL is not fetched, when it is not."
    )
    renderer_version: str | None = strawberry.field(
        description="chartkit version recorded when the chart was published; null for legacy rows."
    )
    spec: JSON | None = strawberry.field(description="The chartkit spec recorded at publish.")
    row: strawberry.Private[models.Artifact]
    listed: strawberry.Private[Listed | None]

    async def _summary(self, info: strawberry.Info[Context, None]) -> SnapshotSummary | None:
        return await info.context.snapshot_summary(self.row, self.listed)

    @strawberry.field(description="Bars in metadata.market_data_snapshot; null when unreadable.")
    async def snapshot_bars(self, info: strawberry.Info[Context, None]) -> int | None:
        summary = await self._summary(info)
        return summary.bars if summary is not None else None

    @strawberry.field(description="First and last bar of the snapshot; null when unreadable.")
    async def snapshot_range(self, info: strawberry.Info[Context, None]) -> BarRange | None:
        summary = await self._summary(info)
        if summary is None or summary.first is None or summary.last is None:
            return None
        return BarRange(first=summary.first, last=summary.last)


def chart_info(row: models.Artifact, settings: Settings, listed: Listed | None) -> ChartInfo:
    """The chart fields of a chart row (no I/O; the snapshot is parsed only when asked)."""
    url = minio_url_of(row)
    location = parse_minio_url(url, settings) if url is not None else None
    meta = meta_dict(row)
    recorded: Any = meta.get("chart_spec")
    spec: Any = recorded if isinstance(recorded, dict) else None
    return ChartInfo(
        minio_url=url if isinstance(url, str) else None,
        bucket=location.bucket if isinstance(location, ObjectLocation) else None,
        object_key=location.key if isinstance(location, ObjectLocation) else None,
        url_problem=location.reason if isinstance(location, UrlRefusal) else None,
        renderer_version=renderer_version_of(row),
        spec=spec,
        row=row,
        listed=listed,
    )


@strawberry.type(description="A stored chart, LLM analysis or trading signal.")
class Artifact:
    id: int
    name: str
    type: ArtifactKind | None = strawberry.field(
        description="Null when the row holds a type this gateway does not know."
    )
    symbol: str | None
    workflow_id: str | None = strawberry.field(
        description="The workflow (DAG run) id: column, else metadata workflow_id or dag_run_id."
    )
    created_at: datetime | None = strawberry.field(
        description="UTC; null only when another writer stored a value that is not a time."
    )
    image_url: str | None = strawberry.field(
        description="Gateway URL of the chart PNG; null for non-chart artifacts."
    )
    row: strawberry.Private[models.Artifact]
    # Set for rows read by a list (without their snapshot); None for a row read whole.
    listed: strawberry.Private[Listed | None]

    @strawberry.field(
        description="chart_data as stored; null with an error on this field when unreadable."
    )
    def chart_data(self) -> JSON | None:
        return _readable(self.row.chart_data, "chart_data")

    @strawberry.field(
        description="metadata as stored; null with an error on this field when unreadable."
    )
    async def metadata(self, info: strawberry.Info[Context, None]) -> JSON | None:
        return _readable(await info.context.whole_metadata(self.row, self.listed), "metadata")

    @strawberry.field(description="MLflow run id: stored, else resolved from MLflow (null if not).")
    async def run_id(self, info: strawberry.Info[Context, None]) -> str | None:
        return (await info.context.lineage.of(self.row)).run_id

    @strawberry.field(description="MLflow experiment id: stored, else resolved from MLflow.")
    async def experiment_id(self, info: strawberry.Info[Context, None]) -> str | None:
        return (await info.context.lineage.of(self.row)).experiment_id

    @strawberry.field(description="Stored object and snapshot of a chart; null for other kinds.")
    def chart(self, info: strawberry.Info[Context, None]) -> ChartInfo | None:
        if self.row.artifact_type != models.ArtifactType.CHART:
            return None
        return chart_info(self.row, info.context.services.settings, self.listed)

    @strawberry.field(description="How runId/experimentId were obtained; never fails the read.")
    async def lineage(self, info: strawberry.Info[Context, None]) -> Lineage:
        view = lineage_view(
            await info.context.lineage.of(self.row),
            ui_url=info.context.services.settings.mlflow_ui_base,
        )
        return Lineage(**dataclasses.asdict(view))  # the same fields, by construction

    @strawberry.field(
        description="The resolved MLflow run in full (stored or hydrated); null otherwise. An "
        "error on this field when MLflow cannot be asked."
    )
    async def run(
        self, info: strawberry.Info[Context, None]
    ) -> Annotated[Run, strawberry.lazy("gateway.gql.runs")] | None:
        from gateway.gql.runs import run_from_view  # the two modules refer to each other

        view = await info.context.runs.of_lineage(await info.context.lineage.of(self.row))
        return run_from_view(view) if view is not None else None


def _readable(value: Any, column: str) -> JSON | None:
    readable, problem = json_field(value)
    if problem is not None:
        raise UnreadableValueError(f"stored {column} cannot be read: {problem}")
    result: JSON | None = readable
    return result


def artifact_from_row(row: models.Artifact, listed: Listed | None = None) -> Artifact:
    """Build the GraphQL artifact from a table row (`listed` when a list read it)."""
    assert row.id is not None
    return Artifact(
        id=row.id,
        name=row.name,
        type=kind_of(row),
        symbol=row.symbol,
        workflow_id=effective_workflow_id(row),
        created_at=created_at_of(row),
        image_url=image_url_of(row),
        row=row,
        listed=listed,
    )


@strawberry.type
class ArtifactEdge:
    cursor: str
    node: Artifact


@strawberry.type
class PageInfo:
    has_next_page: bool
    end_cursor: str | None


@strawberry.type(description="A page of artifacts in id order (Relay connection).")
class ArtifactConnection:
    edges: list[ArtifactEdge]
    page_info: PageInfo


def check_page_size(first: int) -> None:
    """A connection's `first`: 1 to MAX_PAGE."""
    if not 1 <= first <= MAX_PAGE:
        raise InvalidInputError(f"first must be between 1 and {MAX_PAGE}")


def connection_of(page: Page) -> ArtifactConnection:
    """The Relay connection of one page of rows."""
    edges = [
        ArtifactEdge(
            cursor=encode_cursor(row.id), node=artifact_from_row(row, page.listing_of(row))
        )
        for row in page.items
        if row.id is not None
    ]
    # A page that ended at its scan budget ends at the last row it looked at, which may be
    # past its last edge (or the page may have none): the next page starts there.
    end = page.scanned_to if page.has_next and page.scanned_to is not None else None
    end_cursor = encode_cursor(end) if end is not None else (edges[-1].cursor if edges else None)
    return ArtifactConnection(
        edges=edges, page_info=PageInfo(has_next_page=page.has_next, end_cursor=end_cursor)
    )
