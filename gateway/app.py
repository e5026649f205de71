"""The application factory: `uvicorn --factory gateway.app:create_app`."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.instrumentation.starlette import StarletteInstrumentor
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import BaseRoute, Route

from gateway import tracing
from gateway.deadline import RequestDeadlineMiddleware
from gateway.errors import GatewayError
from gateway.gql.view import graphql_app
from gateway.observability import Metrics, RequestContextMiddleware, configure_logging
from gateway.problems import UnexpectedErrorMiddleware, gateway_error_handler, http_error_handler
from gateway.routes import artifact_image, get_artifact, healthz, metrics, readyz
from gateway.run_graph import lineage_gauge_task
from gateway.services import open_services
from gateway.settings import Settings
from gateway.ui import deadline_page, ui_routes, unexpected_error_page

# GraphQL documents are small; anything bigger is an attack or a mistake.
MAX_BODY_BYTES = 256 * 1024

log = structlog.get_logger("gateway")


def create_app(settings: Settings | None = None) -> Starlette:
    """Build the gateway; every client and engine is created in the lifespan, none at import."""
    settings = settings if settings is not None else Settings()
    configure_logging(
        log_format=settings.log_format,
        level=settings.log_level,
        max_line_bytes=settings.log_max_line_bytes,
    )
    traced = tracing.configure()
    # Always: a worker job's carrier is made with it too, traced or not.
    tracing.configure_propagation(trust_baggage=settings.trace_trust_baggage)
    metrics_ = Metrics()

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[dict[str, Any]]:
        async with open_services(settings, metrics_) as services, lineage_gauge_task(services):
            freeze_startup_heap()
            log.info("gateway.started", env=settings.env)
            yield {"services": services}
        log.info("gateway.stopped")

    app = Starlette(
        debug=False,
        routes=_routes(settings, traced=traced),
        middleware=_middleware(settings, metrics_),
        exception_handlers={GatewayError: gateway_error_handler, HTTPException: http_error_handler},
        lifespan=lifespan,
        max_body_size=MAX_BODY_BYTES,
    )
    # No trailing-slash redirects: Starlette builds them from the request's Host header (an
    # open redirect), and no client of this API needs them; `/api/artifacts/5/` is a 404.
    app.router.redirect_slashes = False
    if traced:
        # Outermost: the server span (named by route template) holds every log line and span
        # of the request, and an incoming `traceparent` makes it a child of the caller's span.
        StarletteInstrumentor.instrument_app(app)
        for middleware in app.user_middleware:
            if getattr(middleware, "cls", None) is OpenTelemetryMiddleware:
                # No span per ASGI message: two per request, and the deadline watcher's
                # `receive` would last the whole request.
                middleware.kwargs["exclude_spans"] = ["receive", "send"]
    return app


def freeze_startup_heap() -> None:
    """Once per process, move what start-up left on the heap out of the collector's sight.

    Imports and start-up leave over 200,000 objects that live as long as the process, and a
    full collection walks every one of them: in bench/lineage.py's process, a 437 ms pause in
    the middle of a cold read. Frozen, they are not walked again; the collector looks only at
    what requests allocate. Garbage is collected first (once, about 0.2 s), so none is kept.
    """
    if gc.get_freeze_count() == 0:
        gc.collect()
        gc.freeze()


def _routes(settings: Settings, *, traced: bool) -> list[BaseRoute]:
    return [
        Route("/graphql", graphql_app(settings, traced=traced), methods=["GET", "POST"]),
        Route("/api/artifacts/{artifact_id}", get_artifact, methods=["GET"]),
        Route("/api/artifacts/{artifact_id}/image", artifact_image, methods=["GET", "HEAD"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        *ui_routes(),
    ]


def _middleware(settings: Settings, metrics_: Metrics) -> list[Middleware]:
    return [
        Middleware(RequestContextMiddleware, metrics=metrics_),
        # Inside the request context, so the error's log line carries the request id.
        Middleware(
            UnexpectedErrorMiddleware, html_prefix="/ui", html_response=unexpected_error_page
        ),
        # Inside the error handler: a request cut short is never reported as a crash.
        Middleware(
            RequestDeadlineMiddleware,
            timeout_s=settings.request_timeout_s,
            html_prefix="/ui",
            html_response=deadline_page,
        ),
        # The front end calls GraphQL from the browser; no origin is allowed unless listed.
        Middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=("GET", "POST", "HEAD"),
            allow_headers=("content-type", "authorization", "x-request-id"),
            expose_headers=("etag", "x-request-id", "x-chart-source", "x-chart-spec", "x-cache"),
        ),
    ]
