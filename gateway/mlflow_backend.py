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
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
import httpx
import structlog

from gateway.mlflow_runs import (
    MAX_VALUE_CHARS,
    Experiment,
    RunRecord,
    experiment_from_rest,
    run_from_entity,
    run_from_rest,
)

log = structlog.get_logger("gateway.mlflow")
# MLflow run ids are hex; anything else is refused before it reaches a filter string. Matched
# against the whole string (`fullmatch`): `^...$` with `match` lets a final newline through.
_SAFE_RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
SEARCH_PAGE = 100
# A workflow's runs shown at most (newest first): a DAG run is a handful of MLflow runs.
WORKFLOW_RUNS_MAX = 200
# Pages of a LIKE search read at most to find a workflow's own runs among look-alikes (a
# workflow id full of `%` and `_` matches many runs: past this, the rest are not looked at).
LIKE_PAGES_MAX = 5
# Statuses that mean MLflow (or what fronts it) is overloaded or too slow: an outage, like 5xx.
_OUTAGE_STATUSES = frozenset({408, 429})
# How much of another service's error text goes into the log (never to a client).
_LOGGED_TEXT = 500


@dataclass(frozen=True, slots=True)
class RunRef:
    """The two ids an artifact needs to link to its run."""

    run_id: str
    experiment_id: str


def ref_of(run: RunRecord) -> RunRef:
    """The two ids of a whole run."""
    return RunRef(run.run_id, run.experiment_id)


class MlflowUnavailableError(Exception):
    """MLflow could not be reached, was too slow, or answered with a server error (an outage)."""


class MlflowRequestRefusedError(Exception):
    """MLflow answered and refused this request (HTTP 4xx): the lookup fails, MLflow is up."""


def safe_run_ids(run_ids: Sequence[str]) -> list[str]:
    """Run ids that can be put in a filter string; others cannot exist in MLflow anyway."""
    return [r for r in run_ids if isinstance(r, str) and _SAFE_RUN_ID.fullmatch(r)]


def run_id_filter(run_ids: Sequence[str]) -> str:
    """`attributes.run_id IN (...)` for safe run ids."""
    return "attributes.run_id IN (" + ", ".join(f"'{r}'" for r in run_ids) + ")"


@dataclass(frozen=True, slots=True)
class WorkflowSearch:
    """How a workflow's runs are searched: an exact `=` filter, or a `LIKE` pattern whose runs
    are then narrowed here to those tagged with exactly the workflow id."""

    filter_string: str
    exact: bool


def _awkward(ch: str) -> bool:
    # Control characters are stored by some MLflow databases and refused by others (NUL in
    # PostgreSQL: a server error, which would count as an outage): never sent literally.
    return ch in "'\"\\" or unicodedata.category(ch) == "Cc"


def workflow_search(workflow_id: str) -> WorkflowSearch | None:
    """The search for runs tagged workflow_id = `workflow_id`; None when no MLflow tag can hold
    the value (empty, longer than MLflow allows, or not encodable as UTF-8).

    MLflow's filter parser (sqlparse, then the quotes trimmed) has no escape: a value is exact
    inside a quote kind it does not contain. Backslashes are literal there. A value holding both
    kinds (or control characters) becomes a LIKE pattern with `_` for each such character, and
    the runs it matches are narrowed by their tag value.
    """
    if not workflow_id or len(workflow_id) > MAX_VALUE_CHARS:
        return None
    try:
        workflow_id.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: no MLflow tag holds one
        return None
    if not any(unicodedata.category(ch) == "Cc" for ch in workflow_id):
        for quote in ("'", '"'):
            if quote not in workflow_id:
                return WorkflowSearch(f"tags.workflow_id = {quote}{workflow_id}{quote}", True)
    # `_` for every awkward character (a backslash too: PostgreSQL's LIKE escapes with it).
    # `%` and `_` in the value stay wildcards: they only widen the match.
    pattern = "".join("_" if _awkward(ch) else ch for ch in workflow_id)
    return WorkflowSearch(f"tags.workflow_id LIKE '{pattern}'", False)


def workflow_filter(workflow_id: str) -> str | None:
    """The exact filter `tags.workflow_id = ...`, or None when no exact filter can express the
    value (both quote kinds, a NUL, or no tag could hold it). For dags_utils, which takes the
    first run a filter finds, so a LIKE look-alike would not do. Tabs and newlines are sent as
    they are, as dags_utils wrote them into the tag; the gateway's reads search those with
    `workflow_search`, which never sends a control character."""
    if workflow_search(workflow_id) is None or "\x00" in workflow_id:
        return None
    for quote in ("'", '"'):
        if quote not in workflow_id:
            return f"tags.workflow_id = {quote}{workflow_id}{quote}"
    return None


class SearchBackend:
    """The lookups, built once on the primitives each backend provides: `experiments`, and
    `search_page` (or, for a backend that does not page, `search`: each defaults to the other)."""

    async def experiments(self) -> list[Experiment]:
        """The active experiments, with their names."""
        raise NotImplementedError

    async def experiment_ids(self) -> list[str]:
        """The active experiments' ids."""
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
        runs, _token = await self.search_page(
            experiment_ids, filter_string, max_results=max_results, order_by=order_by
        )
        return runs

    async def search_page(
        self,
        experiment_ids: Sequence[str],
        filter_string: str,
        *,
        max_results: int,
        order_by: list[str] | None = None,
        page_token: str | None = None,
    ) -> tuple[list[RunRecord], str | None]:
        """One page of a search and the token of the next (None: there is none).

        Backends page; one that only implements `search` answers a single page.
        """
        runs = await self.search(
            experiment_ids, filter_string, max_results=max_results, order_by=order_by
        )
        return runs, None

    async def runs_by_id(
        self, run_ids: Sequence[str], experiment_ids: Sequence[str]
    ) -> list[RunRecord]:
        """The runs with these ids (ids that cannot be MLflow's are not asked about)."""
        found: list[RunRecord] = []
        safe = safe_run_ids(run_ids)
        for start in range(0, len(safe), SEARCH_PAGE):
            chunk = safe[start : start + SEARCH_PAGE]
            found += await self.search(experiment_ids, run_id_filter(chunk), max_results=len(chunk))
        return found

    async def latest_run_for_workflow(
        self, workflow_id: str, experiment_ids: Sequence[str]
    ) -> RunRecord | None:
        """The newest run tagged with this workflow id, or None."""
        runs = await self.workflow_runs(workflow_id, experiment_ids, max_results=1)
        return runs[0] if runs else None

    async def workflow_runs(
        self, workflow_id: str, experiment_ids: Sequence[str], *, max_results: int
    ) -> list[RunRecord]:
        """Runs tagged workflow_id = `workflow_id`, newest first (MLflow breaks a tie by run id)."""
        search = workflow_search(workflow_id)
        if search is None:
            return []
        order_by = ["attributes.start_time DESC"]
        if search.exact:
            return await self.search(
                experiment_ids, search.filter_string, max_results=max_results, order_by=order_by
            )
        # A LIKE pattern also matches look-alikes, possibly newer: page (in MLflow's order)
        # until enough runs carry exactly this tag.
        found: list[RunRecord] = []
        token: str | None = None
        for _ in range(LIKE_PAGES_MAX):
            page, token = await self.search_page(
                experiment_ids,
                search.filter_string,
                max_results=SEARCH_PAGE,
                order_by=order_by,
                page_token=token,
            )
            found += [run for run in page if run.workflow_id == workflow_id]
            if len(found) >= max_results or not token:
                break
        return found[:max_results]

    async def warm_up(self) -> None:
        """Open the backend before users ask (a no-op unless opening is slow)."""
        return None

    async def aclose(self) -> None:
        """Release connections."""
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
        # MLflow's own text (and a proxy's page) is logged here, with the request id the
        # context carries, and never put in an error: errors become reasons clients read.
        try:
            response = await self._client.post(f"/api/2.0/mlflow/{path}", json=payload)
        except httpx.HTTPError as exc:
            raise MlflowUnavailableError(f"{type(exc).__name__} calling {path}") from exc
        status = response.status_code
        if status >= 400:
            refused = status < 500 and status not in _OUTAGE_STATUSES
            log.warning(
                "mlflow.refused" if refused else "mlflow.server_error",
                path=path,
                status=status,
                body=response.text[:_LOGGED_TEXT],
            )
            if refused:
                raise MlflowRequestRefusedError(f"HTTP {status} from {path}")
            raise MlflowUnavailableError(f"HTTP {status} from {path}")
        try:
            body = response.json()
        except ValueError as exc:
            log.warning(
                "mlflow.invalid_answer", path=path, status=status, body=response.text[:_LOGGED_TEXT]
            )
            raise MlflowUnavailableError(f"invalid JSON from {path}") from exc
        return body if isinstance(body, dict) else {}

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

    async def search_page(
        self,
        experiment_ids: Sequence[str],
        filter_string: str,
        *,
        max_results: int,
        order_by: list[str] | None = None,
        page_token: str | None = None,
    ) -> tuple[list[RunRecord], str | None]:
        """One page of `runs/search`, and the next page's token."""
        payload: dict[str, Any] = {
            "experiment_ids": list(experiment_ids),
            "filter": filter_string,
            "max_results": max_results,
        }
        if order_by:
            payload["order_by"] = order_by
        if page_token:
            payload["page_token"] = page_token
        body = await self._post("runs/search", payload)
        runs = [run for run in map(run_from_rest, _list(body.get("runs"))) if run is not None]
        token = body.get("next_page_token")
        return runs, token if isinstance(token, str) and token else None

    async def aclose(self) -> None:
        """Close the pooled client."""
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
                # The local store raises MlflowException (with an HTTP status: 4xx for a
                # request it refuses) or SQLAlchemy errors alike. Their text is logged only.
                refused = _is_refusal(exc)
                log.warning(
                    "mlflow.refused" if refused else "mlflow.store_error",
                    operation=method,
                    error=f"{type(exc).__name__}: {exc}"[:_LOGGED_TEXT],
                )
                if refused:
                    raise MlflowRequestRefusedError(f"{method} refused by the store") from exc
                raise MlflowUnavailableError(f"{type(exc).__name__} from the store") from exc

        # anyio runs `call` in a copy of this context: the log lines carry the request id.
        return await anyio.to_thread.run_sync(call, abandon_on_cancel=True)

    async def experiments(self) -> list[Experiment]:
        experiments = await self._run("search_experiments", max_results=50_000)
        return [Experiment(e.experiment_id, e.name) for e in experiments]

    async def search_page(
        self,
        experiment_ids: Sequence[str],
        filter_string: str,
        *,
        max_results: int,
        order_by: list[str] | None = None,
        page_token: str | None = None,
    ) -> tuple[list[RunRecord], str | None]:
        """One page of `search_runs`, and the next page's token."""
        runs = await self._run(
            "search_runs",
            list(experiment_ids),
            filter_string=filter_string,
            max_results=max_results,
            order_by=order_by,
            page_token=page_token,
        )
        token = getattr(runs, "token", None)
        found = [run for run in map(run_from_entity, runs) if run is not None]
        return found, token if isinstance(token, str) and token else None

    async def warm_up(self) -> None:
        # Opening a local store can take seconds (schema checks); do it before users ask.
        try:
            await self.experiment_ids()
        except (MlflowUnavailableError, MlflowRequestRefusedError):
            return


def _is_refusal(exc: Exception) -> bool:
    """An MLflow store error that refuses the request (4xx), not one of the store failing."""
    status = getattr(exc, "get_http_status_code", None)
    if not callable(status):
        return False
    try:
        code = status()
    except Exception:  # an odd exception type: not a refusal MLflow stated
        return False
    return isinstance(code, int) and 400 <= code < 500 and code not in _OUTAGE_STATUSES


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def make_backend(tracking_uri: str, *, timeout_s: float, traced: bool = False) -> SearchBackend:
    """REST for http(s) tracking URIs, the local store client for everything else."""
    if tracking_uri.startswith(("http://", "https://")):
        return RestBackend(tracking_uri, timeout_s=timeout_s, traced=traced)
    return LocalStoreBackend(tracking_uri)
