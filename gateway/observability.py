"""Structured logging, Prometheus metrics and the request-id/access-log middleware."""

from __future__ import annotations

import logging
import os
import re
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import strictjson, tracing

REQUEST_ID_HEADER = "x-request-id"
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Matched whole (`fullmatch`): with `match`, `$` also matches before a final newline, and an
# id ending in "\n" would be echoed in a response header and written into log lines.
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Fields kept when a line is still too long after its values were cut (many long fields).
_ESSENTIAL_FIELDS = ("event", "level", "timestamp", "logger", "request_id", "trace_id", "span_id")

log = structlog.get_logger("gateway")


# Loggers of libraries that print while serving; they are routed through structlog too.
_FOREIGN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "mlflow")


def add_trace_ids(
    _logger: Any, _method: str, event_dict: structlog.types.EventDict
) -> structlog.types.EventDict:
    """`trace_id` and `span_id` (hex) on every line written inside a traced span."""
    ids = tracing.trace_ids()
    if ids is not None:
        event_dict.setdefault("trace_id", ids[0])
        event_dict.setdefault("span_id", ids[1])
    return event_dict


class LineCap:
    """A renderer whose lines are at most `max_bytes` of UTF-8: a longer line is rendered again
    with its longest values cut (containers as their JSON text) and a `truncated` field naming
    them (`true` and `fields_dropped` when even that is too long: only the essentials are
    kept). Whatever a client sends (a path, a header a library quotes in a warning) costs the
    log at most one line's worth."""

    def __init__(self, renderer: Callable[..., Any], max_bytes: int) -> None:
        self.renderer = renderer
        self.max_bytes = max_bytes

    def __call__(self, logger: Any, method: str, event_dict: structlog.types.EventDict) -> Any:
        line = self.renderer(logger, method, dict(event_dict))
        if self._fits(line):
            return line
        cut = dict(event_dict)
        truncated: set[str] = set()
        limit = self.max_bytes // 4
        while limit >= 16:
            for key, value in cut.items():
                if key == "truncated":
                    continue
                text = value if isinstance(value, str) else None
                if text is None and not isinstance(value, (int, float, bool, type(None))):
                    text = strictjson.dumps(value, default=str)
                if text is not None and len(text) > limit:
                    cut[key] = text[:limit] + "…"
                    truncated.add(key)
            cut["truncated"] = sorted(truncated)
            line = self.renderer(logger, method, dict(cut))
            if self._fits(line):
                return line
            limit //= 2
        # Too many fields to name: the essentials, and how many fields were left out.
        essential: dict[str, Any] = {key: cut[key] for key in _ESSENTIAL_FIELDS if key in cut}
        essential["truncated"] = True
        essential["fields_dropped"] = len(set(cut) - set(essential))
        return self.renderer(logger, method, essential)

    def _fits(self, line: Any) -> bool:
        if not isinstance(line, str):
            return True
        return len(line) * 4 <= self.max_bytes or (
            len(line.encode("utf-8", "replace")) <= self.max_bytes
        )


def configure_logging(
    *,
    log_format: str,
    level: str = "info",
    stream: TextIO | None = None,
    max_line_bytes: int = 8192,
) -> None:
    """Configure structlog once per process: JSON lines, or console output when asked for.

    Standard-library loggers (uvicorn's, MLflow's) go through the same processors and
    renderer, so the stream stays one JSON object per line and every line written while a
    request is served carries its `request_id`. No line is longer than `max_line_bytes`
    (`LineCap`). JSON is strict (`gateway.strictjson`): a NaN
    or a lone surrogate in an event becomes null or U+FFFD, never an invalid line.

    structlog's configuration is process-wide; later calls (a second app in the same process,
    a test capturing events) keep the configuration already in place.
    """
    if structlog.is_configured():
        return
    out = stream or sys.stdout
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        add_trace_ids,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor
    if log_format == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    else:
        # Tracebacks as data, without local variables: locals can hold secrets and row data.
        shared.append(
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            )
        )
        renderer = structlog.processors.JSONRenderer(serializer=strictjson.dumps)
    renderer = LineCap(renderer, max_line_bytes)
    numeric_level = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        # Tests capture events by reconfiguring; cached loggers would miss that.
        cache_logger_on_first_use=False,
    )
    _route_stdlib_logging(shared, renderer, out, numeric_level)


class _GatewayHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The root handler this module installs (recognised so it is installed once)."""


def _route_stdlib_logging(
    shared: list[structlog.types.Processor],
    renderer: structlog.types.Processor,
    stream: TextIO,
    level: int,
) -> None:
    root = logging.getLogger()
    if any(isinstance(h, _GatewayHandler) for h in root.handlers):
        return
    handler = _GatewayHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)  # Python warnings become log lines too, not stray stderr text
    # MLflow installs a plain-text handler of its own when imported (lazily, later); asked not to.
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    for name in _FOREIGN_LOGGERS:
        foreign = logging.getLogger(name)
        foreign.handlers.clear()  # uvicorn's own plain-text handlers, if it installed them
        foreign.propagate = True
    # Opening a fresh MLflow store runs ~70 alembic migrations, one INFO line each.
    logging.getLogger("alembic").setLevel(max(level, logging.WARNING))


@dataclass
class Metrics:
    """Every Prometheus metric of one app, in a registry of its own (no process globals)."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.http_requests = Counter(
            "gateway_http_requests_total",
            "HTTP requests served.",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_latency = Histogram(
            "gateway_http_request_duration_seconds",
            "HTTP request latency.",
            ["method", "route"],
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.graphql_errors = Counter(
            "gateway_graphql_errors_total",
            "GraphQL errors returned, by kind.",
            ["kind"],
            registry=r,
        )
        self.answers = Counter(
            "gateway_answers_total",
            "Reads answered from a kept answer (hit) or worked out (miss), by API.",
            ["api", "outcome"],
            registry=r,
        )
        self.lineage_resolutions = Counter(
            "gateway_lineage_resolutions_total",
            "Lineage resolutions on read.",
            ["status", "source"],
            registry=r,
        )
        self.lineage_repairs = Counter(
            "gateway_lineage_repairs_total",
            "Rows handled by lineage repair, by outcome.",
            ["outcome"],
            registry=r,
        )
        self.mlflow_request_seconds = Histogram(
            "gateway_mlflow_request_seconds",
            "MLflow lookups made by the lineage resolver.",
            ["operation", "outcome"],
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5),
        )
        self.chart_responses = Counter(
            "gateway_chart_responses_total",
            "Chart images served, by source and cache.",
            ["source", "cache"],
            registry=r,
        )
        self.chart_fallbacks = Counter(
            "gateway_chart_fallbacks_total",
            "Charts regenerated because MinIO could not serve.",
            ["reason"],
            registry=r,
        )
        self.chart_verifications = Counter(
            "gateway_chart_verifications_total",
            "Stored charts checked by `gateway verify-charts`, by outcome.",
            ["outcome"],
            registry=r,
        )
        self.chart_render_seconds = Histogram(
            "gateway_chart_render_seconds",
            "chartkit render time.",
            registry=r,
            buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 5, 10),
        )
        self.minio_fetch_seconds = Histogram(
            "gateway_minio_fetch_seconds",
            "MinIO object reads.",
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5),
        )
        self.redis_errors = Counter(
            "gateway_redis_errors_total",
            "Redis operations that failed or timed out (the request went on without Redis).",
            ["operation"],
            registry=r,
        )
        self.redis_rejected = Counter(
            "gateway_redis_rejected_total",
            "Entries read back from Redis that failed their check (deleted, not served).",
            ["kind"],
            registry=r,
        )
        self.shared_flights = Counter(
            "gateway_shared_flights_total",
            "Work shared across replicas, by tier and how this replica got the value: "
            "found (already in Redis), waited (another replica made it), produced, local "
            "(Redis unavailable).",
            ["tier", "outcome"],
            registry=r,
        )
        self.missing_lineage = Gauge(
            "gateway_artifacts_missing_lineage",
            "Artifacts still lacking run or experiment id (refreshed by repair runs).",
            registry=r,
        )
        self.missing_lineage_by_workflow = Gauge(
            "gateway_workflow_missing_lineage",
            "Artifacts with a null run id, for the GATEWAY_LINEAGE_GAUGE_WORKFLOWS largest "
            "workflows and the rest as workflow_id=other (refreshed on a schedule).",
            ["workflow_id"],
            registry=r,
        )


def _request_id_from(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            candidate = str(value.decode("latin-1"))
            if _VALID_REQUEST_ID.fullmatch(candidate):
                return candidate
            break
    return uuid.uuid4().hex


class RequestContextMiddleware:
    """Bind a request id to every log line, echo it, log one access event, count and time."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id_from(scope)
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                headers.extend(SECURITY_HEADERS)
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            if status == 0:  # no response: the client hung up (499), or a crash (500)
                status = scope.get("state", {}).get("status_override", 500)
            route = scope.get("route")
            route_label = getattr(route, "path", None) or "unmatched"
            # Labels come from a closed set: any method name a client invents is one series.
            method = scope["method"] if scope["method"] in _KNOWN_METHODS else "OTHER"
            self.metrics.http_requests.labels(method, route_label, str(status)).inc()
            self.metrics.http_latency.labels(method, route_label).observe(elapsed)
            log.info(
                "http.request",
                method=scope["method"][:16],
                path=scope["path"],
                route=route_label,
                status=status,
                duration_ms=round(elapsed * 1000, 2),
            )
            structlog.contextvars.clear_contextvars()


# Sent on every response; images and JSON alike gain nothing from being framed or sniffed.
SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"cross-origin"),
)
