"""The application factory: `uvicorn --factory gateway.app:create_app`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
import structlog
from cross_web import HTTPException as GraphQLHTTPError
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Route
from strawberry.asgi import GraphQL

from gateway.db import init_db, make_engine
from gateway.errors import GatewayError
from gateway.gql.context import Context
from gateway.gql.schema import build_schema
from gateway.images import ImageService
from gateway.lineage import CircuitBreaker, LineageResolver
from gateway.mlflow_backend import make_backend
from gateway.observability import Metrics, RequestContextMiddleware, configure_logging
from gateway.problems import UnexpectedErrorMiddleware, gateway_error_handler, http_error_handler
from gateway.routes import (
    Services,
    artifact_image,
    get_artifact,
    healthz,
    metrics,
    readyz,
    services_of,
)
from gateway.settings import Settings
from gateway.strictjson import RequestJSONError, dumps_bytes, loads_request
from gateway.ui import ui_routes, unexpected_error_page

# GraphQL documents are small; anything bigger is an attack or a mistake.
MAX_BODY_BYTES = 256 * 1024

log = structlog.get_logger("gateway")


class GatewayGraphQL(GraphQL[Context, None]):
    """Strawberry's ASGI app with the gateway's typed context and strict JSON both ways."""

    def parse_json(self, data: str | bytes) -> Any:
        # Bodies (and GET `variables`) must be strict JSON objects; anything else is a 400 with
        # the reason, never a 500: `1`, invalid UTF-8, NaN, lone surrogates, deep nesting.
        try:
            value = loads_request(data)
        except RequestJSONError as exc:
            raise GraphQLHTTPError(400, f"Unable to parse request body as JSON: {exc}") from None
        if not isinstance(value, (dict, list)):
            raise GraphQLHTTPError(400, f"Expected a JSON object, got {type(value).__name__}")
        return value

    def encode_json(self, data: object) -> bytes:
        return dumps_bytes(data)

    async def get_context(self, request: Any, response: Any) -> Context:
        services = services_of(request)
        return Context(
            request=request,
            response=response,
            settings=services.settings,
            engine=services.engine,
            metrics=services.metrics,
            resolver=services.resolver,
            lineage=services.resolver.request(),
        )


def build_resolver(settings: Settings, metrics: Metrics) -> LineageResolver:
    """The process-wide lineage resolver configured from settings."""
    return LineageResolver(
        make_backend(settings.mlflow_tracking_uri, timeout_s=settings.mlflow_timeout_s),
        metrics=metrics,
        timeout_s=settings.mlflow_timeout_s,
        concurrency=settings.mlflow_concurrency,
        hit_ttl_s=settings.lineage_cache_ttl_s,
        miss_ttl_s=settings.lineage_miss_ttl_s,
        breaker=CircuitBreaker(
            threshold=settings.mlflow_breaker_threshold,
            cooldown_s=settings.mlflow_breaker_cooldown_s,
        ),
    )


def create_app(settings: Settings | None = None) -> Starlette:
    """Build the gateway; every client and engine is created in the lifespan, none at import."""
    settings = settings if settings is not None else Settings()
    configure_logging(log_format=settings.log_format, level=settings.log_level)
    metrics_ = Metrics()

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[dict[str, Any]]:
        engine = make_engine(settings.database_url)
        try:
            await anyio.to_thread.run_sync(init_db, engine)
        except SQLAlchemyError as exc:
            # Serve anyway: /readyz says 503 until the database comes back.
            log.warning("db.unavailable_at_startup", error=str(exc).splitlines()[0])
        resolver = build_resolver(settings, metrics_)
        resolver.start_warm_up(budget_s=settings.mlflow_warmup_s)
        images = ImageService(settings=settings, metrics=metrics_)
        services = Services(
            settings=settings, engine=engine, metrics=metrics_, resolver=resolver, images=images
        )
        problem = settings.admin_token_problem()
        if problem is not None and settings.admin_token is not None:
            log.warning("gateway.admin_token_refused", reason=problem)
        log.info("gateway.started", env=settings.env)
        try:
            yield {"services": services}
        finally:
            resolver.stop_warm_up()
            images.close()
            await resolver.backend.aclose()
            engine.dispose()
            log.info("gateway.stopped")

    graphql_app = GatewayGraphQL(
        build_schema(production=settings.production),
        graphql_ide=None if settings.production else "graphiql",
        allow_queries_via_get=True,
    )
    routes = [
        Route("/graphql", graphql_app, methods=["GET", "POST"]),
        Route("/api/artifacts/{artifact_id}", get_artifact, methods=["GET"]),
        Route("/api/artifacts/{artifact_id}/image", artifact_image, methods=["GET", "HEAD"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        *ui_routes(),
    ]
    exception_handlers: dict[Any, Any] = {
        GatewayError: gateway_error_handler,
        HTTPException: http_error_handler,
    }
    return Starlette(
        debug=False,
        routes=routes,
        middleware=[
            Middleware(RequestContextMiddleware, metrics=metrics_),
            Middleware(
                UnexpectedErrorMiddleware, html_prefix="/ui", html_response=unexpected_error_page
            ),
            # The front end calls GraphQL from the browser; no origin is allowed unless listed.
            Middleware(
                CORSMiddleware,
                allow_origins=settings.cors_origins,
                allow_methods=("GET", "POST", "HEAD"),
                allow_headers=("content-type", "authorization", "x-request-id"),
                expose_headers=(
                    "etag",
                    "x-request-id",
                    "x-chart-source",
                    "x-chart-spec",
                    "x-cache",
                ),
            ),
        ],
        exception_handlers=exception_handlers,
        lifespan=lifespan,
        max_body_size=MAX_BODY_BYTES,
    )
