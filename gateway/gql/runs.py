"""GraphQL types of the run graph: MLflow runs, their params, metrics and tags, workflows."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import strawberry

from gateway import repository
from gateway.errors import InvalidInputError
from gateway.gql.context import Context
from gateway.gql.cursors import decode_cursor
from gateway.gql.selection import needs_json
from gateway.gql.types import ArtifactConnection, check_page_size, connection_of
from gateway.mlflow_backend import WORKFLOW_RUNS_MAX
from gateway.run_graph import K, WorkflowCounts, entries_after, run_artifacts
from gateway.runs import RunView

DEFAULT_PAGE = 50
# A run's params, metrics and tags are paged by key: MLflow runs hold thousands of each, and
# each entry is up to 8,000 characters (gql/cost.py prices them one per entry a page can return).
DEFAULT_ENTRIES_PAGE = 100
MAX_ENTRIES_PAGE = 500
# One search returns at most this many of a workflow's runs (newest first).
WORKFLOW_RUNS_PAGE_MAX = WORKFLOW_RUNS_MAX


def entries_page(entries: Sequence[K], *, first: int, after: str | None) -> Sequence[K]:
    """A page of a run's params, metrics or tags; `first` checked (1 to MAX_ENTRIES_PAGE)."""
    if not 1 <= first <= MAX_ENTRIES_PAGE:
        raise InvalidInputError(f"first must be between 1 and {MAX_ENTRIES_PAGE}")
    return entries_after(entries, first=first, after=after)


_PAGED = (
    "Sorted by key: at most `first` (1-500) entries whose key sorts after `after` (the last "
    "key of the previous page); "
)


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
    url: str | None = strawberry.field(description="MLflow UI link (null without MLFLOW_UI_URL).")
    view: strawberry.Private[RunView]

    @strawberry.field(description=_PAGED + "paramCount says how many there are.")
    def params(self, first: int = DEFAULT_ENTRIES_PAGE, after: str | None = None) -> list[Param]:
        page = entries_page(self.view.record.params, first=first, after=after)
        return [Param(key=p.key, value=p.value) for p in page]

    @strawberry.field(description="How many params the run has.")
    def param_count(self) -> int:
        return len(self.view.record.params)

    @strawberry.field(
        description=_PAGED + "the latest value of each metric; metricCount says how many."
    )
    def metrics(self, first: int = DEFAULT_ENTRIES_PAGE, after: str | None = None) -> list[Metric]:
        return [
            Metric(key=m.key, value=m.value, step=m.step, timestamp=m.timestamp)
            for m in entries_page(self.view.record.metrics, first=first, after=after)
        ]

    @strawberry.field(description="How many metrics the run has.")
    def metric_count(self) -> int:
        return len(self.view.record.metrics)

    @strawberry.field(description=_PAGED + "user tags only; tagCount says how many.")
    def tags(self, first: int = DEFAULT_ENTRIES_PAGE, after: str | None = None) -> list[Tag]:
        page = entries_page(self.view.record.tags, first=first, after=after)
        return [Tag(key=t.key, value=t.value) for t in page]

    @strawberry.field(description="How many user tags the run has.")
    def tag_count(self) -> int:
        return len(self.view.record.tags)

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
        url=view.url,
        view=view,
    )


@strawberry.type(description="A workflow (DAG run): its MLflow runs, its artifacts, its lineage.")
class Workflow:
    id: str
    counts: strawberry.Private[WorkflowCounts]

    @strawberry.field(
        description="Runs tagged workflow_id = id, newest first: the first `first` (1-200) of "
        "the 200 newest."
    )
    async def runs(
        self, info: strawberry.Info[Context, None], first: int = WORKFLOW_RUNS_PAGE_MAX
    ) -> list[Run]:
        if not 1 <= first <= WORKFLOW_RUNS_PAGE_MAX:
            raise InvalidInputError(f"first must be between 1 and {WORKFLOW_RUNS_PAGE_MAX}")
        catalog = info.context.services.runs
        found = await catalog.workflow_runs(self.id)
        return [run_from_view(catalog.view(r)) for r in found[:first]]

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
