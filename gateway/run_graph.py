"""Request-level operations on the run graph: an artifact's run, a run's artifacts, a workflow.

`RequestRuns` batches one request's run details (every run asked for in the same tick is one
call into the catalog, so at most one batched search); `run_artifacts` walks the rows whose
lineage is a run; `workflow_counts` and `refresh_lineage_gauge` count a workflow's rows.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import structlog
from sqlmodel import Session
from strawberry.dataloader import DataLoader

from gateway import repository
from gateway.errors import InvalidInputError, MlflowUnreachableError
from gateway.lineage import Lineage, LineageStatus, Unavailable
from gateway.mlflow_backend import RunRef
from gateway.mlflow_runs import RunRecord, is_mlflow_id
from gateway.models import Artifact
from gateway.repository import Page
from gateway.runs import RunCatalog, RunView
from gateway.services import Services

log = structlog.get_logger("gateway")
# Workflow ids are any text a DAG wrote; longer ones are not looked up.
MAX_WORKFLOW_ID_CHARS = 256
# A page of a run's artifacts looks at up to this many candidates per row it can return: rows
# that merely look like the run's (its id in their path, its workflow) cost the page that much.
SCAN_FACTOR = 4
# The gauge's label other workflows are summed under.
OTHER_WORKFLOWS = "other"


def check_run_id(run_id: str) -> str:
    """A run id argument as MLflow writes them; InvalidInputError otherwise."""
    if not is_mlflow_id(run_id):
        raise InvalidInputError("run id must be 1-64 letters, digits, '-' or '_'")
    return run_id


def check_workflow_id(workflow_id: str) -> str:
    """A workflow id argument: non-blank text of bounded length."""
    if not workflow_id.strip() or len(workflow_id) > MAX_WORKFLOW_ID_CHARS:
        raise InvalidInputError(f"workflow id must be 1-{MAX_WORKFLOW_ID_CHARS} characters")
    return workflow_id


class Keyed(Protocol):
    """A run's param, metric or tag: entries sorted by a unique key."""

    @property
    def key(self) -> str: ...


K = TypeVar("K", bound=Keyed)


def entries_after(entries: Sequence[K], *, first: int, after: str | None) -> Sequence[K]:
    """Up to `first` of a run's entries (sorted by key, keys unique) whose key sorts after
    `after`: a page of params, metrics or tags, the key its cursor."""
    start = 0 if after is None else bisect.bisect_right([e.key for e in entries], after)
    return entries[start : start + max(first, 0)]


class RequestRuns:
    """One request's run details: runs asked for together are fetched together."""

    def __init__(self, catalog: RunCatalog) -> None:
        self.catalog = catalog
        self._loader: DataLoader[str, RunRecord | None] = DataLoader(load_fn=self._load)

    async def _load(self, run_ids: Sequence[str]) -> list[RunRecord | Exception | None]:
        found = await self.catalog.details(run_ids)
        return [
            MlflowUnreachableError(run.reason) if isinstance(run, Unavailable) else run
            for run in found
        ]

    async def of_lineage(self, lineage: Lineage) -> RunView | None:
        """The run a resolved lineage names, in full; None when unresolved or unknown to MLflow;
        MlflowUnreachableError when MLflow could not be asked."""
        if lineage.status is LineageStatus.UNAVAILABLE:
            raise MlflowUnreachableError(lineage.reason or "MLflow unavailable")
        if lineage.run_id is None:
            return None
        run = await self._loader.load(lineage.run_id)
        return self.catalog.view(run) if run is not None else None

    async def by_id(self, run_id: str) -> RunView | None:
        """A run by id (checked), None when MLflow has none."""
        run = await self._loader.load(check_run_id(run_id))
        return self.catalog.view(run) if run is not None else None


async def run_artifacts(
    services: Services, run: RunRecord, *, first: int, after_id: int | None
) -> tuple[Page, list[Lineage]]:
    """Artifacts whose lineage is this run, in id order after `after_id` (rows read as lists
    read them), and each row's lineage (already resolved: callers need not resolve it again).

    Candidates come from the table, lineage decides: a workflow's legacy rows belong to its
    latest run only (so they are candidates of that run alone), and a row storing the run id
    always belongs to it. The work of a page is bounded by the page: it looks at no more than
    `scan_budget(first)` candidates, and when those hold fewer than `first` matches, the page
    ends early, with `has_next` and a cursor at the last row looked at (`Page.scanned_to`).
    """
    workflow_id = await _own_workflow(services, run)
    budget = scan_budget(first)
    matched: list[tuple[Artifact, repository.Listed | None, Lineage]] = []
    cursor = after_id
    scanned = 0
    more = False
    last_scanned = after_id
    # A first read of one page plus one (enough when most candidates match), then the rest of
    # the budget: two queries at most.
    for limit in (first + 1, budget - first - 1):
        page = await repository.run_in_session(
            services.engine,
            repository.run_artifact_candidates,
            run_id=run.run_id,
            workflow_id=workflow_id,
            after_id=cursor,
            limit=limit,
        )
        scanned += len(page.items)
        if page.items:
            last_scanned = page.items[-1].id
        lineages = await services.resolver.resolve_rows(page.items)
        for row, lineage in zip(page.items, lineages, strict=True):
            if lineage.status is LineageStatus.UNAVAILABLE:
                # Leaving the row out would be a wrong answer, not a degraded one.
                raise MlflowUnreachableError(lineage.reason or "MLflow unavailable")
            if lineage.run_id == run.run_id and row.id is not None:
                matched.append((row, page.listing_of(row), lineage))
        more = page.has_next
        if not page.items or not page.has_next or len(matched) > first:
            break
        cursor = page.items[-1].id
    kept = matched[:first]
    listed = {
        row.id: listing for row, listing, _ in kept if row.id is not None and listing is not None
    }
    items = [row for row, _, _ in kept]
    if len(matched) > first:
        result = Page(items=items, has_next=True, listed=listed)
    elif more:
        # The budget ran out before the page filled: the next page starts after the last row
        # looked at, so a walk of the pages still visits every candidate once.
        result = Page(items=items, has_next=True, listed=listed, scanned_to=last_scanned)
    else:
        result = Page(items=items, has_next=False, listed=listed)
    log.debug("run_artifacts.page", run_id=run.run_id, scanned=scanned, matched=len(kept))
    return result, [lineage for _, _, lineage in kept]


def scan_budget(first: int) -> int:
    """Candidate rows one page of a run's artifacts may look at."""
    return SCAN_FACTOR * (first + 1)


async def _own_workflow(services: Services, run: RunRecord) -> str | None:
    """The run's workflow when the run is that workflow's latest run (whose legacy rows are
    then its candidates), else None. MlflowUnreachableError when MLflow cannot say: which
    rows are the run's would be unknown."""
    if run.workflow_id is None:
        return None
    (outcome,) = await services.resolver.load_batch([("workflow", run.workflow_id)])
    if isinstance(outcome, Unavailable):
        raise MlflowUnreachableError(outcome.reason)
    # A refused lookup leaves the workflow's rows unresolved: the run's no more than any other's.
    mine = isinstance(outcome, RunRef) and outcome.run_id == run.run_id
    return run.workflow_id if mine else None


@dataclass(frozen=True, slots=True)
class WorkflowCounts:
    """A workflow's rows in the table and how many have a null run id."""

    workflow_id: str
    artifacts: int
    missing_lineage: int

    @property
    def completeness(self) -> float:
        """1 - missing / artifacts (1.0 for a workflow without rows)."""
        return 1.0 - self.missing_lineage / self.artifacts if self.artifacts else 1.0


async def workflow_counts(services: Services, workflow_id: str) -> WorkflowCounts:
    """Counts of one workflow's rows (two indexed counts, one session)."""

    def count(session: Session) -> WorkflowCounts:
        return WorkflowCounts(
            workflow_id,
            repository.count_artifacts(session, workflow_id=workflow_id),
            repository.count_missing_run_id(session, workflow_id=workflow_id),
        )

    return await repository.run_in_session(services.engine, count)


def gauge_values(workflows: Sequence[repository.WorkflowLineage], *, top: int) -> dict[str, int]:
    """Missing lineage per label: the `top` largest workflows by rows, the rest as `other`."""
    values: dict[str, int] = {}
    other = 0
    named = [w for w in workflows if w.workflow_id is not None]
    for workflow in named[:top]:
        assert workflow.workflow_id is not None
        values[workflow.workflow_id] = workflow.missing_run_id
    for workflow in [*named[top:], *(w for w in workflows if w.workflow_id is None)]:
        other += workflow.missing_run_id
    values[OTHER_WORKFLOWS] = values.get(OTHER_WORKFLOWS, 0) + other
    return values


async def refresh_lineage_gauge(services: Services) -> dict[str, int]:
    """Set `gateway_workflow_missing_lineage{workflow_id}` from one GROUP BY; returns what was
    set."""
    workflows = await repository.run_in_session(services.engine, repository.lineage_by_workflow)
    values = gauge_values(workflows, top=services.settings.lineage_gauge_workflows)
    gauge = services.metrics.missing_lineage_by_workflow
    gauge.clear()  # workflows that left the top N do not linger
    for label, value in values.items():
        gauge.labels(label).set(value)
    return values


async def keep_lineage_gauge_fresh(services: Services) -> None:
    """Refresh the gauge every GATEWAY_LINEAGE_GAUGE_INTERVAL_S until cancelled; a failed
    refresh keeps the last values and is logged."""
    while True:
        try:
            await refresh_lineage_gauge(services)
        except Exception as exc:  # the database is down, or busy: the next round tries again
            log.warning("lineage_gauge.refresh_failed", error=f"{type(exc).__name__}: {exc}"[:200])
        await asyncio.sleep(services.settings.lineage_gauge_interval_s)


@contextlib.asynccontextmanager
async def lineage_gauge_task(services: Services) -> AsyncIterator[asyncio.Task[None]]:
    """Run `keep_lineage_gauge_fresh` for the lifespan of the app."""
    task = asyncio.ensure_future(keep_lineage_gauge_fresh(services))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
