"""Publish a chart from a DAG task: render with chartkit, upload to MinIO, store the row.

One pipeline on both sides: the bytes uploaded here are `chartkit.render_chart(snapshot, spec)`,
and the row records the snapshot, the spec and the chartkit version, so the gateway (and
`gateway verify-charts`) can regenerate exactly these bytes from the row alone.
"""

from __future__ import annotations

import hashlib
import io
import re
from typing import Any

import structlog
from sqlalchemy.engine import Engine

import chartkit
from chartkit import ChartSpec, render_chart
from dags_utils.artifacts import require_storable, store_chart_artifact
from gateway import tracing

log = structlog.get_logger("dags_utils")

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_PART = 100


def _part(value: str, what: str) -> str:
    cleaned = _UNSAFE.sub("-", value.strip()).strip(".-")[:MAX_PART]
    if not cleaned:
        raise ValueError(f"{what} {value!r} has no letters or digits to build an object key from")
    return cleaned


def chart_object_key(*, symbol: str, workflow_id: str, name: str) -> str:
    """The object key of a published chart: `{SYMBOL}/{workflow_id}/{name}.png`.

    Each part keeps letters, digits, `.`, `_` and `-`; any other run of characters becomes one
    `-`, and leading or trailing dots and dashes are dropped (no `..`, no empty segment), so the
    key is always one the gateway accepts. The symbol is upper-cased. Publishing the same
    symbol, workflow and name again overwrites the object.
    """
    return "/".join(
        (
            _part(symbol, "symbol").upper(),
            _part(workflow_id, "workflow_id"),
            f"{_part(name.removesuffix('.png'), 'name')}.png",
        )
    )


def publish_chart(
    *,
    engine: Engine,
    minio_client: Any,
    bucket: str,
    snapshot: Any,
    symbol: str,
    workflow_id: str,
    name: str,
    spec: ChartSpec | None = None,
    run_id: str | None = None,
    experiment_id: str | None = None,
    tracking_uri: str | None = None,
) -> int:
    """Render, upload, then store the chart row; returns the new artifact id.

    - Renders `chartkit.render_chart(snapshot, spec)`; the spec defaults to the house chart with
      the symbol in its title. A snapshot that cannot be drawn raises `SnapshotError` before
      anything is uploaded or stored; so does a snapshot holding values that are not strict
      JSON (ValueError naming the key path: NaN, Infinity, lone surrogates).
    - Uploads the PNG to `bucket` under `chart_object_key(...)` with content type `image/png`.
    - Stores the row through `store_chart_artifact`: `chart_data.minio_url = s3://bucket/key`
      (plus the key, size and SHA-256 of the bytes), the snapshot in
      `metadata.market_data_snapshot`, the spec in `metadata.chart_spec` and the renderer in
      `metadata.chartkit_version`. Lineage is captured as by the other `store_*` helpers:
      explicit ids, else the active MLflow run (`mlflow_run_context`), else `MLFLOW_RUN_ID`.

    Upload first, row second: a failed upload raises and stores no row, so no row ever points at
    a chart that was never written. A failed insert leaves the uploaded object without a row;
    the task's retry renders the same bytes and overwrites the same key, so nothing piles up.
    """
    # Checked before rendering or uploading, so a refused snapshot leaves no orphan object.
    require_storable(name, metadata={"market_data_snapshot": snapshot})
    used = spec if spec is not None else ChartSpec()
    if used.symbol is None:
        used = ChartSpec.from_dict({**used.to_dict(), "symbol": symbol})
    with tracing.span("dags_utils.publish_chart", **{"workflow.id": workflow_id}):
        with tracing.span("chart.render"):
            png = render_chart(snapshot, used)
        key = chart_object_key(symbol=symbol, workflow_id=workflow_id, name=name)
        with tracing.span("minio.put_object", **{"minio.bucket": bucket}):
            digest = _upload(minio_client, bucket, key, png)
        return _store_published(
            engine,
            name=name,
            symbol=symbol,
            workflow_id=workflow_id,
            snapshot=snapshot,
            spec=used,
            bucket=bucket,
            key=key,
            png=png,
            digest=digest,
            run_id=run_id,
            experiment_id=experiment_id,
            tracking_uri=tracking_uri,
        )


def _store_published(
    engine: Engine,
    *,
    name: str,
    symbol: str,
    workflow_id: str,
    snapshot: Any,
    spec: ChartSpec,
    bucket: str,
    key: str,
    png: bytes,
    digest: str,
    run_id: str | None,
    experiment_id: str | None,
    tracking_uri: str | None,
) -> int:
    used = spec
    minio_url = f"s3://{bucket}/{key}"
    log.info("chart.uploaded", bucket=bucket, key=key, bytes=len(png), workflow_id=workflow_id)
    artifact_id = store_chart_artifact(
        engine,
        name=name,
        symbol=symbol,
        workflow_id=workflow_id,
        minio_url=minio_url,
        market_data_snapshot=snapshot,
        chart_data={"object_key": key, "bytes": len(png), "sha256": digest},
        metadata={"chart_spec": used.to_dict(), "chartkit_version": chartkit.__version__},
        run_id=run_id,
        experiment_id=experiment_id,
        tracking_uri=tracking_uri,
    )
    log.info("chart.published", artifact_id=artifact_id, minio_url=minio_url)
    return artifact_id


def _upload(minio_client: Any, bucket: str, key: str, png: bytes) -> str:
    """Put the PNG (content type, renderer version and digest as object metadata); its SHA-256."""
    digest = hashlib.sha256(png).hexdigest()
    minio_client.put_object(
        bucket,
        key,
        io.BytesIO(png),
        len(png),
        content_type="image/png",
        metadata={"chartkit-version": chartkit.__version__, "sha256": digest},
    )
    return digest
