"""REST routes (thin: parse, call one service, shape the answer): artifact JSON, the chart image,
health, readiness and metrics."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

import anyio
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response

from gateway import repository, tracing
from gateway.errors import InvalidInputError
from gateway.images import Source
from gateway.lineage import Lineage, LineageView, lineage_view
from gateway.models import Artifact
from gateway.problems import StrictJSONResponse
from gateway.rows import created_at_of, effective_workflow_id, image_url_of, json_field
from gateway.services import (
    RequestLineage,
    load_artifact,
    load_artifact_document,
    load_listed_artifact,
    parse_artifact_id,
    services_of,
)
from gateway.strictjson import EncodedJSON, UnreadableJSON, dumps_bytes

READY_TIMEOUT_S = 3.0


def _isoformat(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def lineage_json(view: LineageView) -> dict[str, Any]:
    """The lineage object of REST responses."""
    return {
        "status": view.status.value,
        "source": view.source.value if view.source else None,
        "reason": view.reason,
        "run_id": view.run_id,
        "experiment_id": view.experiment_id,
        "run_url": view.run_url,
        "experiment_url": view.experiment_url,
    }


def artifact_json(
    row: Artifact,
    lineage: Lineage,
    *,
    metadata: EncodedJSON | UnreadableJSON | None,
    ui_url: str | None,
) -> dict[str, Any]:
    """The snake_case JSON the existing REST clients read; ids are the resolved ones.

    `metadata` is the whole stored metadata made strict (the row itself is read without its
    snapshot). A JSON column that cannot be read is null, and `field_errors` says why (absent
    otherwise).
    """
    chart_data, chart_data_problem = json_field(row.chart_data)
    metadata, metadata_problem = json_field(metadata)
    body: dict[str, Any] = {
        "id": row.id,
        "name": row.name,
        "artifact_type": row.artifact_type,
        "symbol": row.symbol,
        "workflow_id": effective_workflow_id(row),
        "run_id": lineage.run_id,
        "experiment_id": lineage.experiment_id,
        "chart_data": chart_data,
        "metadata": metadata,
        "image_url": image_url_of(row),
        "created_at": _isoformat(created_at_of(row)),
        "lineage": lineage_json(lineage_view(lineage, ui_url=ui_url)),
    }
    problems = {"chart_data": chart_data_problem, "metadata": metadata_problem}
    if any(problems.values()):
        body["field_errors"] = {k: v for k, v in problems.items() if v is not None}
    return body


async def get_artifact(request: Request) -> Response:
    """GET /api/artifacts/{id}."""
    services = services_of(request)
    artifact_id = parse_artifact_id(request.path_params["artifact_id"])
    key = ("rest artifact", str(artifact_id))
    kept = await services.answers.wait_for_answer(key)
    services.metrics.answers.labels("rest", "hit" if kept else "miss").inc()
    if kept is not None:
        return Response(kept, media_type="application/json")
    with services.answers.answering(key):
        row, metadata = await load_artifact_document(services, artifact_id)
        lineage = await RequestLineage(services.resolver).of(row)
        tracing.set_attributes(
            **{"artifact.id": artifact_id, "lineage.status": lineage.status.value}
        )
        body = dumps_bytes(
            artifact_json(row, lineage, metadata=metadata, ui_url=services.settings.mlflow_ui_base)
        )
        services.answers.keep(key, body)
    return Response(body, media_type="application/json")


async def healthz(_request: Request) -> Response:
    """The process is up and serving."""
    return StrictJSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready: the database answers and lineage has finished opening MLflow; 503 otherwise.

    MLflow being down does not make the gateway unready (reads degrade to UNAVAILABLE); only
    its own warm-up does, bounded by GATEWAY_MLFLOW_WARMUP_S. Nor does Redis (it is optional:
    without it each replica works alone); the body says whether it is in use.
    """
    services = services_of(request)
    try:
        with anyio.fail_after(READY_TIMEOUT_S):
            await anyio.to_thread.run_sync(repository.ping, services.engine, abandon_on_cancel=True)
    except Exception as exc:
        return StrictJSONResponse(
            {"status": "unavailable", "database": type(exc).__name__}, status_code=503
        )
    await services.resolver.until_warm(timeout_s=READY_TIMEOUT_S)
    if services.resolver.warming_up:
        return StrictJSONResponse(
            {"status": "starting", "database": "ok", "lineage": "warming_up"},
            status_code=503,
            headers={"Retry-After": "1"},
        )
    shared = services.shared
    redis = "off" if shared is None else ("ok" if await shared.ping() else "unavailable")
    return StrictJSONResponse({"status": "ok", "database": "ok", "redis": redis})


async def metrics(request: Request) -> Response:
    """Prometheus text exposition of this app's registry."""
    registry = services_of(request).metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


IMAGE_SOURCES = ("auto", "minio", "regenerated")
# Browsers and CDNs may reuse an image for as long as the gateway trusts what it knows of the
# object; after that they revalidate with If-None-Match (a cheap 304).
IMAGE_CACHE_CONTROL = "public, max-age=30, stale-while-revalidate=30"


def _etag_matches(header: str, etag: str) -> bool:
    candidates = {part.strip().removeprefix("W/") for part in header.split(",")}
    return "*" in candidates or etag in candidates


async def artifact_image(request: Request) -> Response:
    """GET|HEAD /api/artifacts/{id}/image: the stored chart, or one regenerated from its data."""
    services = services_of(request)
    artifact_id = parse_artifact_id(request.path_params["artifact_id"])
    raw_source = request.query_params.get("source", "auto")
    if raw_source not in IMAGE_SOURCES:
        raise InvalidInputError(f"source must be one of {', '.join(IMAGE_SOURCES)}")
    source = cast(Source, raw_source)
    structlog.contextvars.bind_contextvars(artifact_id=artifact_id)
    if_none_match = request.headers.get("if-none-match")
    # Served in the last 30 s and still cached: answered without reading the row.
    image = services.images.recently_served(artifact_id, source)
    if image is None:
        # Read without the snapshot: a 304 or a cached chart needs neither it nor its hash.
        row, listing = await load_listed_artifact(services, artifact_id)
        if if_none_match:
            known = await services.images.etag_if_known(row, source, listing=listing)
            if known is not None and _etag_matches(if_none_match, known):
                return Response(
                    status_code=304,
                    headers={"ETag": known, "Cache-Control": IMAGE_CACHE_CONTROL},
                )
        image = await services.images.image(
            row,
            source=source,
            listing=listing,
            whole=lambda: load_artifact(services, artifact_id),
        )
    headers = {
        "ETag": image.etag,
        "Cache-Control": IMAGE_CACHE_CONTROL,
        "X-Chart-Source": image.source,
        "X-Cache": "hit" if image.cache_hit else "miss",
    }
    if image.spec_origin is not None:
        headers["X-Chart-Spec"] = image.spec_origin
    if if_none_match and _etag_matches(if_none_match, image.etag):
        return Response(status_code=304, headers=headers)
    if request.method == "HEAD":
        headers["Content-Length"] = str(len(image.data))
        return Response(status_code=200, headers=headers, media_type="image/png")
    return Response(image.data, headers=headers, media_type="image/png")
