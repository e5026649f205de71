"""Read-only HTML pages for QA and on-call: artifact list, detail with lineage, chart comparison.

Server-rendered with Jinja2 (autoescaped), no JavaScript and no external assets. Every page is
built from the same repository functions, lineage resolver and image service as the API, so a
page shows exactly what the API answers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pandas as pd
import structlog
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Match, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import Scope

from gateway import repository
from gateway.errors import GatewayError, InvalidInputError, NotFoundError
from gateway.images import ChartImage, Source
from gateway.lineage import LineageView, lineage_view
from gateway.mlflow_runs import MAX_KEY_CHARS
from gateway.models import Artifact, ArtifactType
from gateway.problems import retry_after, status_of
from gateway.rows import created_at_of, effective_workflow_id, json_field, meta_dict
from gateway.run_graph import (
    RequestRuns,
    check_run_id,
    check_workflow_id,
    entries_after,
    run_artifacts,
    workflow_counts,
)
from gateway.runs import RunView
from gateway.services import (
    RequestLineage,
    Services,
    load_artifact,
    parse_artifact_id,
    services_of,
    snapshot_summary,
)
from gateway.snapshots import SnapshotSummary

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
log = structlog.get_logger("gateway")

PAGE_SIZE = 25
# A run's params and metrics shown per page: MLflow runs hold thousands of each, and a value
# is up to 8,000 characters (a page of 50 is at most about 0.4 MB of them).
RUN_ENTRIES_PAGE = 50
# The artifact page shows the first few and links to the run page for the rest.
ARTIFACT_RUN_ENTRIES = 20
MAX_FILTER_CHARS = 200
_TYPES = tuple(t.value for t in ArtifactType)
# Pages load only their own stylesheet and images; forms post nowhere but here.
HTML_CSP = (
    "default-src 'none'; img-src 'self'; style-src 'self'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
_WORD = re.compile(r"[A-Za-z0-9._:\-/ ]*")


class AnyTextConvertor(Convertor[str]):
    """A path parameter of any text, newlines included (Starlette's `path` stops at one, so a
    workflow id holding a newline would match no route, or match with its tail cut off)."""

    regex = "(?s:.*)"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("anytext", AnyTextConvertor())


@dataclass(frozen=True)
class Filters:
    """The list filters, validated from the query string."""

    artifact_type: str | None = None
    symbol: str | None = None
    workflow_id: str | None = None
    missing_lineage: bool = False
    after: int | None = None

    def query(self, **override: Any) -> str:
        """The query string of these filters, with some values replaced."""
        values = {
            "type": self.artifact_type,
            "symbol": self.symbol,
            "workflow": self.workflow_id,
            "missing": "1" if self.missing_lineage else None,
            "after": self.after,
            **override,
        }
        return urlencode({k: v for k, v in values.items() if v not in (None, "")})


def _text_filter(request: Request, name: str) -> str | None:
    raw = request.query_params.get(name, "").strip()
    if not raw:
        return None
    if len(raw) > MAX_FILTER_CHARS or not _WORD.fullmatch(raw):
        raise InvalidInputError(
            f"{name} may hold up to {MAX_FILTER_CHARS} letters, digits, spaces and ._:-/"
        )
    return raw


def parse_filters(request: Request) -> Filters:
    """Filters from the query string; InvalidInputError names the bad one."""
    artifact_type = request.query_params.get("type") or None
    if artifact_type is not None and artifact_type not in _TYPES:
        raise InvalidInputError(f"type must be one of {', '.join(_TYPES)}")
    after_raw = request.query_params.get("after") or None
    after = parse_artifact_id(after_raw) if after_raw is not None else None
    missing = request.query_params.get("missing", "")
    if missing not in ("", "0", "1", "on", "true"):
        raise InvalidInputError("missing must be 1 or absent")
    return Filters(
        artifact_type=artifact_type,
        symbol=_text_filter(request, "symbol"),
        workflow_id=_text_filter(request, "workflow"),
        missing_lineage=missing in ("1", "on", "true"),
        after=after,
    )


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
    """A template response with the HTML content security policy."""
    response = templates.TemplateResponse(request, template, context, status_code=status_code)
    response.headers["Content-Security-Policy"] = HTML_CSP
    response.headers["Cache-Control"] = "no-store"
    return response


def error_page(request: Request, exc: GatewayError) -> Response:
    """A gateway error as an HTML page with the same status and message as the API gives."""
    status, title = status_of(exc)
    log.info("ui.error", status=status, detail=str(exc))
    response = render(request, "error.html", status_code=status, title=title, detail=str(exc))
    response.headers.update(retry_after(exc) or {})
    return response


def deadline_page(request: Request, timeout_s: float) -> Response:
    """The HTML page for a /ui request past GATEWAY_REQUEST_TIMEOUT_S (the API answers a
    problem document instead)."""
    return render(
        request,
        "error.html",
        status_code=503,
        title="Service Unavailable",
        detail=f"The page took longer than {timeout_s:g} s to make; try again in a moment.",
    )


def unexpected_error_page(request: Request) -> Response:
    """The HTML page for a bug on a /ui path (the API answers a problem document instead)."""
    request_id = request.scope.get("state", {}).get("request_id")
    return render(
        request,
        "error.html",
        status_code=500,
        title="Internal Server Error",
        detail=f"Unexpected error; see the logs for request id {request_id}.",
    )


@dataclass(frozen=True)
class Row:
    """One line of the list page."""

    artifact: Artifact
    lineage: LineageView
    created: str


def _when(row: Artifact) -> str:
    utc = created_at_of(row)
    return utc.strftime("%Y-%m-%d %H:%M UTC") if utc is not None else "unknown"


async def artifact_list(request: Request) -> Response:
    """GET /ui/artifacts: filtered, paginated table with lineage badges."""
    services = services_of(request)
    try:
        filters = parse_filters(request)
        page = await repository.run_in_session(
            services.engine,
            repository.list_artifacts,
            first=PAGE_SIZE,
            after_id=filters.after,
            artifact_type=filters.artifact_type,
            symbol=filters.symbol,
            workflow_id=filters.workflow_id,
            missing_lineage=True if filters.missing_lineage else None,
        )
        missing = await repository.run_in_session(services.engine, repository.count_missing_lineage)
    except GatewayError as exc:
        return error_page(request, exc)
    lineages = await services.resolver.resolve_rows(page.items)
    ui_url = services.settings.mlflow_ui_base
    rows = [
        Row(artifact=a, lineage=lineage_view(lin, ui_url=ui_url), created=_when(a))
        for a, lin in zip(page.items, lineages, strict=True)
    ]
    next_query = None
    if page.has_next and page.items:
        next_query = filters.query(after=page.items[-1].id)
    return render(
        request,
        "artifact_list.html",
        rows=rows,
        filters=filters,
        types=_TYPES,
        missing_count=missing,
        next_query=next_query,
        first_query=filters.query(after=None) if filters.after else None,
    )


@dataclass(frozen=True)
class MarketData:
    """What the detail page says about a chart's stored bars."""

    bars: int
    first: str
    last: str
    last_close: str
    problem: str | None = None


def market_data(summary: SnapshotSummary | None) -> MarketData | None:
    """The detail page's words for a snapshot summary (None when no snapshot is stored)."""
    if summary is None:
        return None
    if summary.problem is not None or summary.first is None or summary.last is None:
        return MarketData(summary.bars or 0, "", "", "", problem=summary.problem)
    close = summary.last_close
    return MarketData(
        bars=summary.bars or 0,
        first=_bar_time(summary.first),
        last=_bar_time(summary.last),
        last_close=f"{close:,.2f}" if close is not None else "not a number",
    )


def _bar_time(value: Any) -> str:
    stamp = pd.Timestamp(value)
    if stamp == stamp.normalize():
        return stamp.strftime("%Y-%m-%d")
    return stamp.strftime("%Y-%m-%d %H:%M UTC")


@dataclass(frozen=True)
class Chart:
    """The outcome of asking the image service for one source of a chart."""

    artifact_id: int
    source: Source
    image: ChartImage | None
    problem: str | None

    @property
    def size(self) -> tuple[int, int]:
        """Pixel width and height from the PNG header, so the page reserves the right box."""
        data = self.image.data if self.image is not None else b""
        if len(data) >= 24 and data[12:16] == b"IHDR":
            return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        return 1200, 800

    @property
    def src(self) -> str:
        """The image route for this source; the browser fetches it from the warmed cache."""
        query = "" if self.source == "auto" else f"?source={self.source}"
        return f"/api/artifacts/{self.artifact_id}/image{query}"


async def chart_of(services: Services, row: Artifact, source: Source) -> Chart:
    """Ask the image service now, so the page shows a reason instead of a broken image."""
    assert row.id is not None
    try:
        image = await services.images.image(row, source=source)
    except GatewayError as exc:
        return Chart(row.id, source, None, str(exc))
    return Chart(row.id, source, image, None)


@dataclass(frozen=True)
class RunPanel:
    """What the pages show of an MLflow run."""

    run_id: str
    name: str | None
    status: str | None
    start: str
    end: str
    experiment_id: str
    experiment_name: str | None
    params: list[tuple[str, str]]
    metrics: list[tuple[str, str, str]]
    param_count: int
    metric_count: int
    # Where the rest of the params (metrics) are: the next page, or the run page.
    params_more: str | None
    metrics_more: str | None
    url: str | None
    page: str
    workflow_page: str | None


def _stamp(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value is not None else "unknown"


def run_page_url(run_id: str, **query: str | int | None) -> str:
    """The run page, with its paging cursors."""
    return _with_query(f"/ui/runs/{quote(run_id, safe='')}", query)


def _with_query(path: str, query: dict[str, str | int | None]) -> str:
    given = urlencode({k: v for k, v in query.items() if v is not None})
    return f"{path}?{given}" if given else path


def workflow_page_url(workflow_id: str, *, after: int | None = None) -> str | None:
    """The workflow page of any workflow id the page can show (None for one it cannot: blank
    or too long). Every id is one path segment (its / encoded), except `.` and `..`, which
    browsers resolve away even encoded: those go in the query string."""
    try:
        check_workflow_id(workflow_id)
    except InvalidInputError:
        return None
    if workflow_id in (".", ".."):
        return _with_query("/ui/workflows", {"id": workflow_id, "after": after})
    return _with_query(f"/ui/workflows/{quote(workflow_id, safe='')}", {"after": after})


@dataclass(frozen=True)
class RunCursors:
    """Where the run page's three lists start: params, metrics (keys) and artifacts (an id)."""

    params_after: str | None = None
    metrics_after: str | None = None
    after: int | None = None

    def url(self, run_id: str, **override: str | int | None) -> str:
        """The run page at these cursors, some replaced."""
        values: dict[str, str | int | None] = {
            "params_after": self.params_after,
            "metrics_after": self.metrics_after,
            "after": self.after,
            **override,
        }
        return run_page_url(run_id, **values)


def _key_cursor(request: Request, name: str) -> str | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if len(raw) > MAX_KEY_CHARS:
        raise InvalidInputError(f"{name} must be a key of at most {MAX_KEY_CHARS} characters")
    return raw


def run_panel(
    view: RunView, *, entries: int = ARTIFACT_RUN_ENTRIES, cursors: RunCursors | None = None
) -> RunPanel:
    """A run view in the pages' words: `entries` params and metrics, from the run page's
    cursors when given (else the first ones, the rest a link to the run page)."""
    run = view.record
    start = cursors or RunCursors()
    params = entries_after(run.params, first=entries, after=start.params_after)
    metrics = entries_after(run.metrics, first=entries, after=start.metrics_after)
    page = run_page_url(run.run_id)
    params_more = metrics_more = None
    if params and params[-1].key != run.params[-1].key:
        params_more = cursors.url(run.run_id, params_after=params[-1].key) if cursors else page
    if metrics and metrics[-1].key != run.metrics[-1].key:
        metrics_more = cursors.url(run.run_id, metrics_after=metrics[-1].key) if cursors else page
    return RunPanel(
        run_id=run.run_id,
        name=run.name,
        status=run.status,
        start=_stamp(run.start_time),
        end=_stamp(run.end_time) if run.end_time is not None else "not ended",
        experiment_id=run.experiment_id,
        experiment_name=view.experiment_name,
        params=[(p.key, p.value) for p in params],
        metrics=[
            (
                m.key,
                f"{m.value:g}" if m.value is not None else "not a number",
                str(m.step) if m.step is not None else "—",
            )
            for m in metrics
        ],
        param_count=len(run.params),
        metric_count=len(run.metrics),
        params_more=params_more,
        metrics_more=metrics_more,
        url=view.url,
        page=page,
        workflow_page=workflow_page_url(run.workflow_id) if run.workflow_id else None,
    )


def _rows(services: Services, items: Any, lineages: Any) -> list[Row]:
    ui_url = services.settings.mlflow_ui_base
    return [
        Row(artifact=a, lineage=lineage_view(lin, ui_url=ui_url), created=_when(a))
        for a, lin in zip(items, lineages, strict=True)
    ]


def _after(request: Request) -> int | None:
    raw = request.query_params.get("after") or None
    return parse_artifact_id(raw) if raw is not None else None


async def run_detail(request: Request) -> Response:
    """GET /ui/runs/{run_id}: the run in full and what it produced."""
    services = services_of(request)
    try:
        after = _after(request)
        cursors = RunCursors(
            params_after=_key_cursor(request, "params_after"),
            metrics_after=_key_cursor(request, "metrics_after"),
            after=after,
        )
        view = await RequestRuns(services.runs).by_id(check_run_id(request.path_params["run_id"]))
        if view is None:
            raise NotFoundError("MLflow has no run with this id")
        page, lineages = await run_artifacts(services, view.record, first=PAGE_SIZE, after_id=after)
    except GatewayError as exc:
        return error_page(request, exc)
    run_id = view.record.run_id
    next_after = page.next_after
    return render(
        request,
        "run_detail.html",
        run=run_panel(view, entries=RUN_ENTRIES_PAGE, cursors=cursors),
        rows=_rows(services, page.items, lineages),
        after=after,
        first_page=cursors.url(run_id, after=None) if after else None,
        next_page=cursors.url(run_id, after=next_after) if next_after is not None else None,
        entries_start=(
            cursors.url(run_id, params_after=None, metrics_after=None)
            if cursors.params_after or cursors.metrics_after
            else None
        ),
    )


async def workflow_detail(request: Request) -> Response:
    """GET /ui/workflows/{workflow_id}: lineage completeness, the runs, the artifacts."""
    return await _workflow_page(request, request.path_params["workflow_id"])


async def workflow_by_query(request: Request) -> Response:
    """GET /ui/workflows?id=...: the workflow page of an id no path can carry (`.`, `..`)."""
    return await _workflow_page(request, request.query_params.get("id", ""))


async def _workflow_page(request: Request, raw_id: str) -> Response:
    services = services_of(request)
    try:
        after = _after(request)
        workflow_id = check_workflow_id(raw_id)
        counts = await workflow_counts(services, workflow_id)
        if counts.artifacts == 0:
            raise NotFoundError("no artifact in the table belongs to this workflow")
        page = await repository.run_in_session(
            services.engine,
            repository.list_artifacts,
            first=PAGE_SIZE,
            after_id=after,
            workflow_id=workflow_id,
        )
    except GatewayError as exc:
        return error_page(request, exc)
    runs: list[RunPanel] = []
    runs_problem = None
    try:
        found = await services.runs.workflow_runs(workflow_id)
        runs = [run_panel(services.runs.view(run), entries=0) for run in found]
    except GatewayError as exc:  # MLflow down: the counts and artifacts still stand
        runs_problem = str(exc)
    lineages = await services.resolver.resolve_rows(page.items)
    return render(
        request,
        "workflow_detail.html",
        workflow_id=workflow_id,
        counts=counts,
        runs=runs,
        runs_problem=runs_problem,
        rows=_rows(services, page.items, lineages),
        after=after,
        first_page=workflow_page_url(workflow_id) if after else None,
        next_page=(
            workflow_page_url(workflow_id, after=page.next_after)
            if page.next_after is not None
            else None
        ),
    )


async def artifact_detail(request: Request) -> Response:
    """GET /ui/artifacts/{id}: lineage banner, chart, market data, LLM text or signal."""
    services = services_of(request)
    try:
        row = await load_artifact(services, request.path_params["artifact_id"])
    except GatewayError as exc:
        return error_page(request, exc)
    resolved = await RequestLineage(services.resolver).of(row)
    lineage = lineage_view(resolved, ui_url=services.settings.mlflow_ui_base)
    run: RunPanel | None = None
    run_problem = None
    try:
        view = await RequestRuns(services.runs).of_lineage(resolved)
        run = run_panel(view) if view is not None else None
    except GatewayError as exc:  # MLflow down: the lineage banner already says so
        run_problem = str(exc)
    chart = market = None
    if row.artifact_type == ArtifactType.CHART:
        chart = await chart_of(services, row, "auto")
        market = market_data(await snapshot_summary(services, row))
    unreadable = {
        column: problem
        for column, value in (("metadata", row.meta), ("chart_data", row.chart_data))
        if (problem := json_field(value)[1]) is not None
    }
    return render(
        request,
        "artifact_detail.html",
        artifact=row,
        created=_when(row),
        chart=chart,
        market=market,
        meta=meta_dict(row),
        unreadable=unreadable,
        lineage=lineage,
        unresolved=lineage.unresolved,
        run_url=lineage.run_url,
        experiment_url=lineage.experiment_url,
        workflow_id=(wf := effective_workflow_id(row)),
        workflow_page=workflow_page_url(wf) if wf else None,
        run=run,
        run_problem=run_problem,
    )


async def artifact_compare(request: Request) -> Response:
    """GET /ui/artifacts/{id}/compare: the MinIO chart beside the regenerated one."""
    services = services_of(request)
    try:
        row = await load_artifact(services, request.path_params["artifact_id"])
    except GatewayError as exc:
        return error_page(request, exc)
    if row.artifact_type != ArtifactType.CHART:
        return error_page(request, NotFoundError(f"artifact {row.id} is not a chart"))
    stored = await chart_of(services, row, "minio")
    regenerated = await chart_of(services, row, "regenerated")
    same = (
        stored.image is not None
        and regenerated.image is not None
        and stored.image.data == regenerated.image.data
    )
    return render(
        request,
        "artifact_compare.html",
        artifact=row,
        stored=stored,
        regenerated=regenerated,
        identical=same,
    )


async def ui_root(_request: Request) -> Response:
    """GET /ui: the artifact list."""
    return RedirectResponse("/ui/artifacts", status_code=307)


class PageStaticFiles(StaticFiles):
    """The pages' stylesheet; a file it does not have is an HTML page, like every /ui answer."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        """The file, or the HTML page of the HTTP error serving it gives."""
        try:
            return await super().get_response(path, scope)
        except HTTPException as exc:
            return _status_page(Request(scope), exc.status_code, exc.headers)


def _status_page(
    request: Request, status: int, headers: Mapping[str, str] | None = None
) -> Response:
    title = HTTPStatus(status).phrase
    detail = {
        404: "There is no page at this address.",
        405: "This page only answers GET requests.",
    }.get(status, title)
    response = render(request, "error.html", status_code=status, title=title, detail=detail)
    response.headers.update(headers or {})
    return response


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _page_routes() -> list[Route]:
    return [
        Route("/ui", ui_root, methods=["GET"]),
        Route("/ui/artifacts", artifact_list, methods=["GET"]),
        Route("/ui/artifacts/{artifact_id}", artifact_detail, methods=["GET"]),
        Route("/ui/artifacts/{artifact_id}/compare", artifact_compare, methods=["GET"]),
        Route("/ui/runs/{run_id}", run_detail, methods=["GET"]),
        Route("/ui/workflows", workflow_by_query, methods=["GET"]),
        Route("/ui/workflows/{workflow_id:anytext}", workflow_detail, methods=["GET"]),
    ]


def ui_routes() -> list[Route | Mount]:
    """The /ui pages, their stylesheet, and the HTML answer for any other /ui path or method
    (people get pages; problem documents are for programs)."""
    pages = _page_routes()

    async def not_a_page(request: Request) -> Response:
        if request.url.path == "/ui/":
            return RedirectResponse("/ui/artifacts", status_code=307)
        allowed = sorted(
            {
                method
                for route in pages
                if route.matches(request.scope)[0] is Match.PARTIAL
                for method in route.methods or ()
            }
        )
        if allowed:
            return _status_page(request, 405, {"Allow": ", ".join(allowed)})
        return _status_page(request, 404)

    return [
        *pages,
        Mount("/ui/static", PageStaticFiles(directory=HERE / "static"), name="static"),
        # Every method: a POST or a DELETE under /ui gets a page too (Route's default is GET).
        Route("/ui/{rest:anytext}", not_a_page, methods=list(_METHODS)),
    ]
