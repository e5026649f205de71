"""GraphQL types of the run graph: MLflow runs, their params, metrics and tags, workflows."""

from __future__ import annotations

from datetime import datetime

import strawberry

from gateway import repository
from gateway.gql.context import Context
from gateway.gql.cursors import decode_cursor
from gateway.gql.selection import needs_json
from gateway.gql.types import ArtifactConnection, check_page_size, connection_of
from gateway.run_graph import WorkflowCounts, run_artifacts
from gateway.runs import RunView

DEFAULT_PAGE = 50


@strawberry.type(description="An MLflow run parameter.")
class Param:
    key: str
    value: str


@strawberry.type(description="An MLflow metric's latest value (null when not finite).")
class Metric:
    key: str
    value: float | None
    step: int | None
    timestamp: datetime | None


@strawberry.type(description="A user tag of an MLflow run (MLflow's own mlflow.* tags left out).")
class Tag:
    key: str
    value: str


@strawberry.type(description="The MLflow run that produced artifacts, as MLflow holds it.")
class Run:
    id: str
    name: str | None
    status: str | None = strawberry.field(
        description="MLflow's: RUNNING, SCHEDULED, FINISHED, FAILED, KILLED."
    )
    start_time: datetime | None
    end_time: datetime | None
    experiment_id: str
    experiment_name: str | None
    params: list[Param] = strawberry.field(description="Sorted by key.")
    metrics: list[Metric] = strawberry.field(description="Latest value per key, sorted by key.")
    tags: list[Tag] = strawberry.field(description="User tags, sorted by key.")
    url: str | None = strawberry.field(description="MLflow UI link (null without MLFLOW_UI_URL).")
    view: strawberry.Private[RunView]

    @strawberry.field(
        description="Artifacts whose lineage is this run (stored, or legacy rows resolving to "
        "it), in id order."
    )
    async def artifacts(
        self,
        info: strawberry.Info[Context, None],
        first: int = DEFAULT_PAGE,
        after: str | None = None,
    ) -> ArtifactConnection:
        check_page_size(first)
        page, _lineages = await run_artifacts(
            info.context.services,
            self.view.record,
            first=first,
            after_id=decode_cursor(after) if after is not None else None,
        )
        return connection_of(page)


def run_from_view(view: RunView) -> Run:
    """The GraphQL run of a run view."""
    run = view.record
    return Run(
        id=run.run_id,
        name=run.name,
        status=run.status,
        start_time=run.start_time,
        end_time=run.end_time,
        experiment_id=run.experiment_id,
        experiment_name=view.experiment_name,
        params=[Param(key=p.key, value=p.value) for p in run.params],
        metrics=[
            Metric(key=m.key, value=m.value, step=m.step, timestamp=m.timestamp)
            for m in run.metrics
        ],
        tags=[Tag(key=t.key, value=t.value) for t in run.tags],
        url=view.url,
        view=view,
    )


@strawberry.type(description="A workflow (DAG run): its MLflow runs, its artifacts, its lineage.")
class Workflow:
    id: str
    counts: strawberry.Private[WorkflowCounts]

    @strawberry.field(description="Every run tagged workflow_id = id, newest first.")
    async def runs(self, info: strawberry.Info[Context, None]) -> list[Run]:
        catalog = info.context.services.runs
        return [run_from_view(catalog.view(r)) for r in await catalog.workflow_runs(self.id)]

    @strawberry.field(description="The workflow's artifacts in id order.")
    async def artifacts(
        self,
        info: strawberry.Info[Context, None],
        first: int = DEFAULT_PAGE,
        after: str | None = None,
    ) -> ArtifactConnection:
        check_page_size(first)
        page = await repository.run_in_session(
            info.context.services.engine,
            repository.list_artifacts,
            first=first,
            after_id=decode_cursor(after) if after is not None else None,
            workflow_id=self.id,
            with_json=needs_json(info.selected_fields),
        )
        return connection_of(page)

    @strawberry.field(description="Rows of this workflow in the table.")
    def artifact_count(self) -> int:
        return self.counts.artifacts

    @strawberry.field(description="Rows of this workflow with a null run_id in the table.")
    def missing_lineage(self) -> int:
        return self.counts.missing_lineage

    @strawberry.field(description="1 - missingLineage / artifactCount (1.0 when empty).")
    def lineage_completeness(self) -> float:
        return self.counts.completeness
