"""Read-only MLflow lookups: REST over httpx, or the local store via MlflowClient.

A tracking URI over HTTP(S) is queried with an async httpx client: tight timeouts, no retries,
cancellable. Any other URI (the embedded `sqlite:///./var/mlflow.db`, `file:`) goes through
`MlflowClient` in worker threads. Both answer the same questions (runs by id, a workflow's
runs, the experiments) with whole runs: a search returns params, metrics and tags anyway, so
lineage's searches also fill the run details cache.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
import httpx

from gateway.mlflow_runs import (
    Experiment,
    RunRecord,
    experiment_from_rest,
    run_from_entity,
    run_from_rest,
)

# MLflow run ids are hex; anything else is refused before it reaches a filter string.
_SAFE_RUN_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
SEARCH_PAGE = 100
# A workflow's runs shown at most (newest first): a DAG run is a handful of MLflow runs.
WORKFLOW_RUNS_MAX = 200


@dataclass(frozen=True, slots=True)
class RunRef:
    """The two ids an artifact needs to link to its run."""

    run_id: str
    experiment_id: str


def ref_of(run: RunRecord) -> RunRef:
    """The two ids of a whole run."""
    return RunRef(run.run_id, run.experiment_id)


class MlflowUnavailableError(Exception):
    """MLflow could not be reached or answered with a server error."""


def safe_run_ids(run_ids: Sequence[str]) -> list[str]:
    """Run ids that can be put in a filter string; others cannot exist in MLflow anyway."""
    return [r for r in run_ids if _SAFE_RUN_ID.match(r)]


def run_id_filter(run_ids: Sequence[str]) -> str:
    """`attributes.run_id IN (...)` for safe run ids."""
    return "attributes.run_id IN (" + ", ".join(f"'{r}'" for r in run_ids) + ")"


def workflow_filter(workflow_id: str) -> str | None:
    """`tags.workflow_id = '...'`, or None when no MLflow quoting can express the value."""
    for quote in ("'", '"'):
        if quote not in workflow_id and "\\" not in workflow_id:
            return f"tags.workflow_id = {quote}{workflow_id}{quote}"
    return None


class SearchBackend:
    """The lookups, built once on two primitives each backend provides."""

    async def experiments(self) -> list[Experiment]:
        """The active experiments, with their names."""
        raise NotImplementedError

    async def experiment_ids(self) -> list[str]:
        return [experiment.experiment_id for experiment in await self.experiments()]

    async def search(
        self,
        experiment_ids: Sequence[str],
        filter_string: str,
        *,
        max_results: int,
        order_by: list[str] | None = None,
    ) -> list[RunRecord]:
        """Runs matching an MLflow filter string in these experiments."""
        raise NotImplementedError

    async def runs_by_id(
        self, run_ids: Sequence[str], experiment_ids: Sequence[str]
    ) -> list[RunRecord]:
        found: list[RunRecord] = []
        safe = safe_run_ids(run_ids)
        for start in range(0, len(safe), SEARCH_PAGE):
            chunk = safe[start : start + SEARCH_PAGE]
            found += await self.search(experiment_ids, run_id_filter(chunk), max_results=len(chunk))
        return found

    async def latest_run_for_workflow(
        self, workflow_id: str, experiment_ids: Sequence[str]
    ) -> RunRecord | None:
        runs = await self.workflow_runs(workflow_id, experiment_ids, max_results=1)
        return runs[0] if runs else None

    async def workflow_runs(
        self, workflow_id: str, experiment_ids: Sequence[str], *, max_results: int
    ) -> list[RunRecord]:
        """Runs tagged workflow_id = `workflow_id`, newest first (MLflow breaks a tie by run id)."""
        filter_string = workflow_filter(workflow_id)
        if filter_string is None:
            return []
        return await self.search(
            experiment_ids,
            filter_string,
            max_results=max_results,
            order_by=["attributes.start_time DESC"],
        )

    async def warm_up(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


class RestBackend(SearchBackend):
    """MLflow's REST API over httpx: one pooled async client, per-call timeouts, no retries."""

    def __init__(self, tracking_uri: str, *, timeout_s: float, traced: bool = False) -> None:
        self._client = httpx.AsyncClient(
            base_url=tracking_uri.rstrip("/"),
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 1.0)),
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
            headers={"user-agent": "artifact-lineage-gateway"},
        )
        if traced:
            # An HTTP client span per call, and the W3C `traceparent` sent to MLflow.
            from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

            HTTPXClientInstrumentor.instrument_client(self._client)

    async def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            response = await self._client.post(f"/api/2.0/mlflow/{path}", json=payload)
        except httpx.HTTPError as exc:
            raise MlflowUnavailableError(f"{type(exc).__name__} calling {path}") from exc
        if response.status_code >= 400:
            raise MlflowUnavailableError(
                f"HTTP {response.status_code} from {path}: {response.text[:200]}"
            )
        try:
            body: dict[str, Any] = response.json()
        except ValueError as exc:
            raise MlflowUnavailableError(f"invalid JSON from {path}") from exc
        return body

    async def experiments(self) -> list[Experiment]:
        found: list[Experiment] = []
        token: str | None = None
        while True:
            payload: dict[str, Any] = {"max_results": 1000, "view_type": "ACTIVE_ONLY"}
            if token:
                payload["page_token"] = token
            body = await self._post("experiments/search", payload)
            listed = body.get("experiments", [])
            found += [e for e in map(experiment_from_rest, _list(listed)) if e is not None]
            token = body.get("next_page_token")
            if not isinstance(token, str) or not token:
                return found

    async def search(
        self,
        experiment_ids: Sequence[str],
        filter_string: str,
        *,
        max_results: int,
        order_by: list[str] | None = None,
    ) -> list[RunRecord]:
        payload: dict[str, Any] = {
            "experiment_ids": list(experiment_ids),
            "filter": filter_string,
            "max_results": max_results,
        }
        if order_by:
            payload["order_by"] = order_by
        body = await self._post("runs/search", payload)
        return [run for run in map(run_from_rest, _list(body.get("runs"))) if run is not None]

    async def aclose(self) -> None:
        await self._client.aclose()


class LocalStoreBackend(SearchBackend):
    """MlflowClient against a local store (SQLite, file), called from worker threads."""

    def __init__(self, tracking_uri: str) -> None:
        self._tracking_uri = tracking_uri
        self._client: Any = None
        self._lock = threading.Lock()

    def _get_client(self) -> Any:
        # Built on first use, in a worker thread: opening a store can run its migrations.
        with self._lock:
            if self._client is None:
                from mlflow.tracking import MlflowClient

                self._client = MlflowClient(tracking_uri=self._tracking_uri)
            return self._client

    async def _run(self, method: str, *args: Any, **kwargs: Any) -> Any:
        def call() -> Any:
            try:
                return getattr(self._get_client(), method)(*args, **kwargs)
            except Exception as exc:
                # The local store raises MlflowException or SQLAlchemy errors alike.
                raise MlflowUnavailableError(f"{type(exc).__name__}: {exc}"[:200]) from exc

        return await anyio.to_thread.run_sync(call, abandon_on_cancel=True)

    async def experiments(self) -> list[Experiment]:
        experiments = await self._run("search_experiments", max_results=50_000)
        return [Experiment(e.experiment_id, e.name) for e in experiments]

    async def search(
        self,
        experiment_ids: Sequence[str],
        filter_string: str,
        *,
        max_results: int,
        order_by: list[str] | None = None,
    ) -> list[RunRecord]:
        runs = await self._run(
            "search_runs",
            list(experiment_ids),
            filter_string=filter_string,
            max_results=max_results,
            order_by=order_by,
        )
        return [run for run in map(run_from_entity, runs) if run is not None]

    async def warm_up(self) -> None:
        # Opening a local store can take seconds (schema checks); do it before users ask.
        try:
            await self.experiment_ids()
        except MlflowUnavailableError:
            return


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def make_backend(tracking_uri: str, *, timeout_s: float, traced: bool = False) -> SearchBackend:
    """REST for http(s) tracking URIs, the local store client for everything else."""
    if tracking_uri.startswith(("http://", "https://")):
        return RestBackend(tracking_uri, timeout_s=timeout_s, traced=traced)
    return LocalStoreBackend(tracking_uri)
